"""AP of INT8 against fp32: export, quantise for both runtimes, evaluate every model on the
config's test set with tools/test.py, print one table.

    python tools/analysis_tools/bench_int8.py configs/co_deformable_detr_inst_synthetic.py \\
        work_dirs/demo/epoch_6.pth --work-dir work_dirs/bench_int8 [--calib-images 32] \\
        [--target onnxruntime|openvino|native]

Rows: PyTorch (the checkpoint), ONNX Runtime fp32 (the export), ONNX Runtime INT8
(quantize.py --backend onnxruntime), OpenVINO INT8 (quantize.py --backend openvino); columns:
the COCO metrics the config evaluates (bbox, and segm for a model with masks) and the
difference of each INT8 row from PyTorch. Writes ``summary.json`` in the work dir.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50')


def _tool(args: List[str]) -> None:
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'{" ".join(map(str, args))} failed:\n{proc.stderr[-3000:]}')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='INT8 vs fp32 AP')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir', default='work_dirs/bench_int8')
    parser.add_argument('--calib-images', type=int, default=32)
    parser.add_argument('--target', choices=['onnxruntime', 'openvino', 'native'],
                        default='onnxruntime', help='export_onnx.py --target of the graph')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / 'model.onnx'
    _tool(['tools/deployment/export_onnx.py', args.config, args.checkpoint, '--out', fp32,
           '--target', args.target])
    quantize = ['tools/deployment/quantize.py', args.config, fp32, '--calib-images',
                args.calib_images]
    _tool([*quantize, '--out', work / 'model_int8.onnx'])
    _tool([*quantize, '--backend', 'openvino', '--out', work / 'model_int8.xml'])
    runs = {
        'PyTorch fp32': (args.checkpoint, 'pytorch', 'fp32'),
        'ONNX Runtime fp32': (fp32, 'onnxruntime', 'fp32'),
        'ONNX Runtime INT8': (work / 'model_int8.onnx', 'onnxruntime', 'int8'),
        'OpenVINO INT8': (work / 'model_int8.xml', 'openvino', 'int8'),
    }
    results = {}
    for name, (model, backend, precision) in runs.items():
        out = work / name.replace(' ', '_')
        _tool(['tools/test.py', args.config, model, '--backend', backend, '--precision',
               precision, '--work-dir', out, '--metrics-out', out / 'metrics.json'])
        metrics = json.loads((out / 'metrics.json').read_text())
        results[name] = {k: metrics[k] for k in KEYS if k in metrics}
    keys = [k for k in KEYS if k in results['PyTorch fp32']]
    print(f'| model | {" | ".join(keys)} |')
    print('|---|' + '---|' * len(keys))
    ref = results['PyTorch fp32']
    for name, metrics in results.items():
        cells = [f'{metrics[k]:.3f}' + (f' ({metrics[k] - ref[k]:+.3f})' if 'INT8' in name
                                        else '') for k in keys]
        print(f'| {name} | {" | ".join(cells)} |')
    (work / 'summary.json').write_text(json.dumps(results, indent=1))
    return results


if __name__ == '__main__':
    main()
