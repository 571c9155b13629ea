"""Parity of the mask variant A (Mask R-CNN's FCN mask head in Co-Deformable-DETR's auxiliary
RoI head) with the official code's own numbers on its tiny model.

``tests/data/official_masks_a/official_codeform_mask.pt`` (made by
``tools/misc/make_parity_fixture.py`` from ``shared/reference/official_masks_a``) holds the
mask head's weights, the ground-truth masks of the 2-image batch of ``official_parity_a``, the
official ``eval_module='two-stage'`` detections with their pasted masks (cropped to their
extent), the 28x28 mask logits of each detection's label and the training losses. The official
checkpoint (``official_parity_a``'s weights plus the mask head) goes through our converter and
loads strictly into ``tests/configs/co_deformable_detr_mask_tiny.py``. mmcv's reference
deformable attention, as the official run.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, build_model, load_cfg
from test_official_parity import FIXTURE as BOX_FIXTURE
from test_official_parity import _data_samples

from projects.codetr.converters.co_deformable_detr import (
    convert_state_dict,
    expected_spec,
    load_official_checkpoint,
)

FIXTURE = Path(__file__).resolve().parents[1] / 'data' / 'official_masks_a'
CONFIG = ROOT / 'tests' / 'configs' / 'co_deformable_detr_mask_tiny.py'
SCORE_TOL, BOX_TOL, MASK_IOU = 1e-4, 0.01, 0.99


@pytest.fixture(scope='module')
def official():
    ref = torch.load(FIXTURE / 'official_codeform_mask.pt', weights_only=True)
    ref['inputs'] = torch.load(BOX_FIXTURE / 'official_outputs.pt', weights_only=True)['inputs']
    return ref


@pytest.fixture(scope='module')
def model(official):
    net = build_model(load_cfg(CONFIG))
    state, _ = load_official_checkpoint(BOX_FIXTURE / 'official_tiny_perturbed.pth')
    state.update(official['mask_state'])  # = the official mask-variant checkpoint
    net.load_state_dict(convert_state_dict(state, expected_spec(net)).state_dict, strict=True)
    return net.eval()


@pytest.fixture(autouse=True)
def reference_msda(monkeypatch):
    monkeypatch.setenv('CODETR_DISABLE_FAST_MSDA', '1')


def _unpack(packed: torch.Tensor, shape) -> np.ndarray:
    count = int(np.prod(shape))
    return np.unpackbits(packed.numpy(), count=count).reshape(shape).astype(bool)


def official_masks(image: dict) -> np.ndarray:
    """The official pasted masks (N, H, W) of one image, from their cropped extents."""
    h, w = image['masks_shape']
    masks = np.zeros((len(image['det_labels']), h, w), bool)
    for i, (extent, crop) in enumerate(zip(image['mask_extents'].tolist(),
                                           image['mask_crops'])):
        y0, x0, y1, x1 = extent
        if y1 > y0:
            masks[i, y0:y1, x0:x1] = _unpack(crop, (y1 - y0, x1 - x0))
    return masks


def _samples(official, with_masks=False):
    from mmdet.structures.mask import BitmapMasks
    samples = _data_samples(official['inputs'])
    for sample, gt in zip(samples, official['gt_masks']):
        if with_masks:
            masks = _unpack(gt['packed'], gt['shape']).astype(np.uint8)
            sample.gt_instances.masks = BitmapMasks(masks, *gt['shape'][1:])
    return samples


def _predict(model, official, samples=None):
    model.eval_module = 'two-stage'
    try:
        with torch.no_grad():
            results = model.predict(official['inputs']['img'],
                                    samples or _samples(official), rescale=True)
    finally:
        model.eval_module = 'detr'
    return [r.pred_instances for r in results]


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def test_every_official_detection_has_a_twin_with_its_mask(model, official):
    for i, (ours, ref) in enumerate(zip(_predict(model, official), official['per_image'])):
        h, w = ref['masks_shape']
        assert ours.masks.dtype == torch.bool and tuple(ours.masks.shape[1:]) == (h, w)
        assert len(ours) == len(ref['det_labels'])
        ref_masks, ours_masks = official_masks(ref), ours.masks.numpy()
        used = set()
        for j, (det, label) in enumerate(zip(ref['det_bboxes'], ref['det_labels'])):
            twins = ((ours.labels == label) & ((ours.scores - det[4]).abs() <= SCORE_TOL)
                     & ((ours.bboxes - det[:4]).abs().amax(-1) <= BOX_TOL)).nonzero()
            ious = {int(k): _mask_iou(ours_masks[k], ref_masks[j]) for k in twins.flatten()}
            best = max(ious, key=ious.get, default=None)
            assert best is not None, f'image {i}: official detection {j} has no twin'
            assert ious[best] >= MASK_IOU, (i, j, ious[best])
            used.add(best)
        assert len(used) == len(ours), f'image {i}: detections of ours without a twin'
        # masks are the pasted 28x28 logits thresholded at 0.5, the mask score is the box score
        assert int(ours.masks.sum()) == int(ref['mask_areas'].sum())


def test_mask_logits_match(model, official):
    """The label channel of the 28x28 logits of each official detection (its box as RoI)."""
    from mmdet.structures.bbox import bbox2roi
    samples = _samples(official)
    with torch.no_grad():
        feats = model.extract_feat(official['inputs']['img'])
        maps = model.query_head.forward_encoder_maps(feats, samples)
        for i, ref in enumerate(official['per_image']):
            rois = bbox2roi([ref['det_bboxes'][:, :4]])
            logits = model.roi_head[0]._mask_forward([m[i:i + 1] for m in maps],
                                                     rois)['mask_preds']
            ours = logits[torch.arange(len(rois)), ref['det_labels']][:, None]
            expected = ref['mask_logits_28_label']
            err = (ours - expected).abs() / expected.abs().clamp(min=1.0)
            assert float(err.max()) <= 1e-4, (i, float(err.max()))


def test_training_losses_match(model, official):
    """Every loss the official code's two seeds agree on, ``loss_mask0`` among them."""
    model.train()
    try:
        torch.manual_seed(0)
        losses = model.loss(official['inputs']['img'], _samples(official, with_masks=True))
    finally:
        model.eval()
    ref = official['train_losses_float']
    assert 'loss_mask0' in official['seed_independent_keys']
    for key in official['seed_independent_keys']:
        value = losses[key]
        ours = float(sum(v.sum() for v in value) if isinstance(value, list) else value.sum())
        assert ours == pytest.approx(ref[key], rel=1e-5), key


