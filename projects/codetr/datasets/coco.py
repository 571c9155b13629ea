"""COCO dataset that validates its annotation file and accounts for every dropped box.

mmdet's :class:`~mmdet.datasets.CocoDataset` silently skips boxes narrower than 1 px, boxes
outside the image and annotations of unknown categories; it maps a ``classes`` name missing
from the file onto the wrong label; and a malformed file fails with a bare ``KeyError`` or
``JSONDecodeError`` that does not say which file. :class:`CheckedCocoDataset` keeps mmdet's
output format and label mapping but:

- fails at once, naming the file and the entry, on a structurally broken annotation file
  (not JSON, missing keys, a ``bbox`` that is not four numbers, duplicate ids, a ``classes``
  name that is not a category of the file, ``classes`` in a different order than the file);
- clips partly-outside boxes to the image, drops degenerate ones (NaN/inf, width or height
  <= 0, entirely outside, smaller than ``min_bbox_size`` after clipping) and logs, once per
  reason, how many annotations were affected with a few example annotation ids;
- checks that every image file exists before training starts.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os.path as osp
from collections import defaultdict
from numbers import Real
from typing import Any

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS
from mmengine.fileio import get_local_path
from mmengine.logging import print_log

# reason -> (what happens to such an annotation, log level)
DROP_REASONS: dict[str, tuple[str, int]] = {
    'non_finite_bbox': ('have NaN/inf bbox coordinates: dropped', logging.WARNING),
    'non_positive_size': ('have a bbox width or height <= 0: dropped', logging.WARNING),
    'outside_image': ('lie entirely outside their image: dropped', logging.WARNING),
    'too_small': ('are narrower or shorter than min_bbox_size after clipping: dropped',
                  logging.WARNING),
    'unknown_category': ("have a category_id that is not in the file's categories: dropped",
                         logging.WARNING),
    'unknown_image': ("have an image_id that is not in the file's images: never loaded",
                      logging.WARNING),
    'clipped': ('extend past the image border: clipped to the image', logging.INFO),
    'crowd': ('are iscrowd=1: kept as ignored instances (not training targets)', logging.INFO),
    'ignore_flag': ("have 'ignore' set: dropped", logging.INFO),
    'unselected_category': ('belong to a category not in `classes`: dropped', logging.INFO),
    'no_segmentation': ('have no "segmentation" while the pipeline loads masks (a mask head '
                        'is trained): dropped', logging.WARNING),
    'bad_segmentation': ('have a "segmentation" that is not a polygon list with >= 3 points '
                         'or an RLE of the image size: dropped', logging.WARNING),
    'bbox_from_mask': ('have no "bbox": it is taken from the extent of their "segmentation"',
                       logging.INFO),
}
#: Reasons about masks: their examples name the image id too.
_MASK_REASONS = ('no_segmentation', 'bad_segmentation', 'bbox_from_mask')


class AnnotationFileError(ValueError):
    """A COCO annotation file that cannot be used as it is (raised with the file name)."""


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (``bool`` excluded); NaN/inf count as numbers."""
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_entries(entries: Any, section: str, keys: tuple[str, ...], ann_file: str) -> None:
    """Check that a top-level section is a list of objects with the required keys.

    Raises:
        AnnotationFileError: Naming the file, the section, the entry index/id and the key.
    """
    if not isinstance(entries, list):
        raise AnnotationFileError(
            f'{ann_file}: "{section}" must be a list, got {type(entries).__name__}')
    for idx, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise AnnotationFileError(
                f'{ann_file}: {section}[{idx}] must be an object, got {entry!r:.80}')
        for key in keys:
            if key not in entry:
                raise AnnotationFileError(
                    f'{ann_file}: {section}[{idx}] (id={entry.get("id")!r}) has no "{key}" '
                    f'key; every {section} entry needs {", ".join(keys)}')


def _check_unique(ids: list, section: str, ann_file: str) -> None:
    """Raise if ``ids`` has duplicates, naming a few of them."""
    if len(set(ids)) != len(ids):
        seen: set = set()
        dups = sorted({i for i in ids if i in seen or seen.add(i)}, key=str)[:5]
        raise AnnotationFileError(f'{ann_file}: duplicate {section} ids, e.g. {dups}')


