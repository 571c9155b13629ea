"""Parity of the Co-DINO ViT path (EVA-02-style ViT, SFP neck, layer-wise lr decay) with the
official code's own numbers on its tiny model.

``tests/data/official_vit_a/official_codino_vit_tiny.pth`` is the official tiny checkpoint (ViT
of 4 blocks, 128 channels, heads of 64, window 4 in blocks 0 and 2, global blocks 1 and 3, SFP of
64 channels, the tiny Co-DINO heads); it goes through our converter (its 6 stored rotary tables
are dropped: the model computes them) and loads strictly into
``tests/configs/co_dino_vit_tiny.py``.
``official_codino_vit.pt`` (made by ``tools/misc/make_parity_fixture.py`` from
``shared/reference/official_vit_a``) holds the 2-image batch (token map 16x20) and what the
official code computed on it. The attention runs with explicit logits, as the official
``xattn=False``; the fused ``scaled_dot_product_attention`` path (our default) is checked against
it.
"""
import pytest
import torch
from conftest import ROOT, build_model, load_cfg
from test_official_parity import _data_samples, _missing_twins

from projects.codetr.converters import convert_state_dict, detect_layout
from projects.codetr.converters.co_deformable_detr import (
    convert_key,
    expected_spec,
    load_official_checkpoint,
)
from projects.codetr.converters.co_dino import rules_for_layout

FIXTURE = ROOT / 'tests' / 'data' / 'official_vit_a'
CONFIG = ROOT / 'tests' / 'configs' / 'co_dino_vit_tiny.py'


@pytest.fixture(scope='module')
def official():
    return torch.load(FIXTURE / 'official_codino_vit.pt', weights_only=True)


@pytest.fixture(scope='module')
def official_state():
    state, _ = load_official_checkpoint(FIXTURE / 'official_codino_vit_tiny.pth')
    return state


@pytest.fixture(scope='module')
def model(official_state):
    net = build_model(load_cfg(CONFIG))
    assert detect_layout(official_state) == 'co_dino_vit'
    result = convert_state_dict(official_state, expected_spec(net),
                                rules=rules_for_layout('co_dino_vit'))
    assert sorted(k for k, _ in result.dropped) == sorted(k for k in official_state if 'rope' in k)
    net.load_state_dict(result.state_dict, strict=True)
    for block in net.backbone.blocks:
        block.attn.use_sdpa = False
    return net.eval()


@pytest.fixture(autouse=True)
def reference_msda(monkeypatch):
    monkeypatch.setenv('CODETR_DISABLE_FAST_MSDA', '1')


def _fused(model, on: bool) -> None:
    for block in model.backbone.blocks:
        block.attn.use_sdpa = on


