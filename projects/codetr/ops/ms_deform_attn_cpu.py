"""Fast CPU multi-scale deformable attention (MSDA) in pure PyTorch.

On CPU, :class:`mmcv.ops.MultiScaleDeformableAttention` falls back to
``multi_scale_deformable_attn_pytorch``: one ``F.grid_sample`` per level, all
sampled values materialised before the weighted sum, and a slow backward.

Here the same function is computed with sparse matrix products. Bilinear
sampling (zeros padding, ``align_corners=False``) plus the attention-weighted
sum is linear in ``value``: output row ``(b, q, h)`` combines the ``4 * L * P``
bilinear corners of its points, the attention weight folded into the corner
weights. Value maps are copied into a zero-padded layout (2 pixels per side,
one row stride for all levels): every corner has a valid row, out-of-map
corners read zeros (no masks), and the corners of a point sit at fixed row
offsets. With ``A`` the resulting CSR matrix (MKL sparse BLAS):

* forward: ``out = A @ V``, one sparse-dense product;
* value gradient: ``A^T @ G``, ``A^T`` built per corner from a single sort of
  the points (no scatter-add, no CSR -> CSC conversion);
* corner-weight gradient: ``<G[row], V[corner]>`` for every non-zero
  (``torch.sparse.sampled_addmm``); the gradients w.r.t. ``attention_weights``
  and ``sampling_locations`` follow in closed form.

Results match mmcv's fallback to float rounding (cells are computed with the
same float operations as ``grid_sample``). Saved for backward: padded value,
corner indices and fractional positions (about a quarter of the fallback's).
No double backward. Non-finite locations give NaN in the affected rows
(indices always stay in bounds).

This package's attention module (:class:`~.ms_deform_attn.CoMultiScaleDeformableAttention`)
calls it on CPU; ``CODETR_DISABLE_FAST_MSDA=1`` in the environment selects mmcv's reference
instead. :func:`use_fast_cpu_ms_deform_attn` is an explicit opt-in that also routes mmcv's own
CPU fallback (every other model of the process) here; importing the package never does.
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = [
    "fast_cpu_msda_enabled",
    "multi_scale_deformable_attn_cpu",
    "use_fast_cpu_ms_deform_attn",
]

ENV_DISABLE = "CODETR_DISABLE_FAST_MSDA"
_SUPPORTED_DTYPES = (torch.float32, torch.float64)
_ORIGINAL_ATTR = "_codetr_fast_msda_original"
_INT32_MAX = 2**31 - 1

MSDAFunc = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def _spatial_shapes_list(
    value_spatial_shapes: Tensor | Sequence[Sequence[int]],
) -> list[tuple[int, int]]:
    """Converts ``(num_levels, 2)`` ``(h, w)`` shapes to a list of int pairs."""
    if isinstance(value_spatial_shapes, Tensor):
        value_spatial_shapes = value_spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in value_spatial_shapes]


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """Builds a CSR tensor without invariant checks (indices are valid by construction)."""
    return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _silence_csr_beta_warning() -> None:
    """Consumes PyTorch's one-time "Sparse CSR tensor support is in beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support.*")
        _csr(
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0),
            (1, 1),
        )


_silence_csr_beta_warning()


class _Levels(NamedTuple):
    """Layout of the padded value maps, with per-level constants along ``LP = L * P``.

    Every level map is zero-padded by 2 pixels on each side and all levels
    share one row stride ``Wp = max(w) + 4``. Clamping the top-left corner of
    a sampling point to ``[-2, size]`` then keeps its 4 corners inside the
    padded map, out-of-map corners read zeros (no masks), and the corners sit
    at the same row offsets ``(0, 1, Wp, Wp + 1)`` for every level.
    """

    size: Tensor  # (LP, 2) float, (w, h) of the level of each point
    lower: Tensor  # (LP, 2) float, all -2: lower clamp bound of the top-left corner
    origin: Tensor  # (LP,) int64, row of pixel (0, 0) of the level in a (b, h) block
    stride: int  # Wp, rows between vertically adjacent pixels
    block_rows: int  # rows of a (b, h) block: sum of (h + 4) * Wp

    @property
    def offsets(self) -> tuple[int, int, int, int]:
        """Row offsets of the corners ``(y, x) + (0, 0), (0, 1), (1, 0), (1, 1)``."""
        return 0, 1, self.stride, self.stride + 1