def check_coco_structure(data: Any, ann_file: str, require_annotations: bool = True) -> None:
    """Validate the structure of a loaded COCO detection annotation file.

    Args:
        data: The parsed JSON document.
        ann_file: File name used in error messages.
        require_annotations: Whether an ``annotations`` section is mandatory (it may be
            absent from test-set files, e.g. COCO ``image_info_test-dev2017.json``).

    Raises:
        AnnotationFileError: On the first problem found, naming the file and the entry.
    """
    if not isinstance(data, dict):
        raise AnnotationFileError(
            f'{ann_file}: expected a JSON object with "images", "annotations" and '
            f'"categories", got a {type(data).__name__}')
    required = ('images', 'categories') + (('annotations',) if require_annotations else ())
    missing = [key for key in required if key not in data]
    if missing:
        raise AnnotationFileError(f'{ann_file}: missing top-level key(s) {missing}; a COCO '
                                  'detection file has "images", "annotations", "categories"')
    data.setdefault('annotations', [])
    _check_entries(data['images'], 'images', ('id', 'file_name', 'width', 'height'), ann_file)
    _check_entries(data['categories'], 'categories', ('id', 'name'), ann_file)
    _check_entries(data['annotations'], 'annotations', ('id', 'image_id', 'category_id'),
                   ann_file)
    for idx, img in enumerate(data['images']):
        size = (img['width'], img['height'])
        if not all(_is_number(v) and math.isfinite(v) and v > 0 for v in size):
            raise AnnotationFileError(
                f'{ann_file}: images[{idx}] (id={img["id"]!r}, {img["file_name"]!r}) has '
                f'width/height {size}; expected positive numbers')
    for idx, ann in enumerate(data['annotations']):
        if 'bbox' not in ann:
            if ann.get('segmentation'):
                continue  # the box comes from the mask (CheckedCocoDataset)
            raise AnnotationFileError(
                f'{ann_file}: annotations[{idx}] (id={ann["id"]!r}, image_id='
                f'{ann["image_id"]!r}) has no "bbox" key and no "segmentation" to take it '
                'from; every annotations entry needs id, image_id, category_id, bbox')
        bbox = ann['bbox']
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(_is_number(v) for v in bbox)):
            raise AnnotationFileError(
                f'{ann_file}: annotations[{idx}] (id={ann["id"]!r}, image_id='
                f'{ann["image_id"]!r}) has bbox {bbox!r:.80}; expected [x, y, width, height] '
                'numbers')
    _check_unique([img['id'] for img in data['images']], 'image', ann_file)
    _check_unique([cat['id'] for cat in data['categories']], 'category', ann_file)
    _check_unique([ann['id'] for ann in data['annotations']], 'annotation', ann_file)
    names = [cat['name'] for cat in data['categories']]
    if len(set(names)) != len(names):
        raise AnnotationFileError(f'{ann_file}: duplicate category names in {names}')


def _segmentation_problem(segm: Any, height: int, width: int) -> str | None:
    """None if ``segm`` is a usable COCO mask (polygons or RLE of the image size), else the
    drop reason."""
    if not segm:
        return 'no_segmentation'
    if isinstance(segm, list):
        ok = all(isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                 and all(_is_number(v) and math.isfinite(v) for v in poly) for poly in segm)
        return None if ok else 'bad_segmentation'
    if isinstance(segm, dict) and 'counts' in segm and 'size' in segm:
        return None if list(segm['size']) == [height, width] else 'bad_segmentation'
    return 'bad_segmentation'


