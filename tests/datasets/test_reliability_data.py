"""Bad data: every defect either trains (with what was changed counted and logged once) or
stops at once with a message naming the file / annotation and the problem.

Covers projects/codetr/datasets/coco.py (CheckedCocoDataset),
projects/codetr/datasets/transforms/loading.py (CheckedLoadImageFromFile) and odd inputs
through the Co-DETR model (tiny images, extreme aspect ratios, more objects than
max_pos_coords, batches without any box).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, build_model, load_cfg, make_batch
from reliability_fixtures import logs_fixture, mmdet_scope_fixture  # noqa: F401

from projects.codetr.datasets.coco import AnnotationFileError, CheckedCocoDataset
from projects.codetr.datasets.transforms.loading import CheckedLoadImageFromFile, ImageLoadError
from tools.misc.generate_synthetic_coco import SYNTHETIC_CLASSES, generate_split

SYNTHETIC_CFG = ROOT / 'configs' / 'co_deformable_detr_synthetic.py'


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory) -> Path:
    """8 generated 64 px train images with their COCO file."""
    root = tmp_path_factory.mktemp('reliability_data')
    generate_split(root, 'train', 8, img_size=64, seed=0)
    return root


def _coco(root: Path) -> dict:
    return json.loads((root / 'annotations' / 'instances_train.json').read_text())


def _write(tmp_path: Path, data: dict | str, name: str = 'ann.json') -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _dataset(root: Path, ann_file: Path, pipeline: list | None = None,
             classes=SYNTHETIC_CLASSES, **kwargs) -> CheckedCocoDataset:
    kwargs.setdefault('filter_cfg', dict(filter_empty_gt=False))
    return CheckedCocoDataset(
        data_root=str(root), ann_file=str(ann_file), data_prefix=dict(img='train/'),
        metainfo=dict(classes=tuple(classes)), pipeline=pipeline or [], **kwargs)


def _messages(records, needle: str) -> list[str]:
    return [r.getMessage() for r in records if needle in r.getMessage()]


# ---------------------------------------------------------------- annotation contents


def test_defective_boxes_are_clipped_or_dropped_and_counted_once(coco_root, tmp_path, logs):
    data = _coco(coco_root)
    base = data['annotations'][0]
    cases = {  # annotation id -> (bbox, extra keys)
        1001: ([0, 0, 0, 5], {}), 1002: ([5, 5, 4, -1], {}),  # zero / negative size
        1003: ([60, -4, 20, 20], {}),  # partly outside: clipped to (60, 0, 64, 16)
        1004: ([100, 100, 5, 5], {}),  # wholly outside
        1005: ([math.nan, 1, 3, 3], {}), 1006: ([1, 1, math.inf, 3], {}),
        1007: ([3, 3, 0.5, 8], {}),  # narrower than min_bbox_size=1
        1008: ([3, 3, 8, 8], dict(iscrowd=1)), 1009: ([3, 3, 8, 8], dict(ignore=1)),
        1010: ([3, 3, 8, 8], dict(category_id=99)), 1011: ([3, 3, 8, 8], dict(image_id=777)),
    }
    for ann_id, (bbox, extra) in cases.items():
        data['annotations'].append({**base, 'id': ann_id, 'bbox': bbox, **extra})
    ann_file = _write(tmp_path, data)  # json writes NaN/Infinity literals, as some exporters do
    ds = _dataset(coco_root, ann_file)

    info = next(ds.get_data_info(i) for i in range(len(ds))
                if ds.get_data_info(i)['img_id'] == base['image_id'])
    own = [i for i in info['instances']]
    num_orig = sum(a['image_id'] == base['image_id'] for a in _coco(coco_root)['annotations'])
    assert len(own) == num_orig + 2  # + clipped + crowd
    assert [60.0, 0.0, 64.0, 16.0] in [i['bbox'] for i in own]
    assert [i['ignore_flag'] for i in own if i['bbox'] == [3.0, 3.0, 11.0, 11.0]] == [1]
    for inst in own:
        assert all(math.isfinite(v) for v in inst['bbox'])

    expected = {'1001, 1002': 'width or height <= 0', '1003': 'clipped',
                '1004': 'entirely outside', '1005, 1006': 'NaN/inf', '1007': 'min_bbox_size',
                '1008': 'iscrowd', '1009': "'ignore'", '1010': 'category_id',
                '1011': 'image_id'}
    for ids, reason in expected.items():
        found = _messages(logs, reason)
        assert len(found) == 1, (reason, found)  # one line per reason
        assert f'[{ids}]' in found[0] and str(ann_file) in found[0]
        assert f'{len(ids.split(","))} annotation(s)' in found[0]


def test_empty_images_are_kept_and_filtering_is_logged(coco_root, logs):
    ann_file = coco_root / 'annotations' / 'instances_train.json'
    num_empty = 8 - len({a['image_id'] for a in _coco(coco_root)['annotations']})
    assert num_empty >= 1
    ds = _dataset(coco_root, ann_file)
    assert len(ds) == 8
    assert sum(not ds.get_data_info(i)['instances'] for i in range(len(ds))) == num_empty
    assert _messages(logs, f'8 images ({num_empty} without boxes)')
    filtered = _dataset(coco_root, ann_file, filter_cfg=dict(filter_empty_gt=True))
    assert len(filtered) == 8 - num_empty
    assert _messages(logs, f'removed {num_empty} image(s) without boxes')


def test_noncontiguous_category_ids_keep_the_class_order(coco_root, tmp_path):
    data = _coco(coco_root)
    new_ids = [90, 3, 17, 5, 44, 12]  # neither contiguous nor sorted
    remap = {cat['id']: new for cat, new in zip(data['categories'], new_ids)}
    for cat in data['categories']:
        cat['id'] = remap[cat['id']]
    for ann in data['annotations']:
        ann['category_id'] = remap[ann['category_id']]
    ds = _dataset(coco_root, _write(tmp_path, data))
    original = _dataset(coco_root, coco_root / 'annotations' / 'instances_train.json')
    for i in range(len(ds)):
        assert ds.get_data_info(i)['instances'] == original.get_data_info(i)['instances']
    assert ds.cat_ids == new_ids


def test_class_without_annotations_trains_with_a_warning(coco_root, tmp_path, logs):
    data = _coco(coco_root)
    star = next(c['id'] for c in data['categories'] if c['name'] == 'star')
    data['annotations'] = [a for a in data['annotations'] if a['category_id'] != star]
    ds = _dataset(coco_root, _write(tmp_path, data))
    assert len(ds) == 8
    assert _messages(logs, "classes ['star'] have no usable box")


@pytest.mark.parametrize('classes, needle', [
    (SYNTHETIC_CLASSES[:5] + ('hexagon',), "classes ['hexagon']"),
    (SYNTHETIC_CLASSES[::-1], 'in the order of the file'),
])
def test_classes_must_match_the_file(coco_root, classes, needle):
    ann_file = coco_root / 'annotations' / 'instances_train.json'
    with pytest.raises(AnnotationFileError, match=re.escape(needle)) as err:
        _dataset(coco_root, ann_file, classes=classes)
    assert str(ann_file) in str(err.value)


def test_class_subset_drops_other_categories_with_a_count(coco_root, logs):
    ann_file = coco_root / 'annotations' / 'instances_train.json'
    ds = _dataset(coco_root, ann_file, classes=('ellipse', 'star'))
    labels = {i['bbox_label'] for k in range(len(ds)) for i in ds.get_data_info(k)['instances']}
    assert labels <= {0, 1}
    assert _messages(logs, 'category not in `classes`: dropped')


# ---------------------------------------------------------------- malformed files


def _mutations():
    def drop(key):
        return lambda d: d.pop(key)

    def ann(key, value):
        return lambda d: d['annotations'][1].__setitem__(key, value)

    def no_bbox(d):  # and no segmentation to take it from
        del d['annotations'][1]['bbox']
        d['annotations'][1].pop('segmentation', None)

    def dup_ann(d):
        d['annotations'][2]['id'] = d['annotations'][1]['id']

    return [
        ('truncated', None, 'not a valid JSON file'),
        ('list', lambda d: d['images'], 'expected a JSON object'),
        ('no_images', drop('images'), "missing top-level key(s) ['images']"),
        ('no_bbox', no_bbox, 'has no "bbox" key'),
        ('bbox_string', ann('bbox', '1,2,3,4'), "expected [x, y, width, height]"),
        ('bbox_three', ann('bbox', [1, 2, 3]), "expected [x, y, width, height]"),
        ('bbox_null', ann('bbox', [1, None, 3, 4]), "expected [x, y, width, height]"),
        ('dup_ann', dup_ann, 'duplicate annotation ids'),
        ('zero_width_image', lambda d: d['images'][0].__setitem__('width', 0),
         'expected positive numbers'),
    ]


@pytest.mark.parametrize('name, mutate, needle', _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_annotation_file_names_file_and_entry(coco_root, tmp_path, name, mutate,
                                                       needle):
    text = (coco_root / 'annotations' / 'instances_train.json').read_text()
    if mutate is None:
        content = text[:len(text) // 2]
    else:
        data = json.loads(text)
        content = json.dumps(mutate(data) if name == 'list' else (mutate(data), data)[1])
    ann_file = _write(tmp_path, content)
    with pytest.raises(AnnotationFileError) as err:
        _dataset(coco_root, ann_file)
    assert str(ann_file) in str(err.value) and needle in str(err.value)


LOAD_MASKS = [dict(type='LoadAnnotations', with_bbox=True, with_mask=True)]


def test_objects_without_usable_masks_are_dropped_when_masks_train(coco_root, tmp_path, logs):
    """With a mask head (the pipeline loads masks) an object without a usable segmentation is
    dropped like a bad box: counted, logged with its annotation and image ids. Without one the
    same file keeps the boxes."""
    data = _coco(coco_root)
    anns = [a for a in data['annotations'] if not a.get('iscrowd')]
    assert isinstance(anns[0]['segmentation'], dict)  # the generator writes RLE masks
    del anns[0]['segmentation']
    anns[1]['segmentation'] = [[1.0, 2.0, 3.0, 4.0]]  # a polygon of two points
    anns[2]['segmentation'] = dict(anns[2]['segmentation'], size=[1, 1])  # RLE of another size
    ann_file = _write(tmp_path, data)
    boxes_only = _dataset(coco_root, ann_file)
    with_masks = _dataset(coco_root, ann_file, pipeline=LOAD_MASKS)
    assert not boxes_only.require_masks and with_masks.require_masks
    count = lambda ds: sum(len(ds.get_data_info(i)['instances']) for i in range(len(ds)))  # noqa: E731
    assert count(boxes_only) - count(with_masks) == 3
    assert [a for a, _ in with_masks.drop_counts['no_segmentation']] == [anns[0]['id']]
    assert sorted(a for a, _ in with_masks.drop_counts['bad_segmentation']) == sorted(
        [anns[1]['id'], anns[2]['id']])
    text = '\n'.join(_messages(logs, 'segmentation'))
    assert f'{anns[0]["id"]} (image {anns[0]["image_id"]})' in text and str(ann_file) in text
    assert 'while the pipeline loads masks' in text


def test_objects_with_a_mask_but_no_bbox_get_the_masks_extent(coco_root, tmp_path, logs):
    from pycocotools import mask as mask_utils
    data = _coco(coco_root)
    anns = [a for a in data['annotations'] if not a.get('iscrowd')]
    rle, poly = anns[0], anns[1]
    expected_rle = [float(v) for v in mask_utils.toBbox(rle['segmentation'])]
    x, y, w, h = poly['bbox']
    poly['segmentation'] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    del rle['bbox'], poly['bbox']
    dataset = _dataset(coco_root, _write(tmp_path, data), pipeline=LOAD_MASKS)
    by_image = {}
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        by_image[info['img_id']] = [inst['bbox'] for inst in info['instances']]
    rx, ry, rw, rh = expected_rle
    assert [rx, ry, rx + rw, ry + rh] in by_image[rle['image_id']]
    assert [x, y, x + w, y + h] in by_image[poly['image_id']]
    assert sorted(a for a, _ in dataset.drop_counts['bbox_from_mask']) == sorted(
        [rle['id'], poly['id']])
    assert _messages(logs, 'it is taken from the extent of their "segmentation"')


def test_missing_annotation_file_is_named(coco_root, tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.json'):
        _dataset(coco_root, tmp_path / 'nope.json')


# ---------------------------------------------------------------- image files


def test_missing_image_file_stops_before_training_or_is_dropped(coco_root, tmp_path, logs):
    data = _coco(coco_root)
    data['images'][3]['file_name'] = 'missing.png'
    ann_file = _write(tmp_path, data)
    with pytest.raises(FileNotFoundError, match=r"1 of 8 image files do not exist.*missing\.png"):
        _dataset(coco_root, ann_file)
    ds = _dataset(coco_root, ann_file, on_missing_image='drop')
    assert len(ds) == 7 and _messages(logs, 'these images are dropped')


@pytest.fixture
def bad_images_root(coco_root, tmp_path) -> Path:
    """A copy of the data whose image 0 is truncated, 1 empty, 2 transposed (64x32 as 32x64)."""
    (tmp_path / 'train').mkdir()
    for src in (coco_root / 'train').iterdir():
        (tmp_path / 'train' / src.name).write_bytes(src.read_bytes())
    (tmp_path / 'annotations').mkdir()
    data = _coco(coco_root)
    names = [img['file_name'] for img in data['images']]
    png = (tmp_path / 'train' / names[0]).read_bytes()
    (tmp_path / 'train' / names[0]).write_bytes(png[:len(png) // 2])
    (tmp_path / 'train' / names[1]).write_bytes(b'')
    cv2.imwrite(str(tmp_path / 'train' / names[2]), np.zeros((64, 32, 3), np.uint8))
    data['images'][2].update(width=64, height=32)
    data['annotations'] = [a for a in data['annotations']
                           if a['image_id'] != data['images'][2]['id']]
    _write(tmp_path / 'annotations', data, 'instances_train.json')
    return tmp_path


@pytest.mark.parametrize('index, needle', [
    (0, 'cannot be decoded (truncated or not an image)'), (1, 'file is empty (0 bytes)'),
    (2, 'decoded size (h, w)=(64, 32) differs'),
])
def test_bad_image_file_is_named(bad_images_root, index, needle):
    ds = _dataset(bad_images_root, bad_images_root / 'annotations' / 'instances_train.json',
                  pipeline=[dict(type='CheckedLoadImageFromFile')])
    name = _coco(bad_images_root)['images'][index]['file_name']
    with pytest.raises(ImageLoadError) as err:
        ds[index]
    assert name in str(err.value) and needle in str(err.value)


def test_bad_image_skip_mode_draws_another_image_and_logs_once(bad_images_root, logs):
    ds = _dataset(bad_images_root, bad_images_root / 'annotations' / 'instances_train.json',
                  pipeline=[dict(type='CheckedLoadImageFromFile', on_error='skip')])
    for _ in range(2):
        out = ds[0]
        assert out['img_path'] != ds.get_data_info(0)['img_path']
    assert len(_messages(logs, 'skipped (on_error="skip")')) >= 1
    name = _coco(bad_images_root)['images'][0]['file_name']
    assert len(_messages(logs, name)) == 1  # once per file, however often it is drawn


def test_load_transform_refuses_silent_ignore_empty():
    with pytest.raises(ValueError, match='silently drop'):
        CheckedLoadImageFromFile(ignore_empty=True)


def test_crowd_boxes_become_ignored_instances(coco_root, tmp_path):
    data = _coco(coco_root)
    base = data['annotations'][0]
    data['annotations'].append({**base, 'id': 5000, 'bbox': [2, 2, 10, 10], 'iscrowd': 1})
    ds = _dataset(coco_root, _write(tmp_path, data), pipeline=[
        dict(type='CheckedLoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs')])
    idx = next(i for i in range(len(ds)) if ds.get_data_info(i)['img_id'] == base['image_id'])
    sample = ds[idx]['data_samples']
    assert sample.ignored_instances.bboxes.tensor.tolist() == [[2.0, 2.0, 12.0, 12.0]]
    assert [2.0, 2.0, 12.0, 12.0] not in sample.gt_instances.bboxes.tensor.tolist()


# ---------------------------------------------------------------- odd inputs through Co-DETR


@pytest.fixture(scope='module')
def synthetic_model():
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):  # module scope: before mmdet_scope
        model = build_model(load_cfg(SYNTHETIC_CFG))
    model.train()  # norm_eval: frozen BN statistics, as under the Runner
    return model


def _random_boxes(n: int, h: int, w: int, seed: int = 0) -> list[tuple]:
    g = np.random.default_rng(seed)
    x1, y1 = g.uniform(0, w - 2, n), g.uniform(0, h - 2, n)
    x2, y2 = np.minimum(w, x1 + g.uniform(1, w / 2, n)), np.minimum(h, y1 + g.uniform(1, h / 2, n))
    return [(a, b, c, d, int(k)) for a, b, c, d, k in
            zip(x1, y1, x2, y2, g.integers(0, len(SYNTHETIC_CLASSES), n))]


@pytest.mark.parametrize('boxes_per_image, shapes', [
    ([3, 0], [(24, 24), (24, 24)]),  # tiny images: 1x1 maps at strides 32..128
    ([3, 2], [(128, 16), (128, 16)]),  # 1:8
    ([2, 3], [(16, 128), (128, 16)]),  # 8:1 next to 1:8 in one padded batch
    ([400, 1], [(192, 192), (192, 192)]),  # more positives than max_pos_coords=300
    ([0, 0], [(64, 64), (64, 64)]),  # no box in the whole batch
], ids=['tiny24', 'tall1x8', 'wide8x1_mixed', 'many400', 'all_empty'])
def test_odd_inputs_give_finite_loss_and_gradients(synthetic_model, boxes_per_image, shapes,
                                                   monkeypatch):
    model = synthetic_model
    from projects.codetr.models.detectors import co_detr
    seen = []  # (max positives in an image, number of aux queries) per aux head

    def recording(positives, *args, **kwargs):
        out = co_detr_build(positives, *args, **kwargs)
        num_classes = args[1] if len(args) > 1 else kwargs['num_classes']
        is_pos = (positives.labels >= 0) & (positives.labels < num_classes)
        seen.append((int(is_pos.sum(1).max()), out.coords.size(1)))
        return out

    co_detr_build = co_detr.build_aux_query_targets
    monkeypatch.setattr(co_detr, 'build_aux_query_targets', recording)
    boxes = [_random_boxes(n, h, w, seed=i) for i, (n, (h, w)) in
             enumerate(zip(boxes_per_image, shapes))]
    inputs, samples = make_batch(model, boxes, shapes, num_classes=len(SYNTHETIC_CLASSES))
    model.zero_grad()
    loss, log_vars = model.parse_losses(model.loss(inputs, samples))
    assert all(math.isfinite(v) for v in log_vars.values()), log_vars
    loss.backward()
    bad = [n for n, p in model.named_parameters()
           if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad
    assert len(seen) == 2  # RoI head and ATSS head
    if boxes_per_image[0] == 400:  # more positives than max_pos_coords: subsampled to 300
        assert max(pos for pos, _ in seen) > 300 and max(n for _, n in seen) == 300
    if shapes[0] != (24, 24):  # see test_tiny_image_inference
        results = _predict(model, inputs, samples)
        assert all(torch.isfinite(r.pred_instances.bboxes).all() for r in results)


def _predict(model, inputs, samples):
    model.eval()
    try:
        with torch.no_grad():
            return model.predict(inputs, samples)
    finally:
        model.train()


def test_tiny_image_inference(synthetic_model):
    inputs, samples = make_batch(synthetic_model, [[(2, 2, 10, 10, 0)]], [(24, 24)],
                                 num_classes=len(SYNTHETIC_CLASSES))
    results = _predict(synthetic_model, inputs, samples)
    assert torch.isfinite(results[0].pred_instances.bboxes).all()
