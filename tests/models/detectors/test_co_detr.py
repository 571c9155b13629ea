"""CoDETR detector: loss keys, invariants, aux gradients, inference paths, config errors."""
import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import BASELINE_CFG, R50_CFG, TINY_CFG, build_model, load_cfg, make_batch

REFERENCE = Path(__file__).resolve().parents[2] / 'data'  # copy of ../shared/reference
SHAPES = [(96, 128), (112, 96)]
ONE_GT = [[(10., 12., 60., 70., 3)], [(30., 20., 80., 90., 7)]]
NO_GT = [[], []]


def expected_loss_keys(num_dec_layers, num_aux=2):
    """The official Co-Deformable-DETR loss keys (reference/README.md)."""
    keys = {'enc_loss_cls', 'enc_loss_bbox', 'enc_loss_iou', 'loss_rpn_cls', 'loss_rpn_bbox',
            'loss_cls0', 'acc0', 'loss_bbox0', 'loss_cls1', 'loss_bbox1', 'loss_centerness1'}
    for suffix in [''] + [f'_aux{k}' for k in range(num_aux)]:
        for name in ('cls', 'bbox', 'iou'):
            keys.add(f'loss_{name}{suffix}')
            keys.update(f'd{i}.loss_{name}{suffix}' for i in range(num_dec_layers - 1))
    return keys


def scalar(v):
    return sum(scalar(x) for x in v) if isinstance(v, (list, tuple)) else float(v)


@pytest.fixture(scope='module')
def tiny():
    return build_model(TINY_CFG)


def test_r50_loss_keys_and_parameter_count():
    """The mission config: the 65 official loss keys and 65,129,894 parameters."""
    model = build_model(R50_CFG)
    assert sum(p.numel() for p in model.parameters()) == 65_129_894
    inputs, samples = make_batch(model, ONE_GT, [(128, 128), (128, 128)])
    losses = model.loss(inputs, samples)
    assert set(losses) == expected_loss_keys(6)
    assert len(losses) == 65


def test_r50_state_dict_shapes_match_official_listing():
    """Same tensors as the official checkpoint, up to names (per module group)."""
    listing = REFERENCE / 'official_keys_co_deformable_detr_r50.txt'
    official = {}
    for line in listing.read_text().splitlines():
        key, shape, _ = line.split('\t')
        group = key.split('.')[0]
        official.setdefault(group, []).append(math.prod(eval(shape)))
    ours = {}
    model = build_model(R50_CFG)
    for key, value in model.state_dict().items():
        ours.setdefault(key.split('.')[0], []).append(value.numel())
    official = {k: sum(v) for k, v in official.items()}
    ours = {k: sum(v) for k, v in ours.items()}
    assert ours == official


def test_empty_gt_invariants(tiny):
    inputs, samples = make_batch(tiny, NO_GT, SHAPES)
    losses = tiny.loss(inputs, samples)
    for key, value in losses.items():
        v = scalar(value)
        assert math.isfinite(v), key
        if 'acc' in key:
            continue
        if 'cls' in key:
            assert v > 0, key
        else:  # bbox, iou, centerness
            assert v == 0, key


def test_one_gt_all_losses_positive(tiny):
    inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
    losses = tiny.loss(inputs, samples)
    assert set(losses) == expected_loss_keys(2)
    for key, value in losses.items():
        v = scalar(value)
        assert math.isfinite(v), (key, v)
        assert v > 0 or key == 'acc0', (key, v)  # acc0 is an accuracy, not a loss


def test_aux_losses_train_the_encoder(tiny):
    inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
    tiny.zero_grad()
    losses = tiny.loss(inputs, samples)
    aux = sum(scalar_tensor(v) for k, v in losses.items() if '_aux' in k)
    aux.backward()
    enc_grad = sum(p.grad.abs().sum() for p in tiny.query_head.encoder.parameters()
                   if p.grad is not None)
    assert enc_grad > 0
    for k in range(2):  # each head's query projection is trained by its own group
        assert tiny.query_head.aux_pos_trans_fc[k].weight.grad.abs().sum() > 0
        assert tiny.query_head.pos_feats_trans[k].weight.grad.abs().sum() > 0
    assert tiny.query_head.head_pos_embed.weight.grad.abs().sum() > 0
    # the main-branch-only parameters get no gradient from the aux queries
    assert tiny.query_head.query_embedding.weight.grad is None or \
        tiny.query_head.query_embedding.weight.grad.abs().sum() == 0


