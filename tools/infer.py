"""Run a trained detector on an image or a folder of images.

Writes one visualised PNG per image (boxes, class names, scores) and ``detections.json``::

    python tools/infer.py demo.png CONFIG CKPT --out-dir outputs/ --score-thr 0.3
    python tools/infer.py data/synthetic/val CONFIG CKPT --out-dir outputs/ --device cuda:0
    python tools/infer.py demo.png CONFIG MODEL.onnx --out-dir outputs/ --backend onnxruntime

``detections.json`` holds ``{"config", "checkpoint", "score_thr", "classes", "images": [...],
"num_skipped", "skipped": [...], "interrupted"}`` with, per image: ``file``, ``width``,
``height``, ``bboxes`` (``[x1, y1, x2, y2]`` in input-image pixels), ``scores``, ``labels``
(0-based), ``class_names`` and, for a model that predicts masks (the Co-DINO-Inst configs, the
mask config with ``eval_module='two-stage'``), ``masks`` as COCO RLE (``size``, ``counts``) and,
with a mask-IoU head, ``mask_scores`` (box score x predicted mask IoU); only detections with
``score >= --score-thr`` are kept. The drawings show the masks too (and the ground-truth masks
with ``--gt-ann``).

Nothing made is lost: an image that cannot be read or decoded is skipped (named in the log and
in ``skipped`` with the reason), the other images are processed, and the exit code is 3.
SIGINT or SIGTERM stops after the image in progress, writes ``detections.json`` for the images
done (``"interrupted": true``) and exits with 130 / 143. The file is replaced atomically, so it
is always complete JSON. The checkpoint must fit the config's model; a mismatch stops before any
image with the list of tensors that do not fit (``--allow-partial-checkpoint`` loads what fits and
records ``"partial_checkpoint"`` in the JSON).

For small images (e.g. the synthetic 128 px ones) ``--min-side 1024`` upscales the drawings so
names and scores stay legible (mmdet's visualiser draws 13 px labels on boxes of at least
30000 px² and 6 px ones below), ``--gt-ann instances_val.json`` draws the ground truth beside each
prediction, and ``--contact-sheet sheet.png`` writes a grid of the first ``--sheet-size``
drawings::

    python tools/infer.py data/synthetic/val CONFIG CKPT --out-dir out/ --min-side 1024 \
        --gt-ann data/synthetic/annotations/instances_val.json --contact-sheet out/sheet.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so that `projects` and `tools.misc` import

from mmengine.config import DictAction  # noqa: E402

from tools.misc.tool_utils import (  # noqa: E402
    add_allow_partial_argument,
    add_backend_argument,
    check_backend_arguments,
)

#: Exit code when some images could not be read (the others were processed).
EXIT_SKIPPED = 3
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
    parser.add_argument('--min-side', type=int, default=0,
                        help='upscale each drawing so that its shorter side is at least this '
                             'many pixels (boxes and text scale along; JSON boxes do not)')
    parser.add_argument('--gt-ann', default=None,
                        help='COCO annotation file: draw the ground truth of each image (found '
                             'by file name) to the left of its prediction')
    parser.add_argument('--contact-sheet', default=None, metavar='PNG',
                        help='also write a grid of the first --sheet-size drawings to this file')
    parser.add_argument('--sheet-size', type=int, default=16,
                        help='number of drawings in the contact sheet')
    parser.add_argument('--sheet-tile', type=int, default=512,
                        help='height in pixels of each drawing in the contact sheet')
    add_allow_partial_argument(parser, 'run')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    args = parser.parse_args(argv)
    check_backend_arguments(args)
    if args.allow_partial_checkpoint and args.backend != 'pytorch':
        parser.error('--allow-partial-checkpoint applies to PyTorch checkpoints, not to '
                     f'--backend {args.backend}')
    if args.min_side < 0 or args.sheet_size < 1 or args.sheet_tile < 16:
        parser.error(f'--min-side {args.min_side} / --sheet-size {args.sheet_size} / '
                     f'--sheet-tile {args.sheet_tile}: expected --min-side >= 0, --sheet-size '
                     '>= 1 and --sheet-tile >= 16')
    return args


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


def _backend_model(cfg, onnx_file: str, backend: str, precision: str = 'fp32'):
    """An exported model that mmdet's ``inference_detector`` can drive like a detector."""
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope

    from projects.codetr.deploy import ONNXBackendDetector
    init_default_scope(cfg.get('default_scope', 'mmdet'))  # as init_detector does
    model = ONNXBackendDetector(onnx_file, backend=backend, precision=precision)
    model.cfg = cfg
    metainfo = cfg.test_dataloader.dataset.get('metainfo') or CocoDataset.METAINFO
    model.dataset_meta = dict(classes=tuple(metainfo['classes']))
    return model.eval()


