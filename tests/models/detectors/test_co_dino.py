"""CoDETR with the Co-DINO query head: sizes, loss keys, invariants, inference paths,
converted official checkpoints, activation checkpointing and pinned values."""
import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import CO_DINO_R50_CFG, CO_DINO_TINY_CFG, build_model, load_cfg, make_batch

REFERENCE = Path(__file__).resolve().parents[2] / 'data'  # copy of ../shared/reference
SHAPES = [(96, 128), (112, 96)]
ONE_GT = [[(10., 12., 60., 70., 3)], [(30., 20., 80., 90., 7)]]
NO_GT = [[], []]


def expected_loss_keys(num_dec_layers, num_aux=2, with_pos_coord=True):
    """Spec: 3 + 6L + 8 + 3LK keys (83 for R50 with K=2, 35 for the tiny model)."""
    keys = {'enc_loss_cls', 'enc_loss_bbox', 'enc_loss_iou', 'loss_rpn_cls', 'loss_rpn_bbox',
            'loss_cls0', 'acc0', 'loss_bbox0', 'loss_cls1', 'loss_bbox1', 'loss_centerness1'}
    groups = [('', '')] + [('dn_', '')]
    if with_pos_coord:
        groups += [('', f'_aux{k}') for k in range(num_aux)]
    for prefix, suffix in groups:
        for name in ('cls', 'bbox', 'iou'):
            keys.add(f'{prefix}loss_{name}{suffix}')
            keys.update(f'd{i}.{prefix}loss_{name}{suffix}' for i in range(num_dec_layers - 1))
    return keys


def total(v):
    return sum(total(x) for x in v) if isinstance(v, (list, tuple)) else v


@pytest.fixture(scope='module')
def tiny():
    return build_model(CO_DINO_TINY_CFG)


def read_listing(name):
    path = REFERENCE / name
    out = {}
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split('\t')
        out[key] = (tuple(eval(shape)), getattr(torch, dtype))
    return out


def random_state(listing, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(shape, generator=g) if dtype.is_floating_point
                else torch.randint(0, 100, shape, generator=g, dtype=dtype))
            for k, (shape, dtype) in listing.items()}


def test_tiny_model_matches_the_official_tiny_model(tiny):
    """292 keys / 1,804,069 parameters; a converted official tiny checkpoint loads strictly,
    every tensor where the spec's key table puts it."""
    from projects.codetr.converters import convert_state_dict, detect_layout, rules_for_layout
    from projects.codetr.converters.co_deformable_detr import expected_spec
    assert len(tiny.state_dict()) == 292
    assert sum(p.numel() for p in tiny.parameters()) == 1_804_069
    official = random_state(read_listing('official_keys_co_dino_tiny.txt'))
    assert detect_layout(official) == 'co_dino'
    result = convert_state_dict(official, expected_spec(tiny), rules=rules_for_layout('co_dino'))
    model = copy.deepcopy(tiny)
    model.load_state_dict(result.state_dict, strict=True)
    ours = model.state_dict()
    qh = 'query_head.transformer'
    for src, dst in [
            (f'{qh}.level_embeds', 'query_head.level_embed'),
            (f'{qh}.query_embed.weight', 'query_head.query_embedding.weight'),
            (f'{qh}.decoder.ref_point_head.2.weight',
             'query_head.decoder.ref_point_head.layers.1.weight'),
            (f'{qh}.enc_output_norm.bias', 'query_head.memory_trans_norm.bias'),
            (f'{qh}.aux_pos_trans.1.weight', 'query_head.aux_pos_trans_fc.1.weight'),
            (f'{qh}.decoder.layers.1.attentions.1.sampling_offsets.weight',
             'query_head.decoder.layers.1.cross_attn.sampling_offsets.weight'),
            ('query_head.label_embedding.weight',
             'query_head.dn_query_generator.label_embedding.weight')]:
        assert torch.equal(ours[dst], official[src]), (src, dst)


