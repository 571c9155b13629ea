"""CoATSSHead and CoStandardRoIHead: losses plus the positives they hand over."""
import copy
import math

import pytest
import torch
from conftest import TINY_CFG, build_model, make_batch

SHAPES = [(96, 128), (112, 96)]
GTS = [[(10., 12., 60., 70., 3)], [(30., 20., 80., 90., 7), (5., 5., 40., 30., 1)]]


@pytest.fixture(scope='module')
def setup():
    model = build_model(TINY_CFG)
    inputs, samples = make_batch(model, GTS, SHAPES)
    with torch.no_grad():
        x = model.extract_feat(inputs)
        _, enc_maps = model.query_head.loss(x, samples)
    return model, enc_maps, samples


def total(v):
    return float(sum(v)) if isinstance(v, (list, tuple)) else float(v)


def test_atss_positives(setup):
    model, maps, samples = setup
    head = model.bbox_head[0]
    losses, pos = head.loss_and_positives(maps, samples)
    num_anchors = sum(m.shape[2] * m.shape[3] for m in maps)  # 1 anchor per location
    assert pos.coords.shape == (2, num_anchors, 4)
    assert pos.labels.shape == (2, num_anchors) and pos.feats.shape == (2, num_anchors, 64)
    assert all(math.isfinite(total(v)) and total(v) > 0 for v in losses.values())
    for i, sample in enumerate(samples):
        is_pos = pos.labels[i] < 80
        assert is_pos.any()
        gt = sample.gt_instances
        # every positive targets one of the GT boxes, with that box's label
        match = (pos.targets[i, is_pos, None] == gt.bboxes[None]).all(-1)  # (P, G)
        assert match.any(1).all()
        assert torch.equal(pos.labels[i, is_pos], gt.labels[match.float().argmax(1)])
        # positive anchors are centred inside their GT box (ATSS rule)
        centres = (pos.coords[i, is_pos, :2] + pos.coords[i, is_pos, 2:]) / 2
        boxes = gt.bboxes[match.float().argmax(1)]
        assert ((centres > boxes[:, :2]) & (centres < boxes[:, 2:])).all()
    # the feature of anchor n is the map feature at its location (level by level)
    lvl = maps[2]
    start = sum(m.shape[2] * m.shape[3] for m in maps[:2])
    y, x = 1, 2
    n = start + y * lvl.shape[3] + x
    torch.testing.assert_close(pos.feats[1, n], lvl[1, :, y, x])
    stride = 32
    centre = (pos.coords[1, n, :2] + pos.coords[1, n, 2:]) / 2
    torch.testing.assert_close(centre, torch.tensor([x * stride, y * stride], dtype=torch.float))


def test_atss_empty_gt(setup):
    model, maps, samples = setup
    empty = copy.deepcopy(samples)
    for s in empty:
        s.gt_instances = s.gt_instances[:0]
    losses, pos = model.bbox_head[0].loss_and_positives(maps, empty)
    assert total(losses['loss_cls']) > 0
    assert total(losses['loss_bbox']) == 0 and total(losses['loss_centerness']) == 0
    assert (pos.labels == 80).all()


def test_roi_positives(setup):
    model, maps, samples = setup
    torch.manual_seed(0)
    proposals = model.rpn_head.predict(maps, samples, rescale=False)
    losses, pos = model.roi_head[0].loss_and_positives(maps, proposals, samples)
    assert set(losses) == {'loss_cls', 'acc', 'loss_bbox'}
    bs, m, _ = pos.coords.shape
    assert bs == 2 and 0 < m <= 512 and pos.feats.shape == (2, m, 64)
    for i, sample in enumerate(samples):
        gt = sample.gt_instances
        is_pos = pos.labels[i] < 80
        # GTs are added as proposals: each GT box is a positive RoI of its own class
        for box, label in zip(gt.bboxes, gt.labels):
            hit = (pos.coords[i] == box).all(-1) & is_pos
            assert hit.any()
            assert (pos.labels[i, hit] == label).all()
            assert (pos.targets[i, hit] == box).all()
        # negatives carry no target box
        assert (pos.targets[i, ~is_pos] == 0).all()
    # RoI feature = RoIAlign feature averaged over the 7x7 grid
    from mmdet.structures.bbox import bbox2roi
    head = model.roi_head[0]
    rois = bbox2roi([pos.coords[0, :3]])
    feats = head.bbox_roi_extractor(maps[:4], rois).mean((2, 3))
    torch.testing.assert_close(pos.feats[0, :3], feats)


def test_atss_losses_equal_stock_mmdet_atss(setup):
    """CoATSSHead adds outputs, not math: same losses as mmdet's ATSSHead."""
    from conftest import load_cfg
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict
    model, maps, samples = setup
    cfg = load_cfg(TINY_CFG)
    head_cfg = ConfigDict(cfg.model.bbox_head[0], type='ATSSHead',
                          train_cfg=cfg.model.train_cfg[2], test_cfg=cfg.model.test_cfg[2])
    stock = MODELS.build(head_cfg)
    stock.load_state_dict(model.bbox_head[0].state_dict())
    ours, _ = model.bbox_head[0].loss_and_positives(maps, samples)
    ref = stock.loss(maps, samples)
    assert set(ours) == set(ref)
    for key in ref:
        assert total(ours[key]) == pytest.approx(total(ref[key]), rel=1e-6), key