def test_backbone_and_neck_maps(model, official):
    img = official['inputs']['img']
    with torch.no_grad():
        feat = model.backbone(img)[0]
        maps = model.neck([feat])
        _fused(model, True)
        try:
            fused = model.backbone(img)[0]
        finally:
            _fused(model, False)
    assert feat.shape == official['backbone_out'].shape == (2, 128, 16, 20)
    torch.testing.assert_close(feat, official['backbone_out'], rtol=0, atol=1e-5)
    for ours, ref, stride in zip(maps, official['neck_outs'], (4, 8, 16, 32, 64)):
        assert ours.shape[-2:] == (256 // stride, 320 // stride)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused, official['backbone_out'], rtol=0, atol=1e-5)


def test_rotary_tables(model, official):
    rope = official['rope']
    for (h, w), cos_key, sin_key in (((4, 4), 'window_cos', 'window_sin'),
                                     (tuple(rope['global_hw']), 'global_cos', 'global_sin')):
        cos, sin = model.backbone.rope(h, w, torch.device('cpu'))
        assert torch.equal(cos, rope[cos_key]) and torch.equal(sin, rope[sin_key])


def test_last_decoder_layer(model, official):
    inputs = official['inputs']
    with torch.no_grad():
        cls, boxes = model._forward(inputs['img'], _data_samples(inputs))
    torch.testing.assert_close(cls[-1], official['last_cls_scores'], rtol=0, atol=1e-5)
    torch.testing.assert_close(boxes[-1], official['last_bbox_preds'], rtol=0, atol=1e-5)


@pytest.mark.parametrize('eval_module,key', [('detr', 'detr'), ('one-stage', 'one_stage'),
                                             ('two-stage', 'two_stage')])
def test_official_detections(model, official, eval_module, key):
    """Every official top-20 detection of each evaluation path has a twin, and ours theirs."""
    inputs = official['inputs']
    model.eval_module = eval_module
    try:
        with torch.no_grad():
            results = model.predict(inputs['img'], _data_samples(inputs), rescale=False)
    finally:
        model.eval_module = 'detr'
    ref = official['detections'][key]
    for i, res in enumerate(results):
        missing = _missing_twins(ref['det_bboxes'][i], ref['det_labels'][i], res.pred_instances)
        assert not missing, f'{eval_module}, image {i}: {missing[:5]}'


def test_training_losses(model, official):
    inputs = official['inputs']
    model.train()
    try:
        torch.manual_seed(0)
        losses = model.loss(inputs['img'], _data_samples(inputs))
    finally:
        model.eval()
    ref = official['train_losses_float']
    assert set(losses) == set(ref)
    for key in official['seed_independent_keys']:
        value = losses[key]
        ours = float(sum(v.sum() for v in value) if isinstance(value, list) else value.sum())
        assert ours == pytest.approx(ref[key], rel=1e-5), key


def test_layer_decay_groups(model, official):
    """The config's optimiser: lr scale and weight decay of every parameter equal the official
    LayerDecayOptimizerConstructor's (names mapped by the converter)."""
    from mmengine.optim import build_optim_wrapper
    cfg = load_cfg(CONFIG)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    ours = {}
    for group in wrapper.optimizer.param_groups:
        for name in group['param_names']:
            ours[name] = (group['lr'] / 5e-5, group['weight_decay'])
    rules = rules_for_layout('co_dino_vit')
    expected = {convert_key(name, rules=rules)[0]: value
                for name, value in official['layer_decay'].items()}
    assert set(ours) == set(expected)
    for name, (scale, decay) in expected.items():
        assert ours[name][0] == pytest.approx(scale, rel=1e-12), name
        assert ours[name][1] == decay, name
    assert len(wrapper.optimizer.param_groups) == 12  # layer_{0..5}_{decay,no_decay}
    assert cfg.optim_wrapper.paramwise_cfg == dict(num_layers=4, layer_decay_rate=0.8)


def test_key_listing(model, official_state):
    """Our keys = the official ones without the rotary tables, same shapes."""
    rules = rules_for_layout('co_dino_vit')
    expected = {convert_key(k, rules=rules)[0]: tuple(v.shape)
                for k, v in official_state.items() if 'rope' not in k}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_converter_cli_with_another_class_count(official_state, tmp_path):
    """An Objects365-style file (365 classes in every class layer) converts against the
    config's model with --num-classes 365; its converted weights fine-tune with load_from
    (class layers of another shape stay at their initialisation)."""
    from tools.model_converters import official_to_mmdet3 as tool
    state = {}
    for key, value in official_state.items():
        if value.ndim >= 1 and value.shape[0] == 80 and ('cls' in key or 'label_embedding' in key
                                                         or 'fc_cls' in key):
            value = torch.cat([value, value[:1].expand(285, *value.shape[1:])])
        state[key] = value
    state['roi_head.0.bbox_head.fc_cls.weight'] = torch.zeros(366, 128)
    state['roi_head.0.bbox_head.fc_cls.bias'] = torch.zeros(366)
    state['roi_head.0.bbox_head.fc_reg.weight'] = torch.zeros(365 * 4, 128)
    state['roi_head.0.bbox_head.fc_reg.bias'] = torch.zeros(365 * 4)
    src, dst = tmp_path / 'o365.pth', tmp_path / 'ours.pth'
    torch.save(state, src)
    assert tool.main([str(src), str(dst), '--config', str(CONFIG)]) == 1  # 80-class model
    assert tool.main([str(src), str(dst), '--config', str(CONFIG), '--num-classes', '365']) == 0
    from mmengine.runner import load_checkpoint
    net = build_model(load_cfg(CONFIG))
    load_checkpoint(net, str(dst), strict=False)  # as load_from: class layers skipped
    assert torch.equal(net.backbone.pos_embed, state['backbone.pos_embed'])
