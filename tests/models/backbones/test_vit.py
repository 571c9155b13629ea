"""The ViT-L backbone, SFP neck and layer-decay constructor against the spec's formulas
(``shared/DESIGN_VITL.md``), and the full-size ViT-L Co-DINO's sizes."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, build_model, load_cfg

from projects.codetr.models.backbones.vit import (
    ViT,
    apply_rope,
    resize_pos_embed,
    rope_table,
    window_partition,
    window_unpartition,
)


def test_rope_table_follows_the_spec_formula():
    """Token (r, c) of an Lh x Lw grid: channels 2j, 2j+1 of the first half hold
    (16 r / Lh) * 10000^(-j/16), of the second half (16 c / Lw) * 10000^(-j/16)."""
    lh, lw = 3, 5
    cos, sin = rope_table(lh, lw)
    assert cos.shape == sin.shape == (lh * lw, 64)
    for r in range(lh):
        for c in range(lw):
            n = r * lw + c
            for j in range(16):
                omega = 10000 ** (-j / 16)
                for ch, pos in ((2 * j, 16 * r / lh), (32 + 2 * j, 16 * c / lw)):
                    for k in (ch, ch + 1):
                        assert float(cos[n, k]) == pytest.approx(math.cos(pos * omega), abs=1e-6)
                        assert float(sin[n, k]) == pytest.approx(math.sin(pos * omega), abs=1e-6)


def test_rope_rotates_channel_pairs():
    """RoPE(x)[2k] = x[2k] cos - x[2k+1] sin, RoPE(x)[2k+1] = x[2k+1] cos + x[2k] sin: a
    rotation of each pair (norms kept; relative positions give the dot products)."""
    x = torch.randn(2, 3, 6, 64)
    cos, sin = rope_table(2, 3)
    y = apply_rope(x, cos, sin)
    even, odd = x[..., 0::2], x[..., 1::2]
    torch.testing.assert_close(y[..., 0::2], even * cos[:, 0::2] - odd * sin[:, 0::2])
    torch.testing.assert_close(y[..., 1::2], odd * cos[:, 1::2] + even * sin[:, 1::2])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_window_partition_pads_bottom_right_and_inverts():
    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.float32).reshape(2, 5, 7, 3)
    windows, padded = window_partition(x, 4)
    assert padded == (8, 8) and windows.shape == (2 * 2 * 2, 4, 4, 3)
    # window (image 0, row 1, col 1) holds rows 4..7, cols 4..7; rows >= 5 and cols >= 7 are 0
    w = windows[3]
    torch.testing.assert_close(w[0, :3], x[0, 4, 4:7])
    assert w[1:].abs().sum() == 0 and w[:, 3].abs().sum() == 0
    assert torch.equal(window_unpartition(windows, 4, padded, (5, 7)), x)


def test_position_table_resize():
    """The 1 + S*S table: cls slot dropped, the grid bicubically resized per axis."""
    table = torch.randn(1, 1 + 4 * 4, 8)
    grid = table[:, 1:].reshape(1, 4, 4, 8)
    assert torch.equal(resize_pos_embed(table, (4, 4)), grid)
    out = resize_pos_embed(table, (6, 3))
    ref = F.interpolate(grid.permute(0, 3, 1, 2), size=(6, 3), mode='bicubic',
                        align_corners=False).permute(0, 2, 3, 1)
    assert out.shape == (1, 6, 3, 8) and torch.equal(out, ref)


def _tiny_vit(**kwargs):
    torch.manual_seed(0)
    vit = ViT(embed_dim=128, depth=2, num_heads=2, patch_size=16, window_size=4,
              window_block_indexes=[0], pretrain_img_size=128, **kwargs)
    vit.init_weights()
    return vit


def test_tiny_vit_forward_backward_fused_and_checkpointed():
    """Fused attention = explicit logits; activation checkpointing gives the same output and
    gradients with the same state-dict keys."""
    x = torch.randn(2, 3, 96, 80, requires_grad=False)
    plain = _tiny_vit(use_sdpa=False)
    fused = _tiny_vit(use_sdpa=True)
    ckpt = _tiny_vit(use_sdpa=True, use_act_checkpoint=True)
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    outs = []
    for model in (plain, fused, ckpt):
        model.train()
        out = model(x)[0]
        assert out.shape == (2, 128, 6, 5)
        out.square().mean().backward()
        outs.append((out.detach(), model.blocks[1].attn.q_proj.weight.grad.clone()))
    for out, grad in outs[1:]:
        torch.testing.assert_close(out, outs[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, outs[0][1], rtol=1e-4, atol=1e-6)


def test_vit_refuses_other_head_dims_and_ignores_missing_window_blocks():
    with pytest.raises(ValueError, match='head dim 96/2 = 48'):
        ViT(embed_dim=96, depth=1, num_heads=2)
    with pytest.warns(UserWarning, match=r'\[24, 25\] >= depth 2'):
        vit = ViT(embed_dim=64, depth=2, num_heads=1, window_size=4,
                  window_block_indexes=[0, 24, 25])
    assert vit.window_block_indexes == [0]


@pytest.fixture(scope='module')
def vit_l():
    """configs/co_dino_5scale_vit_large_coco.py's model, built without init or forward."""
    from mmdet.registry import MODELS
    cfg = load_cfg(ROOT / 'configs' / 'co_dino_5scale_vit_large_coco.py')
    return MODELS.build(cfg.model)


