"""Multi-scale deformable attention that picks its kernel per call.

mmcv's :class:`~mmcv.ops.MultiScaleDeformableAttention` runs its CUDA kernel on
GPUs and otherwise the ``grid_sample`` reference
(``multi_scale_deformable_attn_pytorch``, slow on CPU, especially backward).
:class:`CoMultiScaleDeformableAttention` has the same parameters, state-dict
keys, initialisation and arithmetic, and sends float CPU inputs to
:func:`~.ms_deform_attn_cpu.multi_scale_deformable_attn_cpu` instead. Only the
modules built by this package use it: mmcv's class and functions are left as
they are, so other models in the same process keep their kernels.

``CODETR_DISABLE_FAST_MSDA=1`` in the environment (read at every call) selects
mmcv's reference function on CPU, e.g. to compare against the official
implementation bit for bit.
"""
from __future__ import annotations

import functools
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops.multi_scale_deform_attn import (
    MultiScaleDeformableAttnFunction,
    multi_scale_deformable_attn_pytorch,
)
from mmdet.registry import MODELS
from torch import Tensor

from .ms_deform_attn_cpu import fast_cpu_msda_enabled, multi_scale_deformable_attn_cpu

_FAST_DTYPES = (torch.float32, torch.float64)


def ms_deform_attn_core(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                        sampling_locations: Tensor, attention_weights: Tensor,
                        im2col_step: int = 64, onnx_per_point: bool = False,
                        onnx_native: bool = False) -> Tensor:
    """Sample and sum: mmcv's CUDA/MLU kernel, the fast CPU kernel or mmcv's reference
    (while exporting to ONNX, :func:`multi_scale_deformable_attn_onnx`: standard operators,
    or with ``onnx_native`` one ``codetr::MSDeformAttn`` node, see :mod:`.native`).

    Args:
        value (Tensor): (bs, num_value, num_heads, head_dims).
        spatial_shapes (Tensor): (num_levels, 2) as (h, w).
        level_start_index (Tensor): (num_levels, ).
        sampling_locations (Tensor): (bs, nq, num_heads, num_levels, num_points, 2) in [0, 1].
        attention_weights (Tensor): (bs, nq, num_heads, num_levels, num_points).
        im2col_step (int): Batch chunk of the CUDA kernel.
        onnx_per_point (bool): While exporting, one ``GridSample`` per level and point
            (see :func:`multi_scale_deformable_attn_onnx`).
        onnx_native (bool): While exporting, the native operator (takes precedence).

    Returns:
        Tensor: (bs, nq, num_heads * head_dims).
    """
    if torch.onnx.is_in_onnx_export() and onnx_native:
        from .native import MSDeformAttnNative
        return MSDeformAttnNative.apply(value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights)
    if torch.onnx.is_in_onnx_export():  # standard operators only (GridSample)
        return multi_scale_deformable_attn_onnx(value, spatial_shapes, level_start_index,
                                                sampling_locations, attention_weights,
                                                per_point=onnx_per_point)
    if value.is_cuda or getattr(value, 'is_mlu', False):
        return MultiScaleDeformableAttnFunction.apply(value, spatial_shapes, level_start_index,
                                                      sampling_locations, attention_weights,
                                                      im2col_step)
    if (value.device.type == 'cpu' and value.dtype in _FAST_DTYPES
            and sampling_locations.dtype == value.dtype
            and attention_weights.dtype == value.dtype and fast_cpu_msda_enabled()):
        return multi_scale_deformable_attn_cpu(value, spatial_shapes, sampling_locations,
                                               attention_weights)
    return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations,
                                               attention_weights)


def multi_scale_deformable_attn_onnx(value: Tensor, spatial_shapes: Tensor,
                                     level_start_index: Tensor, sampling_locations: Tensor,
                                     attention_weights: Tensor, per_point: bool = False) -> Tensor:
    """mmcv's ``grid_sample`` formulation, arranged for an exported graph.

    - The levels are cut out of ``value`` by tensor slicing, so that a traced graph keeps
      their sizes symbolic (dynamic H and W); mmcv's ``split`` by Python sizes freezes them.
    - The samples are weighted and summed level by level: mmcv stacks all levels' samples
      first (one (bs * heads, dims, nq, levels * points) tensor, 360 MB per R50 encoder
      layer at 800x1333), which made ``Concat`` a sixth of the runtimes' latency.
    - ``per_point=False``: one ``GridSample`` per level over a (nq, points) grid, then a
      ``ReduceSum`` over the points (the faster graph in ONNX Runtime).
      ``per_point=True``: one ``GridSample`` per level and point over a (nq, 1) grid, summed
      by a chain of multiply-adds. OpenVINO fuses that chain into one pass, where its
      ``ReduceSum`` over the points reads at about an eighth of memory speed: 0.85x the
      latency at R50 800x1333 in bf16, the same in fp32 (0.92 and 0.99 in two alternating
      runs); ONNX Runtime runs the chain unfused (1.33x).

    The sums differ from mmcv's in rounding only.

    Args: see :func:`ms_deform_attn_core`; ``per_point`` selects the arrangement above.

    Returns:
        Tensor: (bs, nq, num_heads * head_dims).
    """
    bs, _, heads, dims = value.shape
    _, num_query, _, levels, points, _ = sampling_locations.shape
    # (bs, nq, heads, L, P, 2) -> (bs * heads, nq, L * P, 2); weights (bs * heads, 1, nq, L * P)
    grids = (2 * sampling_locations - 1).transpose(1, 2).reshape(bs * heads, num_query,
                                                                 levels * points, 2)
    weights = attention_weights.transpose(1, 2).reshape(bs * heads, 1, num_query,
                                                        levels * points)
    value = value.flatten(2).transpose(1, 2).reshape(bs * heads, dims, -1)
    terms = []  # (bs * heads, dims, nq) each
    for lvl in range(levels):
        h, w = spatial_shapes[lvl, 0], spatial_shapes[lvl, 1]
        start = level_start_index[lvl]
        level_value = value[..., start:start + h * w].reshape(bs * heads, dims, h, w)
        first = lvl * points
        if per_point:
            for k in range(first, first + points):
                sampled = F.grid_sample(level_value, grids[:, :, k:k + 1], mode='bilinear',
                                        padding_mode='zeros', align_corners=False)
                terms.append(sampled[..., 0] * weights[..., k])
        else:
            cut = slice(first, first + points)
            sampled = F.grid_sample(level_value, grids[:, :, cut], mode='bilinear',
                                    padding_mode='zeros', align_corners=False)
            terms.append((sampled * weights[..., cut]).sum(-1))
    output = functools.reduce(operator.add, terms)
    return output.view(bs, heads * dims, num_query).transpose(1, 2).contiguous()


