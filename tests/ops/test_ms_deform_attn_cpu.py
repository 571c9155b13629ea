"""Tests for projects/codetr/ops/ms_deform_attn_cpu.py (fast CPU deformable attention)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as mmcv_msda

ROOT = Path(__file__).resolve().parents[2]
MODULE_PATH = ROOT / "projects" / "codetr" / "ops" / "ms_deform_attn_cpu.py"


def _load_module() -> ModuleType:
    """Imports the module, by file path if the ``projects.codetr`` package does not import."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("projects.codetr.ops.ms_deform_attn_cpu")
    except Exception:  # the package __init__ may be mid-edit; the file itself is standalone
        spec = importlib.util.spec_from_file_location("_codetr_ms_deform_attn_cpu", MODULE_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


msda_cpu = _load_module()
fast_msda = msda_cpu.multi_scale_deformable_attn_cpu
ORIGINAL_ATTR = "_codetr_fast_msda_original"


def _mmcv_original():
    """mmcv's pure-PyTorch fallback, even if a dispatcher is currently installed."""
    fn = mmcv_msda.multi_scale_deformable_attn_pytorch
    return getattr(fn, ORIGINAL_ATTR, fn)


def _inputs(
    bs: int = 2,
    shapes: tuple[tuple[int, int], ...] = ((12, 10), (6, 5), (3, 3), (1, 2)),
    num_heads: int = 3,
    head_dims: int = 8,
    num_points: int = 3,
    num_queries: int = 17,
    low: float = -0.25,
    high: float = 1.25,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random MSDA inputs; locations in ``[low, high]`` so that some points fall off the map."""
    gen = torch.Generator().manual_seed(seed)
    num_keys = sum(h * w for h, w in shapes)
    num_levels = len(shapes)
    value = torch.randn(bs, num_keys, num_heads, head_dims, generator=gen, dtype=dtype)
    loc_shape = (bs, num_queries, num_heads, num_levels, num_points, 2)
    locations = torch.rand(loc_shape, generator=gen, dtype=dtype) * (high - low) + low
    logits = torch.randn(bs, num_queries, num_heads, num_levels * num_points, generator=gen)
    weights = logits.softmax(-1).to(dtype).view(loc_shape[:-1])
    return value, torch.tensor(shapes, dtype=torch.long), locations, weights


def _assert_close(ref: list[torch.Tensor], ours: list[torch.Tensor], atol: float = 1e-5) -> None:
    """Max abs difference <= atol for the output and the value / weight gradients.

    Location gradients carry the level size (d pixel / d location = w or h), so their float32
    rounding grows with it; they are compared at ``atol`` relative to their largest entry
    (mmcv's own float32 error against float64 is of the same order).
    """
    for name, a, b in zip(("output", "value", "locations", "weights"), ref, ours):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        scale = max(1.0, a.abs().max().item()) if name == "locations" else 1.0
        assert (a - b).abs().max().item() <= atol * scale, name


def _forward_backward(fn, inputs, grad_seed: int = 1):
    value, shapes, locations, weights = (t.clone() for t in inputs)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    out = fn(leaves[0], shapes, leaves[1], leaves[2])
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    out.backward(grad.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # mostly inside the map, some points off every border
        {"low": -3.0, "high": 4.0},  # most points far outside
        {"bs": 1, "shapes": ((7, 9),), "num_heads": 1, "num_points": 1, "num_queries": 5},
        {"shapes": ((16, 16), (8, 8), (4, 4), (2, 2)), "num_points": 4, "num_queries": 340},
    ],
)
def test_matches_mmcv_forward_and_gradients(kwargs):
    inputs = _inputs(**kwargs)
    _assert_close(
        _forward_backward(_mmcv_original(), inputs), _forward_backward(fast_msda, inputs)
    )


def test_points_exactly_on_borders_and_pixel_centres():
    value, shapes, _, weights = _inputs(num_points=4, num_queries=6)
    # (h, w) = (12, 10) level: 0, 1 and pixel centres / edges of the first and last pixels
    grid = torch.tensor([0.0, 1.0, 0.05, 0.95, 1 / 24, 23 / 24, -1 / 20, 21 / 20])
    index = torch.randint(
        0, len(grid), (2, 6, 3, 4, 4, 2), generator=torch.Generator().manual_seed(3)
    )
    inputs = (value, shapes, grid[index], weights)
    _assert_close(
        _forward_backward(_mmcv_original(), inputs), _forward_backward(fast_msda, inputs)
    )


def test_float64_matches_mmcv_closely():
    inputs = _inputs(dtype=torch.float64)
    ref = _forward_backward(_mmcv_original(), inputs)
    _assert_close(ref, _forward_backward(fast_msda, inputs), atol=1e-12)
    assert ref[0].dtype == torch.float64


def test_gradcheck_float64():
    value, shapes, locations, weights = _inputs(
        bs=1,
        shapes=((3, 4), (2, 2)),
        num_heads=2,
        head_dims=3,
        num_points=2,
        num_queries=3,
        dtype=torch.float64,
    )
    # bilinear sampling has kinks where loc * size - 0.5 is an integer: stay away from them
    size = shapes.flip(-1).to(torch.float64)  # (L, 2) as (w, h)
    pix = locations * size[:, None, :] - 0.5
    assert ((pix - pix.round()).abs() > 1e-3).all()
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, attn: fast_msda(v, shapes, loc, attn), leaves, eps=1e-6, atol=1e-6
    )


def test_partial_gradients_and_no_grad():
    value, shapes, locations, weights = _inputs()
    with torch.no_grad():
        ref = _mmcv_original()(value, shapes, locations, weights)
        assert (fast_msda(value, shapes, locations, weights) - ref).abs().max() <= 1e-5
    locations.requires_grad_()
    fast_msda(value, shapes, locations, weights).sum().backward()
    assert locations.grad is not None and value.grad is None and weights.grad is None


def test_accepts_list_shapes_and_non_contiguous_inputs():
    value, shapes, locations, weights = _inputs()
    value_nc = value.transpose(0, 1).contiguous().transpose(0, 1)
    assert not value_nc.is_contiguous()
    out = fast_msda(value_nc, shapes.tolist(), locations, weights)
    ref = _mmcv_original()(value, shapes, locations, weights)
    assert (out - ref).abs().max().item() <= 1e-5


def test_int64_index_path(monkeypatch):
    """Large problems switch to int64 indices; force that path on a small one."""
    monkeypatch.setattr(msda_cpu, "_INT32_MAX", 100)
    inputs = _inputs()
    _assert_close(
        _forward_backward(_mmcv_original(), inputs), _forward_backward(fast_msda, inputs)
    )


def test_mixed_dtypes_and_non_finite_locations():
    value, shapes, locations, weights = _inputs(num_queries=4)
    loc64 = locations.double().requires_grad_()
    out = fast_msda(value, shapes, loc64, weights)
    out.sum().backward()
    assert out.dtype == torch.float32 and loc64.grad.dtype == torch.float64
    # NaN / inf locations: NaN in the affected rows (as mmcv), never out-of-bounds reads
    bad = locations.clone()
    bad[0, 0, 0, 0, 0, 0] = float("nan")
    bad[0, 1, 1, 1, 1, 1] = float("inf")
    bad[1, 2, 2, 2, 2, 0] = -1e30
    out = fast_msda(value, shapes, bad, weights)
    ref = _mmcv_original()(value, shapes, bad, weights)
    assert torch.isnan(out[0, 0]).any() and torch.isnan(out[0, 1]).any()
    finite = torch.isfinite(ref)
    assert torch.isfinite(out[finite]).all()
    assert (out[finite] - ref[finite]).abs().max().item() <= 1e-5


@pytest.fixture
def restore_mmcv_global():
    """Restores mmcv's module global (and the dispatcher state) after the test."""
    saved = mmcv_msda.multi_scale_deformable_attn_pytorch
    yield
    mmcv_msda.multi_scale_deformable_attn_pytorch = saved


def _msda_module_inputs(num_levels: int = 2):
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(
        embed_dims=32,
        num_heads=4,
        num_levels=num_levels,
        num_points=2,
        dropout=0.0,
        batch_first=True,
    )
    shapes = torch.tensor([[8, 6], [4, 3]][:num_levels])
    num_value = int((shapes[:, 0] * shapes[:, 1]).sum())
    start = torch.cat((shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]))
    query = torch.randn(2, 7, 32)
    value = torch.randn(2, num_value, 32)
    reference_points = torch.rand(2, 7, num_levels, 2)
    kwargs = dict(
        value=value,
        reference_points=reference_points,
        spatial_shapes=shapes,
        level_start_index=start,
    )
    return module, query, kwargs


def test_dispatcher_routes_mmcv_module_on_cpu(restore_mmcv_global, monkeypatch):
    monkeypatch.delenv(msda_cpu.ENV_DISABLE, raising=False)
    msda_cpu.use_fast_cpu_ms_deform_attn(False)
    original = mmcv_msda.multi_scale_deformable_attn_pytorch
    assert not hasattr(original, ORIGINAL_ATTR)
    module, query, kwargs = _msda_module_inputs()
    expected = module(query, **kwargs)

    calls = []

    def counting(*args):
        calls.append(args[0].shape)
        return fast_msda(*args)

    monkeypatch.setattr(msda_cpu, "multi_scale_deformable_attn_cpu", counting)
    assert msda_cpu.use_fast_cpu_ms_deform_attn(True) is True
    dispatcher = mmcv_msda.multi_scale_deformable_attn_pytorch
    assert msda_cpu.use_fast_cpu_ms_deform_attn() is True  # idempotent: no double wrapping
    assert mmcv_msda.multi_scale_deformable_attn_pytorch is dispatcher
    assert getattr(dispatcher, ORIGINAL_ATTR) is original

    query.requires_grad_()
    out = module(query, **kwargs)
    assert len(calls) == 1
    assert (out - expected).abs().max().item() <= 1e-5
    out.sum().backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()

    # the environment variable opts out at call time and at install time
    monkeypatch.setenv(msda_cpu.ENV_DISABLE, "1")
    module(query, **kwargs)
    assert len(calls) == 1
    assert msda_cpu.use_fast_cpu_ms_deform_attn(True) is False
    assert mmcv_msda.multi_scale_deformable_attn_pytorch is original
    monkeypatch.delenv(msda_cpu.ENV_DISABLE)

    assert msda_cpu.use_fast_cpu_ms_deform_attn(True) is True
    assert msda_cpu.use_fast_cpu_ms_deform_attn(False) is False
    assert msda_cpu.use_fast_cpu_ms_deform_attn(False) is False
    assert mmcv_msda.multi_scale_deformable_attn_pytorch is original
    module(query, **kwargs)
    assert len(calls) == 1


def test_dispatcher_sends_other_inputs_to_the_original():
    seen = []

    def original(value, shapes, locations, weights):
        seen.append(value.dtype)
        return value.new_zeros(1)

    dispatcher = msda_cpu._make_dispatcher(original)
    value, shapes, locations, weights = _inputs()
    half = [t.to(torch.bfloat16) for t in (value, locations, weights)]
    dispatcher(half[0], shapes, half[1], half[2])
    assert seen == [torch.bfloat16]
    meta = [t.to("meta") for t in (value, locations, weights)]  # stands in for CUDA tensors
    dispatcher(meta[0], shapes, meta[1], meta[2])
    assert seen == [torch.bfloat16, torch.float32]
    out = dispatcher(value, shapes, locations, weights)
    assert len(seen) == 2 and out.shape == (2, 17, 24)