def test_full_size_vit_l_co_dino_sizes(vit_l):
    """Backbone 304,238,528, SFP 23,995,904 and the whole detector 365,367,657 parameters
    (spec section 7); the backbone / neck keys of the spec's tables (19 per block, 42 in the
    neck; the spec's "21 per block" counts two more, but the official tiny checkpoint loads
    strictly with 19: tests/models/test_official_vit_parity.py)."""
    model = vit_l
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.backbone) == 304_238_528
    assert count(model.neck) == 23_995_904
    assert count(model) == 365_367_657
    keys = model.state_dict()
    block = {k[len('backbone.blocks.0.'):] for k in keys if k.startswith('backbone.blocks.0.')}
    assert block == {'norm1.weight', 'norm1.bias', 'attn.q_bias', 'attn.v_bias',
                     'attn.q_proj.weight', 'attn.k_proj.weight', 'attn.v_proj.weight',
                     'attn.proj.weight', 'attn.proj.bias', 'norm2.weight', 'norm2.bias',
                     'mlp.w1.weight', 'mlp.w1.bias', 'mlp.w2.weight', 'mlp.w2.bias',
                     'mlp.ffn_ln.weight', 'mlp.ffn_ln.bias', 'mlp.w3.weight', 'mlp.w3.bias'}
    assert sum(k.startswith('backbone.') for k in keys) == 24 * 19 + 5
    assert tuple(keys['backbone.pos_embed'].shape) == (1, 1025, 1024)
    assert tuple(keys['backbone.blocks.0.mlp.w1.weight'].shape) == (2730, 1024)
    assert sum(k.startswith('neck.') for k in keys) == 42
    assert tuple(keys['neck.p6.1.weight'].shape) == (1024, 1024, 3, 3)
    assert model.backbone.window_block_indexes == [i for i in range(24) if i % 4 != 3]