def load_ground_truth(ann_file: str | Path, classes: Sequence[str]) -> dict:
    """Ground truth per image file name: ``{name: (bboxes xyxy, labels, segmentations)}``.

    ``segmentations`` holds each object's COCO ``segmentation`` (polygons or RLE; None when
    absent) with the image's height and width, for drawing masks.

    Category ids are mapped to label indices through the category *names*, which must be among
    ``classes`` (the model's); crowd annotations are skipped.

    Raises:
        FileNotFoundError: If ``ann_file`` does not exist.
        ValueError: If a category name is not one of ``classes``, or an annotation's
            ``category_id`` is not among the file's categories.
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f'--gt-ann {str(ann_file)!r} does not exist')
    coco = json.loads(ann_file.read_text())
    label_of = {}
    for cat in coco.get('categories', []):
        if cat['name'] not in classes:
            raise ValueError(f'{ann_file}: category {cat["name"]!r} (id {cat["id"]}) is not '
                             f'one of the model\'s classes {tuple(classes)}')
        label_of[cat['id']] = list(classes).index(cat['name'])
    boxes = {img['id']: ([], [], []) for img in coco['images']}
    sizes = {img['id']: (img.get('height'), img.get('width')) for img in coco['images']}
    for ann in coco.get('annotations', []):
        if ann.get('iscrowd', 0) or ann['image_id'] not in boxes:
            continue
        if ann['category_id'] not in label_of:
            raise ValueError(f'{ann_file}: annotation {ann.get("id")} has category_id '
                             f'{ann["category_id"]}, not one of the file\'s categories '
                             f'{sorted(label_of)}')
        x, y, w, h = ann['bbox']
        boxes[ann['image_id']][0].append([x, y, x + w, y + h])
        boxes[ann['image_id']][1].append(label_of[ann['category_id']])
        segm = ann.get('segmentation')
        boxes[ann['image_id']][2].append((segm, *sizes[ann['image_id']]) if segm else None)
    return {Path(img['file_name']).name: boxes[img['id']] for img in coco['images']}


def draw_detections(visualizer, image, result, out_file: Path, score_thr: float,
                    min_side: int = 0, gt: tuple | None = None) -> None:
    """Draw ``result``'s predictions (and ``gt`` beside them) upscaled to ``min_side``.

    Args:
        visualizer: mmdet ``DetLocalVisualizer`` with ``dataset_meta`` set.
        image: RGB image as read.
        result: ``DetDataSample`` with ``pred_instances`` in image pixels.
        out_file: PNG to write.
        score_thr: Predictions below this score are not drawn.
        min_side: Upscale so that the shorter side is at least this (0: as is).
        gt: ``(bboxes xyxy, labels[, segmentations])`` lists to draw on the left, or None;
            the masks are drawn when every object has a segmentation.
    """
    import cv2
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    scale = max(1.0, min_side / min(image.shape[:2])) if min_side else 1.0
    sample = DetDataSample()
    pred = result.pred_instances
    keep = pred.scores.detach().cpu() >= score_thr  # drawn ones only (masks can be large)
    sample.pred_instances = InstanceData(bboxes=pred.bboxes.detach().cpu()[keep] * scale,
                                         scores=pred.scores.detach().cpu()[keep],
                                         labels=pred.labels.detach().cpu()[keep])
    if 'masks' in pred:  # (N, H, W) bool at the image size; upscaled with the drawing
        masks = pred.masks.detach().cpu()[keep]
        if scale > 1.0:
            size = (round(image.shape[0] * scale), round(image.shape[1] * scale))
            masks = torch.nn.functional.interpolate(
                masks[:, None].float(), size=size, mode='nearest')[:, 0] > 0.5 \
                if len(masks) else masks.new_zeros((0, *size))  # nothing kept: still sized
        sample.pred_instances.masks = masks.numpy()
    if gt is not None:
        bboxes = torch.tensor(gt[0], dtype=torch.float32).reshape(-1, 4) * scale
        sample.gt_instances = InstanceData(bboxes=bboxes,
                                           labels=torch.tensor(gt[1], dtype=torch.long))
        segms = gt[2] if len(gt) > 2 else []
        if segms and all(segms):
            sample.gt_instances.masks = _decode_segmentations(segms, image.shape[:2], scale)
    if scale > 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    visualizer.add_datasample(out_file.stem, image, sample, draw_gt=gt is not None,
                              show=False, pred_score_thr=score_thr, out_file=str(out_file))


def _decode_segmentations(segms: Sequence[tuple], image_hw: tuple, scale: float):
    """COCO segmentations ``(segmentation, height, width)`` -> bool masks (N, H', W') at the
    drawing's size."""
    import numpy as np
    import torch
    from pycocotools import mask as mask_utils
    h, w = image_hw
    masks = []
    for segm, seg_h, seg_w in segms:
        seg_h, seg_w = seg_h or h, seg_w or w
        if isinstance(segm, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, seg_h, seg_w))
        elif isinstance(segm.get('counts'), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segm, seg_h, seg_w)
        else:
            rle = dict(segm, counts=segm['counts'].encode()) if isinstance(
                segm['counts'], str) else segm
        masks.append(mask_utils.decode(rle)[:h, :w].astype(bool))
    masks = torch.from_numpy(np.stack(masks))
    if scale > 1.0:
        size = (round(h * scale), round(w * scale))
        masks = torch.nn.functional.interpolate(masks[:, None].float(), size=size,
                                                mode='nearest')[:, 0] > 0.5
    return masks.numpy()


