"""Deformable-DETR encoder and decoder of Co-DETR, built on mmdet 3.x layers.

mmdet's Deformable-DETR layers build mmcv's ``MultiScaleDeformableAttention``;
the layers here build :class:`CoMultiScaleDeformableAttention` (same keys and
arithmetic, fast kernel on CPU) and are otherwise mmdet's. The decoder adds
look-forward-twice.
"""
from typing import Optional, Tuple

import torch
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmdet.models.layers import (
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerDecoderLayer,
    DeformableDetrTransformerEncoder,
    DeformableDetrTransformerEncoderLayer,
)
from mmdet.models.layers.transformer.utils import inverse_sigmoid
from mmengine.model import ModuleList
from torch import Tensor, nn

from ...ops.ms_deform_attn import CoMultiScaleDeformableAttention


class CoDeformableDetrTransformerEncoderLayer(DeformableDetrTransformerEncoderLayer):
    """mmdet's encoder layer with :class:`CoMultiScaleDeformableAttention`."""

    def _init_layers(self) -> None:
        """Deformable self-attention, FFN and two norms (mmdet's order)."""
        self.self_attn = CoMultiScaleDeformableAttention(**self.self_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList(
            build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(2))


class CoDeformableDetrTransformerDecoderLayer(DeformableDetrTransformerDecoderLayer):
    """mmdet's decoder layer with :class:`CoMultiScaleDeformableAttention`."""

    def _init_layers(self) -> None:
        """Self-attention, deformable cross-attention, FFN and three norms (mmdet's order)."""
        self.self_attn = MultiheadAttention(**self.self_attn_cfg)
        self.cross_attn = CoMultiScaleDeformableAttention(**self.cross_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList(
            build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(3))


class CoDeformableDetrTransformerEncoder(DeformableDetrTransformerEncoder):
    """mmdet's Deformable-DETR encoder made of :class:`CoDeformableDetrTransformerEncoderLayer`."""

    def _init_layers(self) -> None:
        """``num_layers`` encoder layers."""
        self.layers = ModuleList(
            CoDeformableDetrTransformerEncoderLayer(**self.layer_cfg)
            for _ in range(self.num_layers))
        self.embed_dims = self.layers[0].embed_dims


class CoDeformableDetrTransformerDecoder(DeformableDetrTransformerDecoder):
    """Deformable-DETR decoder whose intermediate references look forward twice.

    With box refinement, layer ``l`` refines the (detached) reference of layer
    ``l - 1``. Look-forward-twice (DINO) returns the *undetached* refined
    boxes as intermediate references, so the box predicted by layer ``l + 1``
    (its offset added to this reference) also back-propagates into layer
    ``l``. The reference passed on to the next layer stays detached.

    Args:
        look_forward_twice (bool): Return undetached refined references.
            Defaults to True.
        *args, **kwargs: See :class:`DeformableDetrTransformerDecoder`.
    """

    def __init__(self, *args, look_forward_twice: bool = True, **kwargs) -> None:
        self.look_forward_twice = look_forward_twice
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        """``num_layers`` :class:`CoDeformableDetrTransformerDecoderLayer` (no post norm)."""
        if self.post_norm_cfg is not None:
            raise ValueError(f'{type(self).__name__}: post_norm_cfg must be None, got '
                             f'{self.post_norm_cfg}')
        self.layers = ModuleList(
            CoDeformableDetrTransformerDecoderLayer(**self.layer_cfg)
            for _ in range(self.num_layers))
        self.embed_dims = self.layers[0].embed_dims

    def forward(self,
                query: Tensor,
                query_pos: Tensor,
                value: Tensor,
                key_padding_mask: Optional[Tensor],
                reference_points: Tensor,
                spatial_shapes: Tensor,
                level_start_index: Tensor,
                valid_ratios: Tensor,
                reg_branches: Optional[nn.ModuleList] = None,
                self_attn_mask: Optional[Tensor] = None,
                **kwargs) -> Tuple[Tensor, Tensor]:
        """Run all decoder layers.

        Args:
            query (Tensor): Content queries, (bs, num_queries, dim).
            query_pos (Tensor): Positional queries, (bs, num_queries, dim).
            value (Tensor): Flattened encoder memory, (bs, num_value, dim).
            key_padding_mask (Tensor, optional): Padding mask of ``value``,
                (bs, num_value), ``True`` at padded positions.
            reference_points (Tensor): Initial boxes, normalised cxcywh,
                (bs, num_queries, 4).
            spatial_shapes (Tensor): (num_levels, 2) as (h, w).
            level_start_index (Tensor): (num_levels, ).
            valid_ratios (Tensor): (bs, num_levels, 2).
            reg_branches (nn.ModuleList, optional): Per-layer box branches
                for box refinement.
            self_attn_mask (Tensor, optional): Boolean self-attention mask,
                ``True`` = may not attend, (bs * num_heads, nq, nq).

        Returns:
            tuple[Tensor, Tensor]: Hidden states (num_layers, bs, nq, dim)
            and references (num_layers, bs, nq, 4) when
            ``return_intermediate``; otherwise those of the last layer.
        """
        if reference_points.size(-1) != 4:
            raise ValueError('CoDeformableDetrTransformerDecoder expects 4-d '
                             f'reference boxes, got {reference_points.size(-1)}-d')
        output = query
        intermediate, intermediate_refs = [], []
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (bs, 1, nl, 4)
        for layer_id, layer in enumerate(self.layers):
            # (bs, nq, 4) -> (bs, nq, num_levels, 4)
            reference_points_input = reference_points[:, :, None] * ratios
            output = layer(
                output,
                query_pos=query_pos,
                value=value,
                key_padding_mask=key_padding_mask,
                self_attn_mask=self_attn_mask,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                valid_ratios=valid_ratios,
                reference_points=reference_points_input,
                **kwargs)

            new_reference_points = reference_points
            if reg_branches is not None:
                new_reference_points = (reg_branches[layer_id](output) +
                                        inverse_sigmoid(reference_points)).sigmoid()
                reference_points = new_reference_points.detach()

            if self.return_intermediate:
                intermediate.append(output)
                # Co-DETR: look-forward-twice keeps the gradient path.
                intermediate_refs.append(
                    new_reference_points if self.look_forward_twice else reference_points)

        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(intermediate_refs)
        return output, reference_points