@MODELS.register_module()
class CoMultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """:class:`~mmcv.ops.MultiScaleDeformableAttention` with the kernel choice of
    :func:`ms_deform_attn_core` (fast CPU kernel on CPU). Same arguments and keys.

    ``one_pass_locations`` (set by :func:`~projects.codetr.deploy.optimize_for_cpu_inference`)
    computes the encoder's sampling locations in one vectorised pass when no gradient is
    recorded: same values, bit for bit. ``onnx_per_point`` (set by
    :func:`~projects.codetr.deploy.export_onnx` for OpenVINO) selects the exported graph's
    arrangement of the sampling (:func:`multi_scale_deformable_attn_onnx`), ``onnx_native``
    the native operator instead (:mod:`.native`).
    """

    one_pass_locations = False
    onnx_per_point = False
    onnx_native = False

    def forward(self,
                query: Tensor,
                key: Optional[Tensor] = None,
                value: Optional[Tensor] = None,
                identity: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None,
                reference_points: Optional[Tensor] = None,
                spatial_shapes: Optional[Tensor] = None,
                level_start_index: Optional[Tensor] = None,
                **kwargs) -> Tensor:
        """Deformable attention of ``query`` over the flattened multi-level ``value``.

        Args:
            query (Tensor): (bs, nq, c) with ``batch_first``, else (nq, bs, c).
            key (Tensor, optional): Unused (the keys are the sampled values).
            value (Tensor, optional): (bs, num_value, c); ``query`` when None.
            identity (Tensor, optional): Residual; ``query`` when None.
            query_pos (Tensor, optional): Added to ``query`` before projecting.
            key_padding_mask (Tensor, optional): (bs, num_value), True = padding.
            reference_points (Tensor): (bs, nq, num_levels, 2) points or
                (bs, nq, num_levels, 4) cxcywh boxes, normalised.
            spatial_shapes (Tensor): (num_levels, 2) as (h, w).
            level_start_index (Tensor): (num_levels, ).

        Returns:
            Tensor: Same layout as ``query``.
        """
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.transpose(0, 1), value.transpose(0, 1)
        bs, num_query, _ = query.shape
        num_value = value.size(1)
        if not torch.jit.is_tracing() and int(spatial_shapes.prod(1).sum()) != num_value:
            raise ValueError(f'{type(self).__name__}: spatial_shapes {spatial_shapes.tolist()} '
                             f'cover a different number of values than value has ({num_value})')
        heads, levels, points = self.num_heads, self.num_levels, self.num_points

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, heads, -1)
        offsets = self.sampling_offsets(query).view(bs, num_query, heads, levels, points, 2)
        weights = self.attention_weights(query).view(bs, num_query, heads, levels * points)
        weights = weights.softmax(-1).view(bs, num_query, heads, levels, points)

        ref = reference_points[:, :, None, :, None]  # (bs, nq, 1, levels, 1, 2 or 4)
        if ref.size(-1) == 2:
            # offsets are in pixels of each level: normalise by (w, h)
            wh = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            wh = wh[None, None, None, :, None, :].to(offsets.dtype)
            if (not self.one_pass_locations or torch.is_grad_enabled()
                    or torch.onnx.is_in_onnx_export()):
                locations = ref + offsets / wh
            else:  # the same values in one pass (addcdiv divides, then adds; its backward
                # would round differently, and ONNX has no addcdiv), with ref and wh laid
                # out over (levels, points, 2) so that the broadcast over heads runs on 32
                # contiguous values: 4.5x faster than with stride-0 points
                shape = (*ref.shape[:3], levels, points, 2)
                locations = torch.addcdiv(ref.expand(shape).contiguous(), offsets,
                                          wh.expand(1, 1, 1, levels, points, 2).contiguous())
        elif ref.size(-1) == 4:
            # offsets are in units of half the box, split over the points
            locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5
        else:
            raise ValueError(f'{type(self).__name__}: reference_points must end in 2 or 4 '
                             f'values, got shape {tuple(reference_points.shape)}')

        output = ms_deform_attn_core(value, spatial_shapes, level_start_index, locations,
                                     weights, self.im2col_step, self.onnx_per_point,
                                     self.onnx_native)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return self.dropout(output) + identity