def scalar_tensor(v):
    return sum(v) if isinstance(v, (list, tuple)) else v


def _hook_counter(modules):
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1))
               for head in modules for m in head.modules()]
    return calls, handles


def test_detr_predict_skips_aux_heads_and_matches_baseline(tiny):
    tiny.eval()
    inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
    calls, handles = _hook_counter([tiny.rpn_head, tiny.roi_head, tiny.bbox_head])
    with torch.no_grad():
        results = tiny.predict(inputs, copy.deepcopy(samples))
    for h in handles:
        h.remove()
    assert calls == []
    assert len(results) == 2 and results[0].pred_instances.bboxes.shape == (100, 4)

    cfg = load_cfg(TINY_CFG)
    base_cfg = load_cfg(BASELINE_CFG)
    base_model = copy.deepcopy(cfg.model)
    for key in ('rpn_head', 'roi_head', 'bbox_head'):
        base_model[key] = base_cfg.model[key]
    base_model.query_head.num_co_heads = 0
    base_model.train_cfg = base_model.train_cfg[:1]
    base_model.test_cfg = base_model.test_cfg[:1]
    cfg.model = base_model
    baseline = build_model(cfg, seed=1)
    state = {k: v for k, v in tiny.state_dict().items()
             if k.split('.')[0] == 'backbone' or k.split('.')[0] == 'neck' or
             (k.startswith('query_head.') and 'aux_' not in k and 'pos_feats' not in k
              and 'head_pos_embed' not in k)}
    baseline.load_state_dict(state, strict=True)
    baseline.eval()
    with torch.no_grad():
        base_results = baseline.predict(inputs, copy.deepcopy(samples))
    for ours, ref in zip(results, base_results):
        torch.testing.assert_close(ours.pred_instances.bboxes, ref.pred_instances.bboxes)
        torch.testing.assert_close(ours.pred_instances.scores, ref.pred_instances.scores)
    tiny.train()


@pytest.mark.parametrize('eval_module', ['one-stage', 'two-stage'])
def test_aux_head_predict(tiny, eval_module):
    tiny.eval()
    tiny.eval_module = eval_module
    try:
        inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
        with torch.no_grad():
            results = tiny.predict(inputs, samples)
    finally:
        tiny.eval_module = 'detr'
        tiny.train()
    from mmdet.structures import DetDataSample
    for res, (h, w) in zip(results, SHAPES):
        assert isinstance(res, DetDataSample)
        pred = res.pred_instances
        n = len(pred)
        assert 0 < n <= 100
        assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n, )
        assert pred.labels.min() >= 0 and pred.labels.max() < 80
        assert (pred.bboxes[:, 2:] >= pred.bboxes[:, :2]).all()
        assert pred.bboxes[:, 0::2].max() <= w and pred.bboxes[:, 1::2].max() <= h