def test_r50_sizes_and_loss_keys():
    """65,204,005 parameters (as official and the mmdet 3.x port), 674 keys, 83 loss keys
    (47 with with_pos_coord=False)."""
    model = build_model(CO_DINO_R50_CFG)
    assert sum(p.numel() for p in model.parameters()) == 65_204_005
    assert len(model.state_dict()) == 674
    inputs, samples = make_batch(model, ONE_GT, [(128, 128), (128, 128)])
    losses = model.loss(inputs, samples)
    assert set(losses) == expected_loss_keys(6) and len(losses) == 83
    model.with_pos_coord = False
    losses = model.loss(inputs, samples)
    assert set(losses) == expected_loss_keys(6, with_pos_coord=False) and len(losses) == 47


@pytest.mark.parametrize('name', ['official_keys_co_dino_r50.txt',
                                  'mmdet3_port_keys_co_dino_r50.txt'])
def test_r50_checkpoints_of_both_sources_convert_strictly(name):
    from projects.codetr.converters import convert_state_dict, detect_layout, rules_for_layout
    from projects.codetr.converters.co_deformable_detr import expected_spec
    listing = read_listing(name)
    state = {k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in listing.items()}
    layout = detect_layout(state)
    assert layout == ('co_dino' if name.startswith('official') else 'co_dino_mmdet3_port')
    cfg = load_cfg(CO_DINO_R50_CFG)
    cfg.model.backbone.init_cfg = None
    from mmdet.registry import MODELS
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    spec = expected_spec(model)
    result = convert_state_dict(state, spec, rules=rules_for_layout(layout))
    assert set(result.state_dict) == set(spec) and not result.dropped
    inference = convert_state_dict(state, None, inference_only=True,
                                   rules=rules_for_layout(layout))
    dropped = {k.split('.')[0] for k, _ in inference.dropped}
    assert dropped == {'rpn_head', 'roi_head', 'bbox_head', 'query_head'}
    assert all('aux_pos_trans' in k for k, _ in inference.dropped if k.startswith('query'))


def test_loss_keys_and_one_gt_losses(tiny):
    inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
    losses = tiny.loss(inputs, samples)
    assert set(losses) == expected_loss_keys(2) and len(losses) == 35
    for key, value in losses.items():
        v = float(total(value))
        assert math.isfinite(v), key
        assert v > 0 or key == 'acc0', (key, v)


def test_empty_gt_losses(tiny):
    inputs, samples = make_batch(tiny, NO_GT, SHAPES)
    losses = tiny.loss(inputs, samples)
    assert set(losses) == expected_loss_keys(2)
    for key, value in losses.items():
        v = float(total(value))
        assert math.isfinite(v), key
        if key.startswith(('dn_', 'd0.dn_')) or 'bbox' in key or 'iou' in key or \
                'centerness' in key:
            assert v == 0, key  # no GT: no denoising queries, no box targets
        elif 'cls' in key and 'aux' not in key:
            assert v > 0, key
    # the label embedding stays in the graph without denoising queries (distributed runs)
    tiny.zero_grad()
    sum(total(v) for k, v in losses.items() if 'loss' in k).backward()
    assert tiny.query_head.dn_query_generator.label_embedding.weight.grad is not None


def test_aux_losses_train_the_encoder_and_projections(tiny):
    inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
    tiny.zero_grad()
    losses = tiny.loss(inputs, samples)
    sum(total(v) for k, v in losses.items() if '_aux' in k).backward()
    assert sum(p.grad.abs().sum() for p in tiny.query_head.encoder.parameters()
               if p.grad is not None) > 0
    for k in range(2):
        assert tiny.query_head.aux_pos_trans_fc[k].weight.grad.abs().sum() > 0
    grad = tiny.query_head.query_embedding.weight.grad  # main-branch queries only
    assert grad is None or grad.abs().sum() == 0