def _mask_extent(segm: Any, height: int, width: int) -> list[float]:
    """COCO ``[x, y, w, h]`` of a usable segmentation (polygons: their coordinates' extent)."""
    if isinstance(segm, list):
        xs = [v for poly in segm for v in poly[0::2]]
        ys = [v for poly in segm for v in poly[1::2]]
        return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    from pycocotools import mask as mask_utils
    rle = segm if isinstance(segm['counts'], (str, bytes)) else mask_utils.frPyObjects(
        segm, height, width)
    return [float(v) for v in mask_utils.toBbox(rle)]


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """:class:`~mmdet.datasets.CocoDataset` with validation and accounted-for filtering.

    Same data format, label mapping (``classes`` order) and filter options as the parent.
    Annotations are checked one by one; see :data:`DROP_REASONS` for what happens to each kind
    of defect. Counts are logged once per reason when the dataset is built.

    Args:
        min_bbox_size: Boxes whose clipped width or height is below this (pixels of the
            original image) are dropped. mmdet uses 1 (unclipped ``w < 1 or h < 1``).
        check_image_files: Check before training that every image file exists (local paths
            only). Missing files are handled according to ``on_missing_image``.
        on_missing_image: ``'raise'`` (default) stops with the list of missing files;
            ``'drop'`` removes those images from the dataset and logs them.
        max_examples: Number of example annotation ids / files shown per reason.
        require_masks: Drop (and count) objects without a usable ``segmentation``, as for bad
            boxes. None: when the pipeline's ``LoadAnnotations`` has ``with_mask=True``, i.e.
            when a mask head trains. Objects with a ``segmentation`` but no ``bbox`` get their
            box from the mask in any case.
        *args, **kwargs: Arguments of :class:`~mmdet.datasets.CocoDataset`.
    """

    def __init__(self, *args, min_bbox_size: float = 1.0, check_image_files: bool = True,
                 on_missing_image: str = 'raise', max_examples: int = 5,
                 require_masks: bool | None = None, **kwargs) -> None:
        if on_missing_image not in ('raise', 'drop'):
            raise ValueError(f"on_missing_image={on_missing_image!r}: expected 'raise' or "
                             "'drop'")
        if not min_bbox_size >= 0:
            raise ValueError(f'min_bbox_size={min_bbox_size}: expected a number >= 0')
        # Set before super().__init__, which loads the annotations unless lazy_init.
        self.min_bbox_size = float(min_bbox_size)
        self.check_image_files = check_image_files
        self.on_missing_image = on_missing_image
        self.max_examples = max_examples
        if require_masks is None:  # a mask head is trained when the pipeline loads masks
            require_masks = any(
                isinstance(t, dict) and 'LoadAnnotations' in str(t.get('type'))
                and t.get('with_mask') for t in kwargs.get('pipeline') or [])
        self.require_masks = bool(require_masks)
        self.drop_counts: dict[str, list] = defaultdict(list)
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ loading

    def _load_json(self) -> dict:
        """Read and parse ``self.ann_file``, re-raising errors with the file name."""
        try:
            with get_local_path(self.ann_file, backend_args=self.backend_args) as local_path:
                with open(local_path, encoding='utf-8') as f:
                    return json.load(f)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f'annotation file {self.ann_file!r} does not exist (data_root='
                f'{self.data_root!r})') from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnnotationFileError(
                f'{self.ann_file}: not a valid JSON file ({exc}); is it truncated or '
                'not a COCO annotation file?') from exc

    def _select_categories(self, categories: list[dict]) -> list[int]:
        """Category ids of ``classes`` in label order; checks names and order.

        Raises:
            AnnotationFileError: If a class is not a category of the file, or ``classes`` is
                not in the file's category order (labels would get the wrong names).
        """
        classes = tuple(self.metainfo['classes'])
        id_by_name = {cat['name']: cat['id'] for cat in categories}
        missing = [name for name in classes if name not in id_by_name]
        if missing:
            raise AnnotationFileError(
                f'{self.ann_file}: classes {missing} (from the dataset metainfo / config '
                f'`classes`) are not category names of the file, whose categories are '
                f'{list(id_by_name)}')
        wanted = set(classes)
        file_order = tuple(cat['name'] for cat in categories if cat['name'] in wanted)
        if file_order != classes:
            raise AnnotationFileError(
                f'{self.ann_file}: `classes` must list the categories in the order of the '
                f'file (labels and evaluation follow that order): expected {file_order}, '
                f'got {classes}')
        return [id_by_name[name] for name in classes]

    def load_data_list(self) -> list[dict]:
        """Load, validate and parse the annotation file.

        Returns:
            list[dict]: One data info per image, as :meth:`CocoDataset.load_data_list`.
        """
        self.drop_counts = defaultdict(list)
        data = self._load_json()
        check_coco_structure(data, self.ann_file, require_annotations=not self.test_mode)
        self.coco = self.COCOAPI()
        self.coco.dataset = data
        self.coco.createIndex()
        self.coco.img_ann_map, self.coco.cat_img_map = self.coco.imgToAnns, self.coco.catToImgs
        self.cat_ids = self._select_categories(data['categories'])
        self.cat2label = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
        self.cat_img_map = copy.deepcopy(self.coco.cat_img_map)
        self._known_cat_ids = {cat['id'] for cat in data['categories']}
        img_ids = set(self.coco.get_img_ids())
        for ann in data['annotations']:
            if ann['image_id'] not in img_ids:
                self.drop_counts['unknown_image'].append(ann['id'])

        data_list = []
        for img_id in self.coco.get_img_ids():
            raw_img_info = self.coco.load_imgs([img_id])[0]
            raw_img_info['img_id'] = img_id
            raw_ann_info = self.coco.load_anns(self.coco.get_ann_ids(img_ids=[img_id]))
            data_list.append(self.parse_data_info(
                dict(raw_ann_info=raw_ann_info, raw_img_info=raw_img_info)))
        del self.coco
        data_list = self._check_image_files(data_list)
        self._log_report(data_list, data['categories'])
        return data_list

    def _check_bbox(self, bbox: list, width: float, height: float
                    ) -> tuple[list[float] | None, str | None]:
        """Validate one COCO ``[x, y, w, h]`` box against its image.

        Returns:
            tuple: ``(xyxy box or None if dropped, reason or None)``; a kept box may come with
            the reason ``'clipped'``.
        """
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            return None, 'non_finite_bbox'
        if w <= 0 or h <= 0:
            return None, 'non_positive_size'
        box = [x, y, x + w, y + h]
        clipped = [max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            return None, 'outside_image'
        if (clipped[2] - clipped[0] < self.min_bbox_size
                or clipped[3] - clipped[1] < self.min_bbox_size):
            return None, 'too_small'
        return clipped, ('clipped' if clipped != box else None)

    def parse_data_info(self, raw_data_info: dict) -> dict:
        """Parse one image and its annotations, dropping/clipping invalid boxes.

        Args:
            raw_data_info: ``raw_img_info`` (COCO image entry plus ``img_id``) and
                ``raw_ann_info`` (its COCO annotations).

        Returns:
            dict: ``img_path``, ``img_id``, ``seg_map_path``, ``height``, ``width`` and
            ``instances`` (``bbox`` xyxy, ``bbox_label``, ``ignore_flag``, optional ``mask``).
        """
        img_info = raw_data_info['raw_img_info']
        file_name = img_info['file_name']
        seg_map_path = None
        if self.data_prefix.get('seg', None):
            seg_map_path = osp.join(self.data_prefix['seg'],
                                    file_name.rsplit('.', 1)[0] + self.seg_map_suffix)
        data_info = dict(img_path=osp.join(self.data_prefix['img'], file_name),
                         img_id=img_info['img_id'], seg_map_path=seg_map_path,
                         height=img_info['height'], width=img_info['width'])
        if self.return_classes:
            data_info.update(text=self.metainfo['classes'], caption_prompt=self.caption_prompt,
                             custom_entities=True)
        instances = []
        for ann in raw_data_info['raw_ann_info']:
            reason = None
            if ann['category_id'] not in self.cat2label:
                known = ann['category_id'] in self._known_cat_ids
                reason = 'unselected_category' if known else 'unknown_category'
            elif ann.get('ignore', False):
                reason = 'ignore_flag'
            else:
                height, width = img_info['height'], img_info['width']
                mask_problem = _segmentation_problem(ann.get('segmentation'), height, width)
                raw_bbox = ann.get('bbox')
                if raw_bbox is None and mask_problem is None:
                    raw_bbox = _mask_extent(ann['segmentation'], height, width)
                    self.drop_counts['bbox_from_mask'].append((ann['id'], img_info['img_id']))
                if raw_bbox is None:  # an unusable segmentation and no box
                    reason = 'bad_segmentation'
                elif self.require_masks and mask_problem is not None:
                    reason = mask_problem
                else:
                    bbox, reason = self._check_bbox(raw_bbox, width, height)
            if reason is not None:
                entry = (ann['id'], img_info['img_id']) if reason in _MASK_REASONS else ann['id']
                self.drop_counts[reason].append(entry)
            if reason not in (None, 'clipped'):
                continue
            crowd = bool(ann.get('iscrowd', False))
            if crowd:
                self.drop_counts['crowd'].append(ann['id'])
            instance = dict(bbox=bbox, bbox_label=self.cat2label[ann['category_id']],
                            ignore_flag=int(crowd))
            if ann.get('segmentation', None):
                instance['mask'] = ann['segmentation']
            instances.append(instance)
        data_info['instances'] = instances
        return data_info

    # ------------------------------------------------------------------ checks and report

    def _check_image_files(self, data_list: list[dict]) -> list[dict]:
        """Apply ``on_missing_image`` to images whose file does not exist (local paths)."""
        if not self.check_image_files or self.backend_args is not None:
            return data_list
        missing = [info for info in data_list
                   if '://' not in info['img_path'] and not osp.isfile(info['img_path'])]
        if not missing:
            return data_list
        examples = [info['img_path'] for info in missing[:self.max_examples]]
        msg = (f'{self.ann_file}: {len(missing)} of {len(data_list)} image files do not exist '
               f'(data_prefix.img={self.data_prefix["img"]!r}), e.g. {examples}')
        if self.on_missing_image == 'raise':
            raise FileNotFoundError(
                f"{msg}; fix the paths or set the dataset's on_missing_image='drop' to train "
                'without them')
        print_log(f'{msg}; these images are dropped (on_missing_image="drop")',
                  logger='current', level=logging.WARNING)
        missing_ids = {id(info) for info in missing}
        return [info for info in data_list if id(info) not in missing_ids]

    def _log_report(self, data_list: list[dict], categories: list[dict]) -> None:
        """Log one line per drop reason, empty classes, and a dataset summary."""
        for reason, ann_ids in self.drop_counts.items():
            what, level = DROP_REASONS[reason]
            if reason in _MASK_REASONS:  # (annotation id, image id) pairs
                examples = ', '.join(f'{a} (image {i})' for a, i in ann_ids[:self.max_examples])
            else:
                examples = str(ann_ids[:self.max_examples])
            print_log(f'{self.ann_file}: {len(ann_ids)} annotation(s) {what} (e.g. annotation '
                      f'ids {examples})', logger='current', level=level)
        counts, num_ignored = [0] * len(self.cat_ids), 0
        for info in data_list:
            for inst in info['instances']:
                counts[inst['bbox_label']] += 1
                num_ignored += inst['ignore_flag']
        empty = [name for name, n in zip(self.metainfo['classes'], counts) if n == 0]
        if empty and not self.test_mode:
            print_log(f'{self.ann_file}: classes {empty} have no usable box in this file; the '
                      'model only sees them as negatives', logger='current',
                      level=logging.WARNING)
        num_empty = sum(1 for info in data_list if not info['instances'])
        print_log(f'{self.ann_file}: {len(data_list)} images ({num_empty} without boxes), '
                  f'{sum(counts)} boxes ({num_ignored} ignored) in {len(self.cat_ids)} classes',
                  logger='current')

    def filter_data(self) -> list[dict]:
        """Apply ``filter_cfg`` (``filter_empty_gt``, ``min_size``) and log what it removes.

        Unlike mmdet, an image counts as empty when none of its boxes survived validation
        (mmdet looks at the raw category index, so an image whose only box was dropped is kept
        by ``filter_empty_gt``).

        Returns:
            list[dict]: The kept data infos.
        """
        if self.test_mode or self.filter_cfg is None:
            return self.data_list
        filter_empty_gt = self.filter_cfg.get('filter_empty_gt', False)
        min_size = self.filter_cfg.get('min_size', 0)
        kept, num_empty, num_small = [], 0, 0
        for info in self.data_list:
            if filter_empty_gt and not any(not i['ignore_flag'] for i in info['instances']):
                num_empty += 1
            elif min(info['width'], info['height']) < min_size:
                num_small += 1
            else:
                kept.append(info)
        if num_empty or num_small:
            print_log(f'{self.ann_file}: filter_cfg removed {num_empty} image(s) without '
                      f'boxes (filter_empty_gt) and {num_small} smaller than min_size='
                      f'{min_size}; {len(kept)} images remain', logger='current')
        return kept
