"""INT8 post-training quantisation of an exported Co-DETR graph, calibrated on images of the
config's dataset.

Examples::

    # ONNX Runtime (static quantisation, QDQ): writes an .onnx file
    python tools/deployment/quantize.py configs/co_deformable_detr_inst_synthetic.py \\
        work_dirs/demo/model.onnx --calib-images 32 --out work_dirs/demo/model_int8.onnx
    python tools/test.py configs/co_deformable_detr_inst_synthetic.py \\
        work_dirs/demo/model_int8.onnx --backend onnxruntime --precision int8
    # OpenVINO (NNCF): writes OpenVINO IR (.xml + .bin)
    python tools/deployment/quantize.py CONFIG MODEL.onnx --backend openvino --out model_int8.xml
    python tools/test.py CONFIG model_int8.xml --backend openvino --precision int8

Calibration images: ``--calib-images`` images spread evenly over the config's training set
(``--calib-split train``, the default: apart from the evaluation images) or test set, through
the test pipeline. Convolutions and matrix products are quantised; the layers listed by the
tool (``projects/codetr/deploy/quantize.py``'s ``KEEP_FP32``: the stem, the deformable
attention's offsets and weights, the decoder's self-attention, the proposal layers and the
class/box branches) stay fp32. Graphs of any ``--target`` quantise, the native one too.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='INT8 quantisation of an exported Co-DETR')
    parser.add_argument('config', help='the config the graph was exported from')
    parser.add_argument('model', help='the exported fp32 .onnx file')
    parser.add_argument('--out', required=True,
                        help='output: .onnx (onnxruntime) or .xml (openvino)')
    parser.add_argument('--backend', choices=['onnxruntime', 'openvino'], default='onnxruntime',
                        help='the runtime to quantise for (onnxruntime: static quantisation; '
                        'openvino: NNCF)')
    parser.add_argument('--calib-images', type=int, default=32,
                        help='calibration images from the config\'s dataset (default 32)')
    parser.add_argument('--calib-split', choices=['train', 'test'], default='train',
                        help='dataset to take them from (default train: not the images '
                        'that tools/test.py evaluates)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from projects.codetr.deploy.quantize import QUANTIZERS, calibration_images, quantize
    from tools.misc.tool_utils import check_dataset_paths, load_config, setup_modules

    if not args.model.endswith('.onnx') or not Path(args.model).is_file():
        raise FileNotFoundError(f'{args.model!r}: expected an exported .onnx file '
                                '(tools/deployment/export_onnx.py)')
    suffix = QUANTIZERS[args.backend][1]
    if Path(args.out).suffix != suffix:  # before calibrating
        raise ValueError(f'--out {args.out}: --backend {args.backend} writes a {suffix} file')
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise ValueError(f'--out {args.out} would overwrite the fp32 model')
    setup_modules()
    cfg = load_config(args.config, args.cfg_options)
    check_dataset_paths(cfg, (f'{args.calib_split}_dataloader', ))
    start = time.perf_counter()
    images = calibration_images(cfg, args.calib_images, args.calib_split)
    sizes = sorted({'x'.join(map(str, image.shape[2:])) for image in images})
    print(f'calibration: {len(images)} {args.calib_split} images ({", ".join(sizes[:4])}'
          f'{", ..." if len(sizes) > 4 else ""})')
    kept = quantize(args.backend, args.model, images, args.out)
    print(f'kept in fp32 ({len(kept)} convolutions/matrix products): ' + ', '.join(kept))
    print(f'wrote {args.out} (INT8 for {args.backend}) in {time.perf_counter() - start:.0f} s; '
          f'run it with --backend {args.backend} --precision int8')
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    from tools.misc.tool_utils import run_cli
    return run_cli(lambda: main(argv))


if __name__ == '__main__':
    sys.exit(cli())
