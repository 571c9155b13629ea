"""Export a Co-DETR checkpoint to ONNX and check the result with ONNX Runtime (and
OpenVINO with ``--target openvino``).

Examples::

    python tools/deployment/export_onnx.py configs/co_deformable_detr_synthetic.py \\
        work_dirs/demo/epoch_6.pth --out work_dirs/demo/model.onnx
    python tools/deployment/export_onnx.py CONFIG CKPT --out model.onnx --static --shape 800 1333
    # arranged for OpenVINO (then run with tools/test.py --backend openvino --precision bf16)
    python tools/deployment/export_onnx.py CONFIG CKPT --out model_ov.onnx --target openvino
    # the native deformable-attention operator (both runtimes, built by make install)
    python tools/deployment/export_onnx.py CONFIG CKPT --out model_native.onnx --target native

The graph holds the inference path only (backbone, neck, encoder, two-stage selection,
decoder, top-k), standard operators only: what ``eval_module='detr'`` predicts with (other
``eval_module`` settings are refused). Input ``images``: float32 (N, 3, H, W), 0-255 BGR pixels
as mmcv reads them; outputs ``boxes`` (N, K, 4) xyxy in input pixels, ``scores`` (N, K),
``labels`` (N, K) int64. N, H and W are dynamic by default, so one graph reproduces PyTorch on
every image size; it is traced at ``--shape`` (default: the config's test ``Resize`` target).
``--static`` fixes the graph to 1x3x``--shape`` (the tools then refuse other sizes).
``--target openvino`` arranges the deformable attention for OpenVINO (faster there; either
runtime runs either graph); ``--target native`` exports it as the ``codetr::MSDeformAttn``
operator of ``projects/codetr/ops/csrc`` (refused when its libraries are not built). Before
reporting success the tool runs ONNX Runtime (with ``--target openvino`` also OpenVINO, with
``--target native`` each runtime whose library is built) and PyTorch on the same random
image (for a dynamic graph also on two images at 3/4 of the size) and requires every top-20
detection of either side to have a twin on the other (same label, score within 1e-3, box
within 0.5 px); it prints op counts, file size and latencies.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mmengine.config import DictAction  # noqa: E402

from tools.misc.tool_utils import add_allow_partial_argument  # noqa: E402

SCORE_TOL, BOX_TOL, TOP = 1e-3, 0.5, 20
MIN_MASK_IOU = 0.99  # of a detection's mask with its PyTorch twin's, at the graph's resolution


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='Export Co-DETR to ONNX')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument('--shape', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='input height and width to trace at (default: the size the '
                        "config's test pipeline resizes to); with --static the graph only "
                        'runs this size')
    size = parser.add_mutually_exclusive_group()
    size.add_argument('--dynamic', action='store_true',
                      help='dynamic batch size, height and width (the default; kept for '
                      'older commands)')
    size.add_argument('--static', action='store_true',
                      help='fix the graph to 1x3xHxW of --shape; the tools then refuse images '
                      'of another size')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (>= 16)')
    parser.add_argument('--target', choices=['onnxruntime', 'openvino', 'native'],
                        default='onnxruntime',
                        help='how the deformable attention is exported: standard operators '
                        'arranged for onnxruntime or openvino (either runs either graph; '
                        'openvino: per-point sampling, faster there, and OpenVINO is checked '
                        'and timed too), or native: the codetr::MSDeformAttn operator, which '
                        'needs the libraries built by make install '
                        '(tools/misc/build_native_ops.py)')
    add_allow_partial_argument(parser, 'export')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    return parser.parse_args(argv)


def missing_twins(ref, ours, top: int = TOP) -> list:
    """Top-``top`` detections of one image without a twin on the other side, both ways.

    A twin has the same label, a score within ``SCORE_TOL`` and a box within ``BOX_TOL``.
    The reference's top-``top`` are looked up among all of ``ours`` (``'missing'``) and
    ``ours``'s top-``top`` among all of the reference (``'extra'``), so a detection that one
    side ranks high and the other lacks is reported whichever side has it.

    Args:
        ref, ours: ``(boxes (K, 4), scores (K,), labels (K,))`` numpy arrays.

    Returns:
        list: ``(side, label, score, box)`` per detection without a twin.
    """
    import numpy as np

    def lookup(side, a, b):
        lost = []
        for i in np.argsort(-a[1])[:top]:
            twin = ((b[2] == a[2][i]) & (np.abs(b[1] - a[1][i]) <= SCORE_TOL)
                    & (np.abs(b[0] - a[0][i]).max(-1) <= BOX_TOL))
            if not twin.any():
                lost.append((side, int(a[2][i]), float(a[1][i]), a[0][i].round(2).tolist()))
        return lost

    return lookup('missing', ref, ours) + lookup('extra', ours, ref)


def twin_mask_ious(ref, ours, threshold: float, top: int = TOP) -> list:
    """Mask IoU of each of the reference's top-``top`` detections with its twin's mask.

    Args:
        ref, ours: ``(boxes, scores, labels, masks (K, S, S) probabilities)`` of one image.
        threshold (float): Binarisation threshold of the masks.

    Returns:
        list[float]: One IoU per detection that has a twin (two empty masks: 1.0).
    """
    import numpy as np
    ious = []
    for i in np.argsort(-ref[1])[:top]:
        twins = np.flatnonzero((ours[2] == ref[2][i]) & (np.abs(ours[1] - ref[1][i]) <= SCORE_TOL)
                               & (np.abs(ours[0] - ref[0][i]).max(-1) <= BOX_TOL))
        if len(twins):
            a, b = ref[3][i] >= threshold, ours[3][twins[0]] >= threshold
            union = (a | b).sum()
            ious.append(float((a & b).sum() / union) if union else 1.0)
    return ious


def _median_latency(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    """Export, verify with ONNX Runtime, report; returns the exit status."""
    args = parse_args(argv)
    import numpy as np
    import torch

    from projects.codetr.deploy import CoDETRDeployModel, check_onnx_graph, export_onnx
    from projects.codetr.deploy.backend_model import _Runner
    from tools.misc.tool_utils import (
        check_exported_eval_module,
        init_detector_checked,
        load_config,
        setup_modules,
        test_pipeline_size,
    )

    setup_modules()
    cfg = load_config(args.config, args.cfg_options)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    if cfg.model.get('type') != 'CoDETR':
        raise ValueError(f'{args.config}: model.type={cfg.model.get("type")!r}; this tool '
                         'exports CoDETR configs')
    check_exported_eval_module(cfg)
    native_runtimes = {}
    if args.target == 'native':  # refused before the export if no runtime can run it
        from projects.codetr.ops.native import native_library
        native_runtimes = {name: backend for name, backend in (
            ('ONNX Runtime', 'onnxruntime'), ('OpenVINO', 'openvino'))
            if native_library(backend) is not None}
        if not native_runtimes:
            native_library('onnxruntime', required=True)  # raises, naming the path and fix
    cfg.model.backbone.init_cfg = None  # the checkpoint has the weights
    detector, _ = init_detector_checked(cfg, args.checkpoint, 'cpu', args.config,
                                        args.allow_partial_checkpoint)
    deploy = CoDETRDeployModel(detector).eval()

    args.dynamic = not args.static
    h, w = args.shape or test_pipeline_size(cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, h, w, generator=g) * 255
    out = export_onnx(deploy, images, args.out, opset=args.opset, dynamic=args.dynamic,
                      target=args.target)
    ops = check_onnx_graph(out)
    print(f'ONNX file: {out} ({out.stat().st_size / 2**20:.1f} MiB), opset {args.opset}, '
          f'input {"Nx3xHxW (dynamic N, H, W)" if args.dynamic else f"1x3x{h}x{w}"}, '
          f'arranged for {args.target}')
    print(f'{sum(ops.values())} nodes: ' + ', '.join(f'{k} {v}' for k, v in ops.items()))

    # checked in both runtimes with --target openvino (either runs either arrangement), in
    # those with the library with --target native
    if native_runtimes:
        runtimes = {name: _Runner(str(out), backend) for name, backend in native_runtimes.items()}
        for name in {'ONNX Runtime', 'OpenVINO'} - set(runtimes):
            print(f'note: the native operator library for {name} is not built; not checked')
    else:
        runtimes = {'ONNX Runtime': _Runner(str(out), 'onnxruntime', warn_target=False)}
    if args.target == 'openvino':
        runtimes['OpenVINO'] = _Runner(str(out), 'openvino')
    checks = [images]
    if args.dynamic:  # a second batch size and image size through the same graph
        checks.append(torch.rand(2, 3, h * 3 // 4, w * 3 // 4, generator=g) * 255)
    missing = {name: [] for name in runtimes}
    mask_ious = {name: [] for name in runtimes}
    for batch in checks:
        with torch.no_grad():
            torch_out = [t.numpy() for t in deploy(batch)]
        for name, runner in runtimes.items():
            onnx_out = runner(batch.numpy())
            for b in range(batch.shape[0]):
                ref, ours = [t[b] for t in torch_out], [o[b] for o in onnx_out]
                missing[name] += missing_twins(ref, ours)
                if deploy.with_masks:
                    mask_ious[name] += twin_mask_ious(ref, ours, deploy.mask_threshold)
            print(f'{name}, {"x".join(map(str, batch.shape))}: max |score diff| '
                  f'{np.abs(onnx_out[1] - torch_out[1]).max():.2e}, max |box diff| '
                  f'{np.abs(onnx_out[0] - torch_out[0]).max():.2e} px (same rank)' + (
                      f', max |mask probability diff| '
                      f'{np.abs(onnx_out[3] - torch_out[3]).max():.2e} (same rank)'
                      if deploy.with_masks else ''))
    pixels = images.numpy()
    with torch.no_grad():
        latencies = {'PyTorch': _median_latency(lambda: deploy(images))}
    for name, runner in runtimes.items():
        latencies[name] = _median_latency(functools.partial(runner, pixels))
    print(f'latency (median of 5, {torch.get_num_threads()} threads): ' + ', '.join(
        f'{name} {sec * 1e3:.1f} ms' for name, sec in latencies.items()) + ' (ratios to '
        'PyTorch: ' + ', '.join(f'{name} {latencies[name] / latencies["PyTorch"]:.2f}'
                                for name in runtimes) + ')')
    failed = False
    for name, lost in missing.items():
        if lost:
            print(f'FAILED: {len(lost)} top-{TOP} detections of PyTorch (missing) or {name} '
                  f'(extra) have no twin on the other side (side, label, score, box): '
                  f'{lost[:5]}', file=sys.stderr)
            failed = True
        else:
            print(f'OK: every PyTorch top-{TOP} detection has an {name} twin')
        if deploy.with_masks and min(mask_ious[name], default=0.0) < MIN_MASK_IOU:
            print(f'FAILED: {name} masks: lowest IoU with the PyTorch twin\'s mask '
                  f'{min(mask_ious[name], default=0.0):.4f} < {MIN_MASK_IOU}', file=sys.stderr)
            failed = True
        elif deploy.with_masks:
            print(f'OK: {name} masks of the twins (threshold {deploy.mask_threshold}): IoU with '
                  f'PyTorch\'s >= {min(mask_ious[name]):.4f} (mean '
                  f'{np.mean(mask_ious[name]):.4f})')
    return int(failed)

def cli(argv: Sequence[str] | None = None) -> int:
    """``main`` for the command line (refusals: one message, exit 1)."""
    from tools.misc.tool_utils import run_cli
    return run_cli(lambda: main(argv))


if __name__ == '__main__':
    sys.exit(cli())
