"""Generate a synthetic COCO-format detection dataset of geometric shapes.

Each scene is a textured, noisy background with 0..N objects of six classes that differ in
geometry (ellipse, rectangle, triangle, star, ring, cross). Objects vary in size (about 8 px up
to half the image side), aspect ratio, rotation and colour, and may overlap: later objects
occlude earlier ones, and every annotation is the tight box of the *visible* pixels of its shape.
Placements that would hide more than ``1 - min_visible`` of an earlier object are re-drawn, so
every annotated object stays recognisable. A fixed share of images has no objects at all.

Output layout (what ``mmdet.datasets.CocoDataset`` expects)::

    OUT_DIR/annotations/instances_train.json
    OUT_DIR/annotations/instances_val.json
    OUT_DIR/train/000000.png ...
    OUT_DIR/val/000000.png ...

Usage::

    python tools/misc/generate_synthetic_coco.py --out-dir data/synthetic \
        --num-train 2000 --num-val 200 --img-size 256 --seed 0

The output is a pure function of the arguments: every image has its own random generator seeded
by ``(seed, split, index)``, so the same ``--seed`` gives byte-identical JSON and pixels.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

#: Class names, in category-id order (COCO ids are ``index + 1``). Configs must use the same tuple
#: in ``metainfo=dict(classes=...)``.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    'ellipse', 'rectangle', 'triangle', 'star', 'ring', 'cross')

#: Default output folder (git-ignored ``data/``).
DEFAULT_OUT_DIR = 'data/synthetic'

_SPLIT_IDS = {'train': 0, 'val': 1}
_MIN_SIDE = 6  # smallest box side (px) that a shape is drawn with
_CIRCLE_POINTS = 48


def _unit_polygons(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Return the outline(s) of a shape in unit coordinates ``[-1, 1]^2``.

    Args:
        name: One of :data:`SYNTHETIC_CLASSES`.
        rng: Random generator for the per-instance shape variation.

    Returns:
        list[np.ndarray]: One ``(K, 2)`` polygon, or two (outer, hole) for ``'ring'``.
    """
    theta = np.linspace(0, 2 * np.pi, _CIRCLE_POINTS, endpoint=False)
    circle = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    if name == 'ellipse':
        return [circle]
    if name == 'rectangle':
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)]
    if name == 'triangle':
        apex = rng.uniform(-0.6, 0.6)  # not always isosceles
        return [np.array([[apex, -1], [1, 1], [-1, 1]], dtype=np.float64)]
    if name == 'star':
        num_tips = 5
        inner = rng.uniform(0.38, 0.5)
        angles = -np.pi / 2 + np.arange(2 * num_tips) * np.pi / num_tips
        radii = np.where(np.arange(2 * num_tips) % 2 == 0, 1.0, inner)
        return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)]
    if name == 'ring':
        return [circle, circle * rng.uniform(0.45, 0.65)]
    if name == 'cross':
        t = rng.uniform(0.28, 0.4)  # half arm thickness
        return [np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1],
                          [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]], dtype=np.float64)]
    raise ValueError(f'unknown shape class {name!r}; expected one of {SYNTHETIC_CLASSES}')