def _levels(shapes: list[tuple[int, int]], num_points: int, dtype: torch.dtype) -> _Levels:
    """Builds the :class:`_Levels` constants for ``shapes`` and ``num_points``."""
    stride = max(w for _, w in shapes) + 4
    sizes = [(h + 4) * stride for h, _ in shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=dtype)  # (L, 2)
    wh = wh.repeat_interleave(num_points, 0)  # (LP, 2)
    origin = torch.tensor([s + 2 * stride + 2 for s in starts]).repeat_interleave(num_points)
    return _Levels(wh, torch.full_like(wh, -2.0), origin, stride, sum(sizes))


def _geometry(
    sampling_locations: Tensor, lv: _Levels, idx_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Locates the bilinear corners of every sampling point like ``F.grid_sample``.

    Args:
        sampling_locations: ``(bs, Lq, H, L, P, 2)`` normalized ``(x, y)``.
        lv: Padded layout.
        idx_dtype: Integer dtype of the row indices.

    Returns:
        ``top_left`` ``(M, LP)``, the padded value row of the top-left corner of
        each point (``M = bs * Lq * H``), and ``frac`` ``(2, M, LP)``, the
        fractional pixel position ``fx, fy`` inside that cell.
    """
    bs, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    num_rows, row_len = bs * num_queries * num_heads, num_levels * num_points
    # (bs, Lq, H, L, P, 2) -> (M, LP, 2)
    loc = sampling_locations.reshape(num_rows, row_len, 2)
    # Same float ops as mmcv (grid = 2 * loc - 1) and grid_sample's CPU kernel
    # (x = (grid + 1) * (size / 2) - 0.5), so the cells match the reference exactly.
    pix = (loc * 2).sub_(1).add_(1).mul_(lv.size / 2).sub_(0.5)  # (M, LP, 2) pixel coords
    cell = pix.floor()
    frac = pix.sub_(cell).permute(2, 0, 1).contiguous()  # (M, LP, 2) -> (2, M, LP) planar
    # Clamping to [-2, size] only moves points whose corners are all outside the map along
    # that axis; their corners then read the zero padding. Non-finite locations get NaN
    # weights but always valid indices.
    cell = torch.clamp_(cell.nan_to_num_(nan=-2.0), min=lv.lower, max=lv.size).to(idx_dtype)
    top_left = torch.add(cell[..., 0], cell[..., 1], alpha=lv.stride)  # (M, LP)
    block = torch.arange(bs * num_heads, dtype=idx_dtype) * lv.block_rows  # (bs*H,)
    origin = block.view(bs, 1, num_heads, 1) + lv.origin.to(idx_dtype)  # (bs, 1, H, LP)
    # (M, LP) -> (bs, Lq, H, LP): add the origin of the (b, h) block and level
    top_left.view(bs, num_queries, num_heads, row_len).add_(origin)
    return top_left, frac


def _corner_weights(attn: Tensor, frac: Tensor, weights: Tensor) -> Tensor:
    """Folds the attention weights into the bilinear corner weights.

    Args:
        attn: ``(...)`` attention weights, e.g. ``(M, LP)``.
        frac: ``(2, ...)`` fractional positions ``fx, fy``.
        weights: ``(2, 2, ...)`` output (may be a permuted view).

    Returns:
        ``weights``, filled with ``a * wy[i] * wx[j]`` at ``[i, j]``, where
        ``wx = (1 - fx, fx)`` and ``wy = (1 - fy, fy)``.
    """
    fx, fy = frac
    torch.mul(attn, fy, out=weights[1, 0])  # a * fy, the weight of the lower row
    torch.sub(attn, weights[1, 0], out=weights[0, 0])  # a * (1 - fy)
    torch.mul(weights[:, 0], fx, out=weights[:, 1])  # a * wy[i] * fx
    weights[:, 0].sub_(weights[:, 1])  # a * wy[i] * (1 - fx)
    return weights


@functools.lru_cache(maxsize=8)
def _padded_rows(
    shapes: tuple[tuple[int, int], ...], bs: int, num_heads: int, stride: int, block_rows: int
) -> Tensor:
    """Padded row of every value element, in ``value.view(-1, D)`` order: ``(bs * S * H,)``."""
    starts = itertools.accumulate(((h + 4) * stride for h, _ in shapes), initial=0)
    pos = []
    for (h, w), start in zip(shapes, starts):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pos.append(start + (ys.reshape(-1) + 2) * stride + xs.reshape(-1) + 2)
    block = torch.arange(bs * num_heads).view(bs, 1, num_heads) * block_rows  # (bs, 1, H)
    return (block + torch.cat(pos).view(1, -1, 1)).view(-1)  # (bs, S, H) -> (bs * S * H,)


def _pad_value(value: Tensor, shapes: list[tuple[int, int]], lv: _Levels) -> Tensor:
    """Copies ``value`` ``(bs, S, H, D)`` into the zero-padded, ``(b, h)``-major layout.

    Returns:
        ``(bs * H * block_rows + Wp + 1, D)`` value rows; the zero tail keeps every
        corner-shifted view ``rows[offset : offset + bs * H * block_rows]`` in bounds.
    """
    bs, _, num_heads, head_dims = value.shape
    rows = _padded_rows(tuple(shapes), bs, num_heads, lv.stride, lv.block_rows)
    padded = value.new_zeros(bs * num_heads * lv.block_rows + lv.stride + 1, head_dims)
    return padded.index_copy_(0, rows, value.reshape(-1, head_dims))


def _unpad_grad(
    grad_padded: Tensor, shapes: list[tuple[int, int]], lv: _Levels, bs: int, num_heads: int
) -> Tensor:
    """Inverse of :func:`_pad_value` for gradients: returns ``(bs, S, H, D)``."""
    rows = _padded_rows(tuple(shapes), bs, num_heads, lv.stride, lv.block_rows)
    # (bs * S * H, D) -> (bs, S, H, D)
    return grad_padded.index_select(0, rows).view(bs, -1, num_heads, grad_padded.shape[1])


def _value_grad(
    top_left: Tensor,
    attn: Tensor,
    frac: Tensor,
    grad_rows: Tensor,
    lv: _Levels,
    num_value_rows: int,
) -> Tensor:
    """Computes ``A^T @ G``, the gradient w.r.t. the padded value rows.

    ``A^T`` is the sum over corners ``c`` of ``A_c^T``, which has one entry per
    point, in row ``top_left + offset_c``. Sorting the points by ``top_left``
    sorts the rows of every ``A_c^T``, so each is directly a CSR matrix: no
    scatter-add and no CSR -> CSC conversion.

    Args:
        top_left: ``(M, LP)`` top-left corner rows.
        attn: ``(M, LP)`` attention weights.
        frac: ``(2, M, LP)`` fractional positions.
        grad_rows: ``(M, D)`` output gradient.
        lv: Padded layout.
        num_value_rows: ``bs * H * block_rows``.

    Returns:
        ``(bs * H * block_rows + Wp + 1, D)`` gradient of the padded value rows.
    """
    num_rows, row_len = top_left.shape
    idx_dtype = top_left.dtype
    rows, perm = torch.sort(top_left.reshape(-1))  # (Np,) with Np = M * LP
    crow = torch.zeros(num_value_rows + lv.stride + 2, dtype=idx_dtype)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=crow.numel() - 1), 0)
    if row_len & (row_len - 1) == 0:  # power of two: shift instead of division
        query_rows = (perm >> (row_len.bit_length() - 1)).to(idx_dtype)  # (Np,)
    else:
        query_rows = torch.div(perm, row_len, rounding_mode="floor").to(idx_dtype)
    # corner weights (2, 2, Np) in sorted order
    frac_sorted = frac.view(2, -1).index_select(1, perm)  # (2, Np)
    attn_sorted = attn.reshape(-1).index_select(0, perm)  # (Np,)
    weights = _corner_weights(attn_sorted, frac_sorted, attn.new_empty(2, 2, perm.numel()))
    grad_padded = None
    for offset, weight in zip(lv.offsets, weights.view(4, -1)):
        # rows top_left + offset stay inside the padded maps: the shifted tail stays empty
        size = (crow.numel() - 1 - offset, num_rows)
        mat = _csr(crow[: size[0] + 1], query_rows, weight, size)
        if grad_padded is None:
            grad_padded = mat @ grad_rows  # (bs*H*block_rows + Wp + 1, D)
        else:
            grad_padded[offset:].addmm_(mat, grad_rows)
    assert grad_padded is not None
    return grad_padded


def _point_grads(g: Tensor, attn: Tensor, frac: Tensor, lv: _Levels) -> tuple[Tensor, Tensor]:
    """Gradients w.r.t. the attention weights and locations from the corner-weight gradients.

    With ``g[:, i, j] = dL/dw_ij``, ``w_ij = a * wy[i] * wx[j]``, ``wx = (1 - fx, fx)``,
    ``wy = (1 - fy, fy)`` and ``fx = x * w - 0.5 - cell`` (``x`` normalized):
    ``dL/da = lerp(lerp(g00, g01, fx), lerp(g10, g11, fx), fy)``, ``dL/dx = a * w *
    lerp(g01 - g00, g11 - g10, fy)`` and ``dL/dy = a * h * (lerp(g10, g11, fx) -
    lerp(g00, g01, fx))``.

    Args:
        g: ``(M, 2, 2, LP)`` corner-weight gradients.
        attn: ``(M, LP)`` attention weights.
        frac: ``(2, M, LP)`` fractional positions.
        lv: Padded layout.

    Returns:
        ``grad_attn`` ``(M, LP)`` and ``grad_loc`` ``(M, LP, 2)``.
    """
    fx, fy = frac
    top = torch.lerp(g[:, 0, 0], g[:, 0, 1], fx)  # (M, LP), sampled along the upper row
    bottom = torch.lerp(g[:, 1, 0], g[:, 1, 1], fx)
    grad_attn = torch.lerp(top, bottom, fy)
    grad_loc = attn.new_empty(attn.shape + (2,))  # (M, LP, 2)
    d_top = torch.sub(g[:, 0, 1], g[:, 0, 0])  # x-differences of both rows
    d_bottom = torch.sub(g[:, 1, 1], g[:, 1, 0])
    torch.lerp(d_top, d_bottom, fy, out=grad_loc[..., 0])
    torch.sub(bottom, top, out=grad_loc[..., 1])
    grad_loc.mul_(attn[..., None]).mul_(lv.size)  # d(pixel)/d(location) = size
    return grad_attn, grad_loc


class MultiScaleDeformableAttnCPUFunction(torch.autograd.Function):
    """Autograd function with an explicit backward (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        value: Tensor,
        value_spatial_shapes: Tensor | Sequence[Sequence[int]],
        sampling_locations: Tensor,
        attention_weights: Tensor,
    ) -> Tensor:
        """See :func:`multi_scale_deformable_attn_cpu`."""
        shapes = _spatial_shapes_list(value_spatial_shapes)
        bs, _, num_heads, head_dims = value.shape
        _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
        lv = _levels(shapes, num_points, value.dtype)
        num_rows, row_len = bs * num_queries * num_heads, num_levels * num_points
        num_value_rows = bs * num_heads * lv.block_rows
        small = max(num_value_rows + lv.stride + 2, 4 * num_rows * row_len) <= _INT32_MAX
        idx_dtype = torch.int32 if small else torch.int64
        # (bs, Lq, H, L, P) -> (M, LP)
        attn = attention_weights.reshape(num_rows, row_len)

        top_left, frac = _geometry(sampling_locations, lv, idx_dtype)
        # one CSR row per (b, q, h) with its L * P * 4 corners: (M, 2, 2, LP) [:, y, x]
        weights = attn.new_empty(num_rows, 2, 2, row_len)
        _corner_weights(attn, frac, weights.permute(1, 2, 0, 3))
        offsets = torch.tensor(lv.offsets, dtype=idx_dtype).view(2, 2, 1)
        cols = top_left.new_empty(num_rows, 2, 2, row_len)
        torch.add(top_left[:, None, None, :], offsets, out=cols)  # (M, 2, 2, LP)
        value_rows = _pad_value(value.contiguous(), shapes, lv)  # (bs*H*block_rows + Wp + 1, D)
        row_nnz = 4 * row_len
        crow = torch.arange(0, num_rows * row_nnz + 1, row_nnz, dtype=idx_dtype)
        mat = _csr(crow, cols.view(-1), weights.view(-1), (num_rows, value_rows.shape[0]))
        out = mat @ value_rows  # (M, D)

        ctx.save_for_backward(value_rows, attn, cols, frac)
        ctx.shapes, ctx.lv = shapes, lv
        ctx.loc_shape = sampling_locations.shape
        # (M, D) = (bs*Lq*H, D) -> (bs, Lq, H*D)
        return out.view(bs, num_queries, num_heads * head_dims)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        """Gradients w.r.t. value, sampling_locations and attention_weights."""
        value_rows, attn, cols, frac = ctx.saved_tensors
        top_left = cols[:, 0, 0]  # (M, LP)
        lv, loc_shape = ctx.lv, ctx.loc_shape
        need_value, _, need_loc, need_attn = ctx.needs_input_grad
        grad_value = grad_loc = grad_attn = None
        bs, _, num_heads = loc_shape[:3]
        num_rows, row_len = attn.shape
        head_dims = value_rows.shape[1]
        num_value_rows = bs * num_heads * lv.block_rows
        # (bs, Lq, H*D) -> (M, D)
        grad_rows = grad_output.reshape(num_rows, head_dims).to(value_rows.dtype).contiguous()

        if need_value:
            grad_padded = _value_grad(top_left, attn, frac, grad_rows, lv, num_value_rows)
            grad_value = _unpad_grad(grad_padded, ctx.shapes, lv, bs, num_heads)

        if need_loc or need_attn:
            row_nnz = 4 * row_len
            crow = torch.arange(0, num_rows * row_nnz + 1, row_nnz, dtype=cols.dtype)
            # values are ignored (beta=0) but must be finite: a zero-stride view of one zero
            zeros = value_rows.new_zeros(1).expand(cols.numel())
            pattern = _csr(crow, cols.view(-1), zeros, (num_rows, value_rows.shape[0]))
            # dL/d(corner weight) = <G[row], V[corner row]> for every corner
            g = torch.sparse.sampled_addmm(pattern, grad_rows, value_rows.t(), beta=0.0)
            g = g.values().view(cols.shape)  # (M, 2, 2, LP)
            grad_attn, grad_loc = _point_grads(g, attn, frac, lv)
            grad_attn = grad_attn.view(loc_shape[:-1])  # (bs, Lq, H, L, P)
            grad_loc = grad_loc.view(loc_shape)  # (bs, Lq, H, L, P, 2)
        return grad_value, None, grad_loc, grad_attn


def multi_scale_deformable_attn_cpu(
    value: Tensor,
    value_spatial_shapes: Tensor | Sequence[Sequence[int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention for CPU tensors (float32/float64).

    Drop-in replacement for ``mmcv.ops.multi_scale_deform_attn.
    multi_scale_deformable_attn_pytorch`` (bilinear, zeros padding,
    ``align_corners=False``) with a fast explicit backward.

    Args:
        value: ``(bs, num_keys, num_heads, embed_dims // num_heads)``.
        value_spatial_shapes: ``(num_levels, 2)`` (tensor or nested sequence),
            ``(h, w)`` of each level; ``sum(h * w) == num_keys``.
        sampling_locations: ``(bs, num_queries, num_heads, num_levels,
            num_points, 2)`` normalized ``(x, y)``; points outside ``[0, 1]``
            sample zeros as in ``F.grid_sample``.
        attention_weights: ``(bs, num_queries, num_heads, num_levels,
            num_points)``.

    Returns:
        ``(bs, num_queries, embed_dims)``. Supports autograd (first order) for
        ``value``, ``sampling_locations`` and ``attention_weights``.
    """
    # Casting here (outside the Function) lets autograd return gradients in the input dtypes.
    sampling_locations = sampling_locations.to(value.dtype)
    attention_weights = attention_weights.to(value.dtype)
    return MultiScaleDeformableAttnCPUFunction.apply(
        value, value_spatial_shapes, sampling_locations, attention_weights
    )


def fast_cpu_msda_enabled() -> bool:
    """Whether the fast CPU path is on (``CODETR_DISABLE_FAST_MSDA`` unset or false)."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in ("1", "true", "yes", "on")


def _make_dispatcher(original: MSDAFunc) -> MSDAFunc:
    """Wraps ``original`` so that float CPU inputs use the fast implementation."""

    @functools.wraps(original)
    def dispatcher(
        value: Tensor,
        value_spatial_shapes: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
    ) -> Tensor:
        if (
            value.device.type == "cpu"
            and sampling_locations.device.type == "cpu"
            and attention_weights.device.type == "cpu"
            and value.dtype in _SUPPORTED_DTYPES
            and sampling_locations.dtype == value.dtype
            and attention_weights.dtype == value.dtype
            and fast_cpu_msda_enabled()
        ):
            return multi_scale_deformable_attn_cpu(
                value, value_spatial_shapes, sampling_locations, attention_weights
            )
        return original(value, value_spatial_shapes, sampling_locations, attention_weights)

    setattr(dispatcher, _ORIGINAL_ATTR, original)
    return dispatcher


def use_fast_cpu_ms_deform_attn(enabled: bool = True) -> bool:
    """Opt-in: installs (or removes) the CPU dispatcher in mmcv's MSDA module.

    Not needed for this package's models, which call the fast kernel through
    their own attention module. Call it explicitly to speed up *other* models
    (mmdet's DINO, Deformable-DETR, ...) on CPU: it changes mmcv's behaviour for
    the whole process, and importing ``projects.codetr`` never calls it.

    ``mmcv.ops.MultiScaleDeformableAttention.forward`` calls the module global
    ``mmcv.ops.multi_scale_deform_attn.multi_scale_deformable_attn_pytorch``
    whenever the value is not on CUDA/MLU. This replaces that global by a
    dispatcher sending float32/float64 CPU tensors to
    :func:`multi_scale_deformable_attn_cpu` and everything else to the
    original function (the CUDA kernel path is untouched). Idempotent.

    Setting the environment variable ``CODETR_DISABLE_FAST_MSDA=1`` opts out:
    ``use_fast_cpu_ms_deform_attn(True)`` then removes the dispatcher instead,
    and an already installed dispatcher falls back to the original function
    while the variable is set.

    Args:
        enabled: Install (``True``) or remove (``False``) the dispatcher.

    Returns:
        Whether the dispatcher is installed after the call.

    Raises:
        ImportError: If mmcv is not installed.
    """
    from mmcv.ops import multi_scale_deform_attn as msda_module

    current = msda_module.multi_scale_deformable_attn_pytorch
    original = getattr(current, _ORIGINAL_ATTR, None)
    if enabled and fast_cpu_msda_enabled():
        if original is None:
            msda_module.multi_scale_deformable_attn_pytorch = _make_dispatcher(current)
        return True
    if original is not None:
        msda_module.multi_scale_deformable_attn_pytorch = original
    return False