def test_tensor_forward(tiny):
    tiny.eval()
    with torch.no_grad():
        cls, boxes = tiny._forward(torch.randn(1, 3, 64, 96))
    tiny.train()
    assert cls.shape == (2, 1, 50, 80) and boxes.shape == (2, 1, 50, 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()


@pytest.mark.parametrize('mutate,message', [
    (lambda m: m.query_head.update(num_co_heads=3), 'num_co_heads=3'),
    (lambda m: m.update(train_cfg=m.train_cfg[:2]), 'train_cfg has 2 entries'),
    (lambda m: m.update(test_cfg=m.test_cfg + m.test_cfg[:1]), 'test_cfg has 4 entries'),
    (lambda m: m.bbox_head[0].update(num_classes=20), 'num_classes disagree'),
    (lambda m: m.update(eval_module='rpn'), "eval_module='rpn'"),
])
def test_config_errors_are_clear(mutate, message):
    cfg = load_cfg(TINY_CFG)
    mutate(cfg.model)
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_toggles_train(tiny):
    """Baseline (no aux heads, with_pos_coord left at its default True), with_pos_coord=False,
    ATSS only, RoI only, zero padding: losses and every gradient finite."""
    cfg = load_cfg(TINY_CFG)
    inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
    variants = {
        'baseline': dict(rpn_head=None, roi_head=None, bbox_head=None,
                         train_cfg=[cfg.model.train_cfg[0]], test_cfg=[cfg.model.test_cfg[0]]),
        'zero_padding': dict(),
        'no_pos_coord': dict(with_pos_coord=False),
        'atss_only': dict(rpn_head=None, roi_head=None,
                          train_cfg=[cfg.model.train_cfg[0], cfg.model.train_cfg[2]],
                          test_cfg=[cfg.model.test_cfg[0], cfg.model.test_cfg[2]]),
        'roi_only': dict(bbox_head=None, train_cfg=cfg.model.train_cfg[:2],
                         test_cfg=cfg.model.test_cfg[:2]),
    }
    for name, overrides in variants.items():
        model_cfg = copy.deepcopy(cfg)
        model_cfg.model.update(overrides)
        if name in ('atss_only', 'roi_only'):
            model_cfg.model.query_head.num_co_heads = 1
        elif name == 'baseline':
            model_cfg.model.query_head.num_co_heads = 0
        elif name == 'zero_padding':
            model_cfg.model.query_head.use_zero_padding = True
        model = build_model(model_cfg)
        losses = model.loss(inputs, samples)
        aux_keys = {k for k in losses if '_aux' in k}
        if name == 'no_pos_coord':
            assert not aux_keys and 'loss_cls1' in losses
        elif name == 'baseline':
            assert set(losses) == expected_loss_keys(2) - {
                k for k in expected_loss_keys(2)
                if '_aux' in k or k[-1].isdigit() or 'rpn' in k}
        elif name == 'zero_padding':
            assert {k for k in aux_keys if not k.startswith('d')} == {
                f'loss_{n}_aux{k}' for n in ('cls', 'bbox', 'iou') for k in range(2)}
        else:
            assert {k for k in aux_keys if not k.startswith('d')} == {
                'loss_cls_aux0', 'loss_bbox_aux0', 'loss_iou_aux0'}
        total = sum(scalar_tensor(v) for k, v in losses.items() if 'loss' in k)
        total.backward()
        assert math.isfinite(float(total)), name
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name


def test_zero_padding_changes_only_the_aux_query_losses():
    """Same weights, batch and random draws: `use_zero_padding` leaves the query head's and
    the aux heads' own losses as they are and changes the aux-query losses (padding rows are
    zero boxes without loss instead of negatives with a background target). The two images
    have different numbers of positives, so the one with fewer is padded."""
    cfg = load_cfg(TINY_CFG)
    losses = {}
    for zero in (False, True):
        model_cfg = copy.deepcopy(cfg)
        model_cfg.model.query_head.use_zero_padding = zero
        model = build_model(model_cfg, seed=0)
        inputs, samples = make_batch(
            model, [[(10., 12., 60., 70., 3)], [(5., 5., 40., 40., 1), (50., 40., 90., 100., 2),
                                                (20., 60., 70., 110., 5)]], SHAPES)
        torch.manual_seed(3)
        losses[zero] = {k: scalar(v) for k, v in model.loss(inputs, samples).items()}
    assert losses[False].keys() == losses[True].keys()
    aux = {k for k in losses[False] if '_aux' in k}
    for key in set(losses[False]) - aux:
        assert losses[False][key] == losses[True][key], key
    changed = {k for k in aux if not math.isclose(losses[False][k], losses[True][k],
                                                  rel_tol=1e-6)}
    assert {f'loss_cls_aux{k}' for k in range(2)} <= changed, changed
