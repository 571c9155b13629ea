"""CoMultiScaleDeformableAttention: mmcv's module, with the fast CPU kernel on CPU."""
import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention

from projects.codetr.ops import ms_deform_attn
from projects.codetr.ops.ms_deform_attn import CoMultiScaleDeformableAttention

SHAPES = torch.tensor([[8, 6], [4, 3], [2, 2]])
START = torch.tensor([0, 48, 60])


def _pair(batch_first=True):
    torch.manual_seed(0)
    kwargs = dict(embed_dims=32, num_heads=4, num_levels=3, num_points=2, dropout=0.0,
                  batch_first=batch_first)
    ours, theirs = CoMultiScaleDeformableAttention(**kwargs), MultiScaleDeformableAttention(
        **kwargs)
    with torch.no_grad():  # non-trivial weights everywhere (init zeroes attention_weights)
        for p in theirs.parameters():
            p.normal_(0, 0.2)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _inputs(ref_dim, batch_first=True):
    g = torch.Generator().manual_seed(1)
    query = torch.randn(2, 9, 32, generator=g)
    value = torch.randn(2, 64, 32, generator=g)
    ref = torch.rand(2, 9, 3, ref_dim, generator=g)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[1, 40:48] = True
    if not batch_first:
        query, value = query.transpose(0, 1), value.transpose(0, 1)
    return query, dict(value=value, query_pos=torch.randn_like(query),
                       key_padding_mask=mask, reference_points=ref, spatial_shapes=SHAPES,
                       level_start_index=START)


@pytest.mark.parametrize('ref_dim', [2, 4])
@pytest.mark.parametrize('batch_first', [True, False])
def test_reference_kernel_is_bit_identical_to_mmcv(monkeypatch, ref_dim, batch_first):
    monkeypatch.setenv('CODETR_DISABLE_FAST_MSDA', '1')
    ours, theirs = _pair(batch_first)
    query, kwargs = _inputs(ref_dim, batch_first)
    q1, q2 = query.clone().requires_grad_(), query.clone().requires_grad_()
    out1, out2 = ours(q1, **kwargs), theirs(q2, **kwargs)
    assert torch.equal(out1, out2)
    out1.square().sum().backward()
    out2.square().sum().backward()
    assert torch.equal(q1.grad, q2.grad)
    for (name, p1), p2 in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p1.grad, p2.grad), name


@pytest.mark.parametrize('ref_dim', [2, 4])
def test_fast_kernel_is_used_on_cpu_and_agrees(monkeypatch, ref_dim):
    monkeypatch.delenv('CODETR_DISABLE_FAST_MSDA', raising=False)
    calls = []
    fast = ms_deform_attn.multi_scale_deformable_attn_cpu

    def counting(*args):
        calls.append(args[0].shape)
        return fast(*args)

    monkeypatch.setattr(ms_deform_attn, 'multi_scale_deformable_attn_cpu', counting)
    ours, theirs = _pair()
    query, kwargs = _inputs(ref_dim)
    out = ours(query, **kwargs)
    assert calls == [torch.Size([2, 64, 4, 8])]
    torch.testing.assert_close(out, theirs(query, **kwargs), rtol=0, atol=1e-5)
    ours.double()
    ours(query.double(), **{k: v.double() if v.is_floating_point() else v
                            for k, v in kwargs.items()})
    assert len(calls) == 2  # float64 is supported
    monkeypatch.setenv('CODETR_DISABLE_FAST_MSDA', '1')
    ours.float()(query, **kwargs)
    assert len(calls) == 2


def test_bad_spatial_shapes_are_named():
    ours, _ = _pair()
    query, kwargs = _inputs(2)
    kwargs['spatial_shapes'] = torch.tensor([[8, 6], [4, 3], [2, 3]])
    with pytest.raises(ValueError, match='spatial_shapes'):
        ours(query, **kwargs)


def test_our_models_build_our_attention():
    from conftest import build_model
    model = build_model()
    attn = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert attn and all(type(m) is CoMultiScaleDeformableAttention for m in attn)
    assert len(attn) == 4  # 2 encoder + 2 decoder layers of the tiny model


@pytest.mark.parametrize('per_point', [False, True])
def test_export_formulation_matches_mmcv_reference(per_point):
    """Both arrangements used while exporting to ONNX (per level; per level and point)
    compute mmcv's grid_sample reference up to summation order (non-square levels, batch
    of 2)."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    from projects.codetr.ops.ms_deform_attn import multi_scale_deformable_attn_onnx
    g = torch.Generator().manual_seed(2)
    value = torch.randn(2, 64, 4, 8, generator=g)
    # some points outside [0, 1]: the zero padding must agree too
    locations = torch.rand(2, 9, 4, 3, 2, 2, generator=g) * 1.2 - 0.1
    weights = torch.rand(2, 9, 4, 3, 2, generator=g).softmax(-1)
    ours = multi_scale_deformable_attn_onnx(value, SHAPES, START, locations, weights,
                                            per_point=per_point)
    ref = multi_scale_deformable_attn_pytorch(value, SHAPES, locations, weights)
    assert ours.shape == ref.shape == (2, 9, 32)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize('ref_dim', [2, 4])
def test_inference_path_is_bit_identical_to_mmcv(monkeypatch, ref_dim):
    """Without gradients the point locations are computed in one pass (addcdiv); the
    output still equals mmcv's module bit for bit."""
    monkeypatch.setenv('CODETR_DISABLE_FAST_MSDA', '1')
    ours, theirs = _pair()
    ours.one_pass_locations = True
    query, kwargs = _inputs(ref_dim)
    calls, addcdiv = [], torch.addcdiv
    monkeypatch.setattr(torch, 'addcdiv', lambda *a: calls.append(1) or addcdiv(*a))
    with torch.no_grad():
        assert torch.equal(ours(query, **kwargs), theirs(query, **kwargs))
    assert calls == ([1] if ref_dim == 2 else [])