def write_contact_sheet(pngs: Sequence[Path], out_file: str | Path, tile: int = 512) -> Path:
    """Tile drawings into a near-square grid (each fitted into ``tile`` px high cells).

    Raises:
        ValueError: If ``pngs`` is empty.
    """
    import math

    import cv2
    import numpy as np
    if not pngs:
        raise ValueError('no drawings for the contact sheet')
    tiles = []
    for png in pngs:
        img = cv2.imread(str(png))
        if img is None:
            raise OSError(f'could not read drawing {png}')
        scale = tile / img.shape[0]
        tiles.append(cv2.resize(img, (round(img.shape[1] * scale), tile),
                                interpolation=cv2.INTER_AREA))
    width = max(t.shape[1] for t in tiles)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.full((rows * (tile + 8) + 8, cols * (width + 8) + 8, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        y, x = 8 + (i // cols) * (tile + 8), 8 + (i % cols) * (width + 8)
        sheet[y:y + tile, x:x + t.shape[1]] = t
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_file), sheet):
        raise OSError(f'could not write contact sheet {out_file}')
    return out_file


def _to_json(output: dict) -> str:
    """Serialise the detections with one line per image (readable and diff-friendly)."""
    header = {k: v for k, v in output.items() if k != 'images'}
    lines = [f' {json.dumps(k)}: {json.dumps(v)},' for k, v in header.items()]
    images = ',\n  '.join(json.dumps(record) for record in output['images'])
    return '{\n' + '\n'.join(lines) + f'\n "images": [\n  {images}\n ]\n}}\n'


def write_json_atomic(output: dict, path: Path) -> None:
    """Write ``detections.json`` to a temporary file and rename it into place."""
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    tmp.write_text(_to_json(output))
    os.replace(tmp, path)


def read_image(path: Path):
    """Decode an image file as RGB, or say why it cannot be used.

    Returns:
        tuple: ``(image, None)`` or ``(None, problem)``.
    """
    import mmcv
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f'cannot be read ({exc.strerror or exc})'
    if not data:
        return None, 'is empty (0 bytes)'
    try:
        image = mmcv.imfrombytes(data, channel_order='rgb')
    except Exception as exc:  # decoder errors of any type
        return None, f'cannot be decoded ({type(exc).__name__}: {exc})'
    if image is None:
        return None, 'cannot be decoded (truncated or not an image)'
    return image, None


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; ``signum`` says which (a BaseException, like
    KeyboardInterrupt, so that ``except Exception`` around a step cannot swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGINT and SIGTERM into :class:`Interrupted` (main thread only), then restore."""
    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run inference and write the outputs.

    Returns:
        dict: The content written to ``detections.json``.
    """
    args = parse_args(argv)

    import torch
    from mmdet.apis import inference_detector
    from mmdet.registry import VISUALIZERS

    from projects.codetr.deploy import optimize_for_cpu_inference
    from tools.misc.tool_utils import (
        check_exported_eval_module,
        init_detector_checked,
        load_config,
        setup_modules,
    )

    setup_modules()
    cfg = load_config(args.config, args.cfg_options)
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    if not 0.0 <= args.score_thr <= 1.0:
        raise ValueError(f'--score-thr {args.score_thr}: expected a value in [0, 1]')
    images = list_images(args.input)
    args.device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')

    partial = None
    if args.backend == 'pytorch':
        model, partial = init_detector_checked(cfg, args.checkpoint, args.device, args.config,
                                               args.allow_partial_checkpoint)
        if args.device == 'cpu' and not args.no_cpu_optim:
            optimize_for_cpu_inference(model)
    else:
        check_exported_eval_module(cfg, args.backend)
        model = _backend_model(cfg, args.checkpoint, args.backend, args.precision)
    classes = list(model.dataset_meta.get('classes', ()))
    # Images are written with out_file; no vis backend (they would need a save_dir).
    visualizer = VISUALIZERS.build(dict(cfg.visualizer, vis_backends=None))
    visualizer.dataset_meta = model.dataset_meta

    ground_truth = load_ground_truth(args.gt_ann, classes) if args.gt_ann else None
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / 'detections.json'
    records, drawings, skipped = [], [], []
    output = dict(config=str(args.config), checkpoint=str(args.checkpoint),
                  score_thr=args.score_thr, classes=classes, num_skipped=0, skipped=skipped,
                  interrupted=False)
    if partial is not None:
        output['partial_checkpoint'] = partial.to_dict()
    output['images'] = records
    try:
        with stop_on_signals():
            for image_path in images:
                image, problem = read_image(image_path)
                if problem is not None:
                    skipped.append(dict(file=str(image_path), reason=problem))
                    print(f'WARNING: {image_path} {problem}: skipped', file=sys.stderr)
                    continue
                result = inference_detector(model, str(image_path))
                records.append(_record(image_path, result, args.score_thr, classes))
                gt = None
                if ground_truth is not None:
                    gt = ground_truth.get(image_path.name, ([], [], []))
                drawings.append(out_dir / f'{image_path.stem}.png')
                draw_detections(visualizer, image, result, drawings[-1], args.score_thr,
                                min_side=args.min_side, gt=gt)
                print(f'{image_path}: {len(records[-1]["scores"])} detections '
                      f'(score >= {args.score_thr})')
    except Interrupted as exc:
        output['interrupted'] = str(exc)
        print(f'{exc}: stopped after {len(records)} of {len(images)} images', file=sys.stderr)
    finally:  # whatever happens, the predictions made so far are written
        output['num_skipped'] = len(skipped)
        write_json_atomic(output, json_path)
    print(f'wrote {len(records)} visualisations and {json_path}')
    if skipped:
        print(f'WARNING: skipped {len(skipped)} of {len(images)} images that cannot be used: '
              + ', '.join(s['file'] for s in skipped[:20]), file=sys.stderr)
    if args.contact_sheet and drawings and not output['interrupted']:
        sheet = write_contact_sheet(drawings[:args.sheet_size], args.contact_sheet,
                                    tile=args.sheet_tile)
        print(f'wrote the contact sheet {sheet}')
    return output


def _record(image_path: Path, result, score_thr: float, classes: list) -> dict:
    """The ``detections.json`` entry of one image."""
    pred = result.pred_instances
    keep = pred.scores >= score_thr
    bboxes = pred.bboxes[keep].cpu().tolist()
    scores = pred.scores[keep].cpu().tolist()
    labels = pred.labels[keep].cpu().tolist()
    height, width = result.ori_shape
    record = dict(file=str(image_path), width=int(width), height=int(height),
                  bboxes=[[round(v, 2) for v in box] for box in bboxes],
                  scores=[round(s, 4) for s in scores], labels=labels,
                  class_names=[classes[i] if i < len(classes) else str(i) for i in labels])
    if 'mask_scores' in pred:  # Co-DINO-Inst: box score x predicted mask IoU (segm ranking)
        record['mask_scores'] = [round(s, 4) for s in pred.mask_scores[keep].cpu().tolist()]
    if 'masks' in pred:  # COCO RLE per kept detection, at the input image's size
        import numpy as np
        from pycocotools import mask as mask_utils
        masks = pred.masks[keep].cpu().numpy().astype(np.uint8)  # (K, H, W)
        masks = np.asfortranarray(masks.transpose(1, 2, 0))  # pycocotools: (H, W, K)
        record['masks'] = [dict(size=rle['size'], counts=rle['counts'].decode())
                           for rle in mask_utils.encode(masks)] if len(scores) else []
    return record


def exit_code(output: dict) -> int:
    """0 when every image was processed, 128 + signal when interrupted, 3 when some were
    skipped."""
    if output['interrupted']:
        return 128 + int(getattr(signal, output['interrupted']))
    return EXIT_SKIPPED if output['num_skipped'] else 0


def cli(argv: Sequence[str] | None = None) -> int:
    """``main`` for the command line (refusals: one message, exit 1; see :func:`exit_code`)."""
    from tools.misc.tool_utils import run_cli
    return run_cli(lambda: exit_code(main(argv)))


if __name__ == '__main__':
    sys.exit(cli())