def _shape_mask(name: str, center: np.ndarray, half_wh: np.ndarray, angle: float,
                img_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Rasterise one shape into a boolean mask of the image size.

    Args:
        name: Shape class name.
        center: ``(2,)`` centre ``(x, y)`` in pixels.
        half_wh: ``(2,)`` half width and half height before rotation, in pixels.
        angle: Rotation in radians.
        img_hw: Image ``(height, width)``.
        rng: Random generator for the per-instance shape variation.

    Returns:
        np.ndarray: ``(H, W)`` bool mask of the drawn pixels.
    """
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    polys = [(p * half_wh) @ rot.T + center for p in _unit_polygons(name, rng)]
    masks = []
    for poly in polys:
        mask = np.zeros(img_hw, dtype=np.uint8)
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        masks.append(mask.astype(bool))
    if name == 'ring':
        return masks[0] & ~masks[1]  # outer disc minus the hole: the background shows through
    return masks[0]


def _background(rng: np.random.Generator, img_hw: tuple[int, int]) -> np.ndarray:
    """Draw a textured background: smooth colour field, blotches and faint distractor lines.

    Args:
        rng: Random generator.
        img_hw: Image ``(height, width)``.

    Returns:
        np.ndarray: ``(H, W, 3)`` float32 image in ``[0, 255]``.
    """
    h, w = img_hw
    base = rng.uniform(30, 225, size=3)
    grid = int(rng.integers(2, 7))
    field = rng.normal(0, rng.uniform(10, 35), size=(grid, grid, 3)).astype(np.float32)
    img = base.astype(np.float32) + cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, rng.uniform(2, 10), size=(max(h // 8, 1), max(w // 8, 1), 3))
    img += cv2.resize(fine.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(0, 6))):
        p0 = tuple(int(v) for v in rng.integers(0, (w, h)))
        p1 = tuple(int(v) for v in rng.integers(0, (w, h)))
        colour = tuple(float(v) for v in np.clip(base + rng.normal(0, 40, size=3), 0, 255))
        cv2.line(img, p0, p1, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _object_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """Pick an object colour that contrasts with the background it covers.

    Args:
        rng: Random generator.
        under: ``(3,)`` mean background colour below the object.

    Returns:
        np.ndarray: ``(3,)`` float32 colour.
    """
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if np.linalg.norm(colour - under) > 90:
            break
        colour = rng.uniform(0, 255, size=3)
    else:
        colour = 255.0 - under  # complementary colour always contrasts enough
    return colour.astype(np.float32)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Return the inclusive pixel box ``(x0, y0, x1, y1)`` of a mask, or None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def render_scene(rng: np.random.Generator, img_size: int, num_objects: int,
                 min_visible: float = 0.4, noise_std: float = 8.0, min_size: float = 8.0,
                 max_size: float | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one synthetic scene and its annotations.

    Args:
        rng: Random generator (the only source of randomness).
        img_size: Side of the square image in pixels (>= 32).
        num_objects: Number of objects to try to place; fewer may fit.
        min_visible: Minimum visible fraction of every annotated object after occlusion.
        noise_std: Upper bound of the per-image Gaussian pixel-noise standard deviation.
        min_size: Smallest object size ``sqrt(w * h)`` before rotation, in pixels.
        max_size: Largest object size in pixels; None for half the image side (the cap).

    Returns:
        tuple: ``image`` ``(H, W, 3)`` uint8 BGR, and a list of annotations with keys
        ``label`` (0-based class index), ``bbox`` (COCO ``[x, y, w, h]`` of the visible
        pixels), ``area`` (visible pixel count) and ``segmentation`` (COCO RLE of the
        visible pixels; the LSJ recipes' copy-paste needs instance masks).
    """
    img_hw = (img_size, img_size)
    img = _background(rng, img_hw)
    max_side = img_size / 2
    max_size = max_side if max_size is None else min(max_size, max_side)
    if not 0 < min_size <= max_size:
        raise ValueError(f'object sizes min_size={min_size}, max_size={max_size}: expected '
                         f'0 < min_size <= max_size <= half the image side ({max_side})')
    masks: list[np.ndarray] = []  # full drawn mask per placed object
    visible: list[np.ndarray] = []  # pixels still visible per placed object
    labels: list[int] = []
    for _ in range(num_objects):
        for _attempt in range(15):
            label = int(rng.integers(len(SYNTHETIC_CLASSES)))
            size = math.exp(rng.uniform(math.log(min_size), math.log(max_size)))  # sqrt(w * h)
            ratio = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # w / h
            half_wh = np.clip([size * math.sqrt(ratio), size / math.sqrt(ratio)],
                              _MIN_SIDE, max_side) / 2
            # An ellipse gets any orientation, the other shapes a moderate tilt.
            angle = rng.uniform(0, math.pi) if label == 0 else rng.uniform(-0.5, 0.5)
            # Bounding radius of the rotated shape keeps it fully inside the image.
            ext = np.abs(np.array([[math.cos(angle), math.sin(angle)],
                                   [math.sin(angle), math.cos(angle)]])) @ half_wh
            if np.any(2 * ext + 2 >= img_size):
                continue
            center = rng.uniform(ext + 1, img_size - ext - 1)
            mask = _shape_mask(SYNTHETIC_CLASSES[label], center, half_wh, angle, img_hw, rng)
            area = int(mask.sum())
            if area < 16:
                continue
            new_visible = [v & ~mask for v in visible]
            if all(nv.sum() >= min_visible * m.sum() for nv, m in zip(new_visible, masks)):
                break
        else:
            continue  # no acceptable placement: skip this object
        under = img[mask].mean(axis=0)
        colour = _object_colour(rng, under)
        # Mild shading gradient across the object so it is not a flat colour.
        yy, xx = np.nonzero(mask)
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction) + 1e-6
        proj = ((xx - center[0]) * direction[0] + (yy - center[1]) * direction[1]) / max(
            half_wh.max(), 1.0)
        shade = 1.0 + rng.uniform(0.0, 0.25) * proj[:, None]
        img[yy, xx] = np.clip(colour[None] * shade, 0, 255)
        visible = new_visible + [mask.copy()]
        masks.append(mask)
        labels.append(label)
    img += rng.normal(0, rng.uniform(2.0, noise_std), size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    anns = []
    for label, vis in zip(labels, visible):
        box = _tight_box(vis)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        rle = mask_utils.encode(np.asfortranarray(vis.astype(np.uint8)))
        rle['counts'] = rle['counts'].decode('ascii')
        anns.append(dict(label=label, bbox=[x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                         area=int(vis.sum()), segmentation=rle))
    return image, anns


def _generator_params(num_images, img_size, seed, max_objects, empty_ratio, ext, min_size,
                      max_size, min_visible) -> dict[str, Any]:
    """The arguments a split was generated with (stored in its ``info.generator``)."""
    return dict(num_images=num_images, img_size=img_size, seed=seed, max_objects=max_objects,
                empty_ratio=empty_ratio, ext=ext, min_size=min_size, max_size=max_size,
                min_visible=min_visible)


def existing_split_matches(out_dir: str | Path, split: str, num_images: int,
                           img_size: int = 128, seed: int = 0, max_objects: int = 6,
                           empty_ratio: float = 0.1, ext: str = 'png', min_size: float = 8.0,
                           max_size: float | None = None, min_visible: float = 0.4) -> bool:
    """Whether ``out_dir`` already holds this split generated with exactly these arguments
    (its annotation file's ``info.generator``) and all of its images."""
    ann_file = Path(out_dir) / 'annotations' / f'instances_{split}.json'
    if not ann_file.is_file():
        return False
    try:
        coco = json.loads(ann_file.read_text())
    except json.JSONDecodeError:
        return False
    wanted = _generator_params(num_images, img_size, seed, max_objects, empty_ratio, ext,
                               min_size, max_size, min_visible)
    if coco.get('info', {}).get('generator') != wanted:
        return False
    return all((Path(out_dir) / split / img['file_name']).is_file() for img in coco['images'])


def generate_split(out_dir: str | Path, split: str, num_images: int, img_size: int = 128,
                   seed: int = 0, max_objects: int = 6, empty_ratio: float = 0.1,
                   ext: str = 'png', min_size: float = 8.0, max_size: float | None = None,
                   min_visible: float = 0.4) -> Path:
    """Write the images and the COCO annotation file of one split.

    Args:
        out_dir: Dataset root.
        split: ``'train'`` or ``'val'``.
        num_images: Number of images.
        img_size: Image side in pixels.
        seed: Base random seed.
        max_objects: Maximum number of objects per non-empty image.
        empty_ratio: Share of images without any object (rounded to a whole count).
        ext: Image extension, ``'png'`` (lossless) or ``'jpg'``.
        min_size, max_size, min_visible: Object sizes and occlusion limit, see
            :func:`render_scene`.

    Returns:
        Path: The written ``annotations/instances_{split}.json``.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f'split={split!r}: expected one of {tuple(_SPLIT_IDS)}')
    if ext not in ('png', 'jpg'):
        raise ValueError(f"ext={ext!r}: expected 'png' or 'jpg'")
    if img_size < 32:
        raise ValueError(f'img_size={img_size}: expected at least 32 px')
    if not 0.0 <= empty_ratio <= 1.0:
        raise ValueError(f'empty_ratio={empty_ratio}: expected a value in [0, 1]')
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f'min_visible={min_visible}: expected a value in [0, 1]')
    out_dir = Path(out_dir)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    (out_dir / 'annotations').mkdir(parents=True, exist_ok=True)
    split_rng = np.random.default_rng([seed, _SPLIT_IDS[split], 2**31 - 1])
    num_empty = int(round(empty_ratio * num_images))
    empty = set(split_rng.permutation(num_images)[:num_empty].tolist())
    images, annotations = [], []
    for idx in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], idx])
        num_objects = 0 if idx in empty else int(rng.integers(1, max_objects + 1))
        image, anns = render_scene(rng, img_size, num_objects, min_visible=min_visible,
                                   min_size=min_size, max_size=max_size)
        file_name = f'{idx:06d}.{ext}'
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == 'jpg' else []
        if not cv2.imwrite(str(out_dir / split / file_name), image, params):
            raise OSError(f'could not write image {out_dir / split / file_name}')
        images.append(dict(id=idx + 1, file_name=file_name, width=img_size, height=img_size))
        for ann in anns:
            annotations.append(dict(
                id=len(annotations) + 1, image_id=idx + 1, category_id=ann['label'] + 1,
                bbox=ann['bbox'], area=ann['area'], segmentation=ann['segmentation'],
                iscrowd=0))
    coco = dict(
        info=dict(description=f'synthetic shapes ({split}), seed={seed}', version='1.0',
                  generator=_generator_params(num_images, img_size, seed, max_objects,
                                              empty_ratio, ext, min_size, max_size,
                                              min_visible)),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(SYNTHETIC_CLASSES)])
    ann_file = out_dir / 'annotations' / f'instances_{split}.json'
    ann_file.write_text(json.dumps(coco))
    return ann_file


def generate_synthetic_coco(out_dir: str | Path = DEFAULT_OUT_DIR, num_train: int = 200,
                            num_val: int = 50, img_size: int = 128, seed: int = 0,
                            max_objects: int = 6, empty_ratio: float = 0.1,
                            ext: str = 'png', **scene: float | None) -> dict[str, Path]:
    """Write the train and val splits; see :func:`generate_split` for the arguments
    (``scene``: its ``min_size``, ``max_size`` and ``min_visible``).

    Returns:
        dict[str, Path]: Annotation file per split name.
    """
    return {
        split: generate_split(out_dir, split, num, img_size=img_size, seed=seed,
                              max_objects=max_objects, empty_ratio=empty_ratio, ext=ext,
                              **scene)
        for split, num in (('train', num_train), ('val', num_val))
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR, help='dataset root folder')
    parser.add_argument('--num-train', type=int, default=200, help='number of train images')
    parser.add_argument('--num-val', type=int, default=50, help='number of val images')
    parser.add_argument('--img-size', type=int, default=128, help='square image side (px)')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--max-objects', type=int, default=6, help='max objects per image')
    parser.add_argument('--empty-ratio', type=float, default=0.1,
                        help='share of images without objects')
    parser.add_argument('--ext', choices=('png', 'jpg'), default='png', help='image format')
    parser.add_argument('--min-size', type=float, default=8.0,
                        help='smallest object size sqrt(w*h) in px')
    parser.add_argument('--max-size', type=float, default=None,
                        help='largest object size in px (default and cap: half the image side)')
    parser.add_argument('--min-visible', type=float, default=0.4,
                        help='minimum visible fraction of an occluded object')
    parser.add_argument('--reuse', action='store_true',
                        help='keep a split that OUT_DIR already holds with these exact arguments')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    args = parse_args(argv)
    scene = dict(img_size=args.img_size, seed=args.seed, max_objects=args.max_objects,
                 empty_ratio=args.empty_ratio, ext=args.ext, min_size=args.min_size,
                 max_size=args.max_size, min_visible=args.min_visible)
    for split, num in (('train', args.num_train), ('val', args.num_val)):
        if args.reuse and existing_split_matches(args.out_dir, split, num, **scene):
            ann_file = Path(args.out_dir) / 'annotations' / f'instances_{split}.json'
            action = 'reused'
        else:
            ann_file = generate_split(args.out_dir, split, num, **scene)
            action = 'generated'
        data = json.loads(ann_file.read_text())
        print(f'{split}: {len(data["images"])} images, {len(data["annotations"])} boxes '
              f'{action} -> {ann_file}')


if __name__ == '__main__':
    main()
