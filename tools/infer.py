"""Run a trained detector on an image or a folder of images.

Writes one visualised PNG per image (boxes, class names, scores) and ``detections.json``::

    python tools/infer.py demo.png CONFIG CKPT --out-dir outputs/ --score-thr 0.3
    python tools/infer.py data/synthetic/val CONFIG CKPT --out-dir outputs/ --device cuda:0
    python tools/infer.py demo.png CONFIG MODEL.onnx --out-dir outputs/ --backend onnxruntime

``detections.json`` holds ``{"config", "checkpoint", "score_thr", "classes", "images": [...]}``
with, per image: ``file``, ``width``, ``height``, ``bboxes`` (``[x1, y1, x2, y2]`` in input-image
pixels), ``scores``, ``labels`` (0-based) and ``class_names``; only detections with
``score >= --score-thr`` are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so that `projects` and `tools.misc` import

from mmengine.config import DictAction  # noqa: E402

from tools.misc.tool_utils import add_backend_argument  # noqa: E402

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='Detect objects in images')
    parser.add_argument('input', help='image file or folder of images')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (an .onnx file with --backend)')
    add_backend_argument(parser)
    parser.add_argument('--out-dir', required=True, help='folder for PNGs and detections.json')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='keep detections with at least this score')
    parser.add_argument('--device', default=None,
                        help='e.g. cpu or cuda:0 (default: cuda:0 if available, else cpu)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    return parser.parse_args(argv)


def list_images(path: str | Path) -> list[Path]:
    """Return the image itself, or the sorted images of a folder (not recursive).

    Raises:
        FileNotFoundError: If ``path`` does not exist or the folder has no images.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f'input {str(path)!r} is neither an image file nor a folder')
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f'input folder {str(path)!r} contains no images with '
                                f'extensions {IMAGE_EXTENSIONS}')
    return images


def _backend_model(cfg, onnx_file: str, backend: str):
    """An exported model that mmdet's ``inference_detector`` can drive like a detector."""
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope

    from projects.codetr.deploy import ONNXBackendDetector
    init_default_scope(cfg.get('default_scope', 'mmdet'))  # as init_detector does
    model = ONNXBackendDetector(onnx_file, backend=backend)
    model.cfg = cfg
    metainfo = cfg.test_dataloader.dataset.get('metainfo') or CocoDataset.METAINFO
    model.dataset_meta = dict(classes=tuple(metainfo['classes']))
    return model.eval()


def _to_json(output: dict) -> str:
    """Serialise the detections with one line per image (readable and diff-friendly)."""
    header = {k: v for k, v in output.items() if k != 'images'}
    lines = [f' {json.dumps(k)}: {json.dumps(v)},' for k, v in header.items()]
    images = ',\n  '.join(json.dumps(record) for record in output['images'])
    return '{\n' + '\n'.join(lines) + f'\n "images": [\n  {images}\n ]\n}}\n'


def main(argv: Sequence[str] | None = None) -> dict:
    """Run inference and write the outputs.

    Returns:
        dict: The content written to ``detections.json``.
    """
    args = parse_args(argv)

    import mmcv
    import torch
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS

    from tools.misc.tool_utils import load_config, setup_modules

    setup_modules()
    cfg = load_config(args.config, args.cfg_options)
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    if not 0.0 <= args.score_thr <= 1.0:
        raise ValueError(f'--score-thr {args.score_thr}: expected a value in [0, 1]')
    images = list_images(args.input)
    device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')

    if args.backend == 'pytorch':
        model = init_detector(cfg, args.checkpoint, device=device)
    else:
        model = _backend_model(cfg, args.checkpoint, args.backend)
    classes = list(model.dataset_meta.get('classes', ()))
    # Images are written with out_file; no vis backend (they would need a save_dir).
    visualizer = VISUALIZERS.build(dict(cfg.visualizer, vis_backends=None))
    visualizer.dataset_meta = model.dataset_meta

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for image_path in images:
        result = inference_detector(model, str(image_path))
        pred = result.pred_instances
        keep = pred.scores >= args.score_thr
        bboxes = pred.bboxes[keep].cpu().tolist()
        scores = pred.scores[keep].cpu().tolist()
        labels = pred.labels[keep].cpu().tolist()
        height, width = result.ori_shape
        records.append(dict(
            file=str(image_path), width=int(width), height=int(height),
            bboxes=[[round(v, 2) for v in box] for box in bboxes],
            scores=[round(s, 4) for s in scores], labels=labels,
            class_names=[classes[i] if i < len(classes) else str(i) for i in labels]))
        image = mmcv.imread(str(image_path), channel_order='rgb')
        visualizer.add_datasample(
            image_path.stem, image, result, draw_gt=False, show=False,
            pred_score_thr=args.score_thr, out_file=str(out_dir / f'{image_path.stem}.png'))
        print(f'{image_path}: {len(scores)} detections (score >= {args.score_thr})')

    output = dict(config=str(args.config), checkpoint=str(args.checkpoint),
                  score_thr=args.score_thr, classes=classes, images=records)
    json_path = out_dir / 'detections.json'
    json_path.write_text(_to_json(output))
    print(f'wrote {len(records)} visualisations and {json_path}')
    return output


if __name__ == '__main__':
    main()
