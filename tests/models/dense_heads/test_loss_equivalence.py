"""Deterministic losses of the query head vs an independent reference.

The forward of our model is checked against a re-implementation of the official
forward in ``test_equivalence.py``; here the encoder (two-stage) and Hungarian
decoder losses computed by the head from those outputs are recomputed with
scipy's assignment and hand-written focal / L1 / GIoU losses (official
constants: costs focal 2, L1 5 on cxcywh, GIoU 2; losses focal 2 (alpha 0.25,
gamma 2), L1 5, GIoU 2, averaged over the number of GT boxes).
"""
import pytest
import torch
from conftest import TINY_CFG, build_model, make_batch
from scipy.optimize import linear_sum_assignment

SHAPES = [(96, 128), (112, 96)]
GTS = [[(10., 12., 60., 70., 3), (50., 40., 120., 90., 7)], [(30., 20., 80., 90., 7)]]


def cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def giou(a, b):
    """Pairwise GIoU of xyxy boxes: (n, 4) x (m, 4) -> (n, m)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull


def focal_cost(logits, labels, alpha=0.25, gamma=2.0, eps=1e-12):
    p = logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return (pos - neg)[:, labels]


def focal_loss_sum(logits, targets, alpha=0.25, gamma=2.0):
    p = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (a_t * (1 - p_t).pow(gamma) * ce).sum()


def ref_hungarian_losses(cls, boxes, gts, img_shapes):
    """(focal, L1, GIoU) of one layer: cls (bs, nq, C), boxes (bs, nq, 4) normalised cxcywh."""
    num_classes = cls.size(-1)
    num_gts = sum(len(g) for g in gts)
    loss_cls = loss_l1 = loss_giou = 0.0
    for i, (g, (h, w)) in enumerate(zip(gts, img_shapes)):
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        targets_cls = torch.zeros_like(cls[i])
        if g:
            gt_xyxy = torch.tensor([b[:4] for b in g])
            gt_labels = torch.tensor([b[4] for b in g])
            gt_norm = gt_xyxy / scale
            gt_cxcywh = torch.cat([(gt_norm[:, :2] + gt_norm[:, 2:]) / 2,
                                   gt_norm[:, 2:] - gt_norm[:, :2]], -1)
            pred_xyxy = cxcywh_to_xyxy(boxes[i]) * scale
            cost = (2.0 * focal_cost(cls[i], gt_labels)
                    + 5.0 * torch.cdist(boxes[i], gt_cxcywh, p=1)
                    - 2.0 * giou(pred_xyxy, gt_xyxy))
            rows, cols = linear_sum_assignment(cost.detach().numpy())
            rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
            targets_cls[rows, gt_labels[cols]] = 1.0
            loss_l1 += (boxes[i, rows] - gt_cxcywh[cols]).abs().sum()
            loss_giou += (1 - giou(pred_xyxy[rows], gt_xyxy[cols]).diagonal()).sum()
        loss_cls += focal_loss_sum(cls[i], targets_cls)
    assert cls.size(-1) == num_classes
    denom = max(num_gts, 1)
    return 2.0 * loss_cls / denom, 5.0 * loss_l1 / denom, 2.0 * loss_giou / denom


@pytest.fixture(scope='module')
def head_outputs():
    model = build_model(TINY_CFG, seed=3)
    inputs, samples = make_batch(model, GTS, SHAPES)
    with torch.no_grad():
        x = model.extract_feat(inputs)
        out = model.query_head.forward_transformer(x, samples)
        all_cls, all_boxes = model.query_head(out['hidden_states'], out['references'])
        losses = model.query_head.loss_by_feat(
            all_cls, all_boxes, out['enc_outputs_class'], out['enc_outputs_coord'],
            [s.gt_instances for s in samples], [s.metainfo for s in samples])
    return all_cls, all_boxes, out, losses


def test_decoder_hungarian_losses_match_reference(head_outputs):
    all_cls, all_boxes, _, losses = head_outputs
    for layer in range(all_cls.size(0)):
        prefix = '' if layer == all_cls.size(0) - 1 else f'd{layer}.'
        ref = ref_hungarian_losses(all_cls[layer], all_boxes[layer], GTS, SHAPES)
        for name, value in zip(('cls', 'bbox', 'iou'), ref):
            assert float(losses[f'{prefix}loss_{name}']) == pytest.approx(
                float(value), rel=1e-4, abs=1e-5), (layer, name)


def test_encoder_proposal_losses_match_reference(head_outputs):
    """Two-stage loss: every GT relabelled to class 0, matched over all encoder tokens."""
    _, _, out, losses = head_outputs
    class_agnostic = [[(*b[:4], 0) for b in g] for g in GTS]
    ref = ref_hungarian_losses(out['enc_outputs_class'], out['enc_outputs_coord'],
                               class_agnostic, SHAPES)
    for name, value in zip(('cls', 'bbox', 'iou'), ref):
        assert float(losses[f'enc_loss_{name}']) == pytest.approx(
            float(value), rel=1e-4, abs=1e-5), name