def test_converter_on_official_vit_l_layouts(vit_l, tmp_path):
    """An official ViT-L COCO state dict (our weights under the official names, with the
    window blocks' rotary buffers of the official module) and an LVIS-style one (global
    rotary buffers of use_lsj missing from some blocks, federated-loss buffers, EMA copies)
    convert, name what they drop and load strictly; the CLI takes a bare state dict (the
    released files are bare) and picks the ViT-L COCO config."""
    from projects.codetr.converters import (
        convert_state_dict,
        detect_layout,
        invert_state_dict,
        rules_for_layout,
    )
    from projects.codetr.converters.co_deformable_detr import expected_spec
    from tools.model_converters import official_to_mmdet3 as tool
    rules = rules_for_layout('co_dino_vit')
    ours = vit_l.state_dict()
    official = invert_state_dict(ours, rules)
    table = torch.zeros(576, 64)
    official['backbone.rope_win.freqs_cos'] = official['backbone.rope_win.freqs_sin'] = table
    for i in vit_l.backbone.window_block_indexes:
        for kind in ('cos', 'sin'):
            official[f'backbone.blocks.{i}.attn.rope.freqs_{kind}'] = table
    assert detect_layout(official) == 'co_dino_vit'
    spec = expected_spec(vit_l)
    result = convert_state_dict(official, spec, rules=rules)
    assert len(result.dropped) == 2 + 2 * 18 and result.state_dict.keys() == ours.keys()
    lvis = {k: v for k, v in official.items() if 'rope' not in k}
    lvis['backbone.rope_glb.freqs_cos'] = torch.zeros(9216, 64)
    lvis['query_head.loss_cls.fed_loss_weight'] = torch.ones(80)
    lvis['bbox_head.0.loss_cls.fed_loss_weight'] = torch.ones(80)
    lvis['ema_backbone_pos_embed'] = torch.zeros(1)
    result = convert_state_dict(lvis, spec, rules=rules)
    reasons = dict(result.dropped)
    assert 'federated loss' in reasons['query_head.loss_cls.fed_loss_weight']
    assert 'EMA copy' in reasons['ema_backbone_pos_embed']
    assert 'rotary table' in reasons['backbone.rope_glb.freqs_cos']
    vit_l.load_state_dict(result.state_dict, strict=True)
    src = tmp_path / 'official_vit_l.pth'
    torch.save(official, src)  # bare state dict
    assert tool.main([str(src), str(tmp_path / 'ours.pth')]) == 0
    assert tool.default_config('co_dino_vit', list(official), False, 80) == \
        tool.VIT_CONFIGS[(False, False)]
    assert tool.default_config('co_dino_vit', ['mask_head.x'], False, 1203) == \
        tool.VIT_CONFIGS[(True, True)]


def test_layer_decay_table_of_the_vit_l_config():
    """The lr of each ViT-L layer (spec section 4): patch/position embedding 0.8^25, block i
    0.8^(24 - i), everything after the blocks 1.0; no weight decay on 1-D and bias tensors."""
    from mmengine.optim import build_optim_wrapper
    cfg = load_cfg(ROOT / 'tests' / 'configs' / 'co_dino_vit_tiny.py')
    cfg.model.backbone.depth = 24
    cfg.model.backbone.window_block_indexes = [i for i in range(24) if i % 4 != 3]
    model = build_model(cfg)
    optim = dict(cfg.optim_wrapper, paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.8))
    wrapper = build_optim_wrapper(model, optim)
    lr = {n: (g['lr'], g['weight_decay']) for g in wrapper.optimizer.param_groups
          for n in g['param_names']}
    base = 5e-5
    assert lr['backbone.pos_embed'] == (pytest.approx(base * 0.8 ** 25), 0.01)
    assert lr['backbone.patch_embed.proj.bias'] == (pytest.approx(base * 0.8 ** 25), 0.0)
    assert lr['backbone.blocks.0.attn.q_proj.weight'][0] == pytest.approx(base * 0.8 ** 24)
    assert lr['backbone.blocks.11.mlp.w1.weight'][0] == pytest.approx(base * 0.8 ** 13)
    assert lr['backbone.blocks.23.attn.q_bias'] == (pytest.approx(base * 0.8), 0.0)
    assert lr['backbone.out_norm.weight'] == (pytest.approx(base), 0.0)
    assert lr['neck.p4.0.weight'] == (pytest.approx(base), 0.01)
    assert lr['query_head.level_embed'] == (pytest.approx(base), 0.01)
    assert optim['paramwise_cfg'] == dict(num_layers=24, layer_decay_rate=0.8)  # unchanged


def test_rope_cache_keeps_the_latest_sizes():
    vit = _tiny_vit()
    for size in range(1, 12):
        cos, _ = vit.rope(size, 2, torch.device('cpu'))
        assert cos.shape == (size * 2, 64)
    assert len(vit._rope_cache) == 8 and (11, 2, 'cpu') in vit._rope_cache
    assert torch.equal(vit.rope(11, 2, torch.device('cpu'))[0], rope_table(11, 2)[0])