def _baseline_of(model_cfg):
    base = copy.deepcopy(model_cfg)
    base.update(rpn_head=None, roi_head=None, bbox_head=None,
                train_cfg=base.train_cfg[:1], test_cfg=base.test_cfg[:1])
    base.query_head.num_co_heads = 0
    return base


def test_predict_skips_aux_heads_and_matches_the_aux_free_baseline(tiny):
    tiny.eval()
    inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1))
               for head in (tiny.rpn_head, tiny.roi_head, tiny.bbox_head)
               for m in head.modules()]
    try:
        with torch.no_grad():
            results = tiny.predict(inputs, copy.deepcopy(samples))
    finally:
        for h in handles:
            h.remove()
        tiny.train()
    assert calls == []
    cfg = load_cfg(CO_DINO_TINY_CFG)
    cfg.model = _baseline_of(cfg.model)
    baseline = build_model(cfg, seed=1)
    state = {k: v for k, v in tiny.state_dict().items()
             if k.split('.')[0] in ('backbone', 'neck') or
             (k.startswith('query_head.') and 'aux_pos_trans' not in k)}
    baseline.load_state_dict(state, strict=True)
    baseline.eval()
    with torch.no_grad():
        base_results = baseline.predict(inputs, copy.deepcopy(samples))
    for ours, ref in zip(results, base_results):
        assert len(ours.pred_instances) > 0
        torch.testing.assert_close(ours.pred_instances.bboxes, ref.pred_instances.bboxes)
        torch.testing.assert_close(ours.pred_instances.scores, ref.pred_instances.scores)


def test_tensor_forward_and_aux_head_inference(tiny):
    tiny.eval()
    try:
        with torch.no_grad():
            cls, boxes = tiny._forward(torch.randn(1, 3, 96, 128))
            assert cls.shape == (2, 1, 50, 80) and boxes.shape == (2, 1, 50, 4)
            inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
            for module in ('one-stage', 'two-stage'):
                tiny.eval_module = module
                results = tiny.predict(inputs, copy.deepcopy(samples))
                assert all(len(r.pred_instances) > 0 for r in results)
    finally:
        tiny.eval_module = 'detr'
        tiny.train()


def test_without_attn_mask_the_canvas_is_the_image(tiny):
    """LSJ recipes: img_shape becomes the batch input shape (no padding mask)."""
    inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
    tiny.with_attn_mask = False
    try:
        tiny.loss(inputs, samples)
    finally:
        tiny.with_attn_mask = True
    for sample in samples:
        assert tuple(sample.img_shape) == tuple(sample.batch_input_shape) == (112, 128)


def test_encoder_activation_checkpointing_is_exact(tiny):
    """with_cp recomputes instead of storing: same losses and gradients."""
    inputs, samples = make_batch(tiny, ONE_GT, SHAPES)
    grads = []
    for with_cp in (0, 2):
        model = copy.deepcopy(tiny)
        model.query_head.encoder.with_cp = with_cp
        torch.manual_seed(0)
        losses = model.loss(inputs, copy.deepcopy(samples))
        sum(total(v) for k, v in losses.items() if 'loss' in k).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_with_cp_is_validated():
    cfg = load_cfg(CO_DINO_TINY_CFG)
    cfg.model.query_head.encoder.with_cp = 3
    with pytest.raises(ValueError, match='with_cp=3'):
        build_model(cfg)
    cfg.model.query_head.encoder.with_cp = 0
    cfg.model.query_head.dn_cfg.num_classes = 80
    with pytest.raises(ValueError, match='dn_cfg must not set'):
        build_model(cfg)


def test_export_refuses_the_soft_nms_path(tiny):
    from projects.codetr.deploy import CoDETRDeployModel
    with pytest.raises(ValueError, match='soft-NMS test path'):
        CoDETRDeployModel(tiny)