def test_batch_of_two_equals_two_batches_of_one(model, official):
    together = _predict(model, official)
    inputs = official['inputs']
    for i in range(2):
        one = dict(inputs, img=inputs['img'][i:i + 1], img_metas=inputs['img_metas'][i:i + 1],
                   gt_bboxes=inputs['gt_bboxes'][i:i + 1], gt_labels=inputs['gt_labels'][i:i + 1])
        alone = _predict(model, dict(official, inputs=one),
                         samples=_data_samples(one))[0]
        torch.testing.assert_close(alone.scores, together[i].scores, rtol=0, atol=1e-5)
        assert torch.equal(alone.masks, together[i].masks)


def test_segm_from_a_path_without_masks_names_the_key(model, official):
    """The query head ('detr') makes boxes only: a segm evaluation of it stops, naming
    model.eval_module."""
    from projects.codetr.evaluation import CheckedCocoMetric
    metric = CheckedCocoMetric(metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=tuple(str(i) for i in range(80)))
    with torch.no_grad():
        results = model.predict(official['inputs']['img'], _samples(official), rescale=True)
    with pytest.raises(ValueError, match="model.eval_module='two-stage'"):
        metric.process({}, [r.to_dict() for r in results])


def test_converter_cli_on_the_official_mask_checkpoint(official, tmp_path, capsys):
    """The official file (box weights + FCN mask head) converts through the CLI and loads
    strictly; without --config a mask checkpoint is checked against the mask config."""
    from mmengine.runner import load_checkpoint

    from tools.model_converters import official_to_mmdet3 as tool
    state, _ = load_official_checkpoint(BOX_FIXTURE / 'official_tiny_perturbed.pth')
    state.update(official['mask_state'])
    src, dst = tmp_path / 'official_mask.pth', tmp_path / 'ours.pth'
    torch.save(dict(state_dict=state, meta={}), src)
    assert tool.main([str(src), str(dst), '--config', str(CONFIG)]) == 0
    net = build_model(load_cfg(CONFIG))
    load_checkpoint(net, str(dst), strict=True)
    assert torch.equal(net.roi_head[0].mask_head.conv_logits.weight,
                       official['mask_state']['roi_head.0.mask_head.conv_logits.weight'])
    assert tool.default_config('co_deformable_detr', list(state), False) == tool.MASK_CONFIG
    assert tool.default_config('co_deformable_detr', [k for k in state if 'mask' not in k],
                               False) == tool.FULL_CONFIG


def test_infer_tool_writes_and_draws_masks(model, official, tmp_path):
    """tools/infer.py on the mask model (eval_module='two-stage'): masks as COCO RLE in
    detections.json, one per kept detection, at the image size; the drawing is written."""
    import cv2
    from pycocotools import mask as mask_utils

    from tools import infer
    ckpt = tmp_path / 'mask_tiny.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    image = official['inputs']['img'][1, :, :96, :128].permute(1, 2, 0).numpy()
    path = tmp_path / 'image.png'
    cv2.imwrite(str(path), np.clip(image * 58 + 115, 0, 255).astype(np.uint8))
    out = infer.main([str(path), str(CONFIG), str(ckpt), '--out-dir', str(tmp_path / 'o'),
                      '--score-thr', '0', '--cfg-options', 'model.eval_module=two-stage'])
    record = out['images'][0]
    assert len(record['masks']) == len(record['scores']) > 0
    decoded = mask_utils.decode([dict(r, counts=r['counts'].encode()) for r in record['masks']])
    assert decoded.shape == (96, 128, len(record['scores']))
    saved = (tmp_path / 'o' / 'detections.json').read_text()
    assert '"counts"' in saved and (tmp_path / 'o' / 'image.png').is_file()
