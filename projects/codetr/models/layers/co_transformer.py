"""Deformable-DETR encoder and decoder of Co-DETR, built on mmdet 3.x layers.

mmdet's Deformable-DETR layers build mmcv's ``MultiScaleDeformableAttention``;
the layers here build :class:`CoMultiScaleDeformableAttention` (same keys and
arithmetic, fast kernel on CPU) and are otherwise mmdet's. The encoder can
checkpoint its first layers' activations (``with_cp``); the Deformable-DETR
decoder adds look-forward-twice, the DINO decoder (Co-DINO) is mmdet's with
the sine embedding sized to ``embed_dims``.
"""
from typing import Optional, Tuple, Union

import torch
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmdet.models.layers import (
    MLP,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerDecoderLayer,
    DeformableDetrTransformerEncoder,
    DeformableDetrTransformerEncoderLayer,
    DinoTransformerDecoder,
)
from mmdet.models.layers.transformer.utils import coordinate_to_encoding, inverse_sigmoid
from mmengine.model import ModuleList
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ...ops.ms_deform_attn import CoMultiScaleDeformableAttention


def pixel_centres(height: Tensor, width: Tensor,
                  device: Union[torch.device, str]) -> Tuple[Tensor, Tensor]:
    """x and y of the pixel centres ``i + 0.5`` of an ``height`` x ``width`` map, each
    (height * width, ) in raster order.

    The values of mmdet's ``linspace(0.5, n - 0.5, n)`` grids, bit for bit, but built with
    ``arange`` so that ONNX export keeps ``height`` and ``width`` symbolic (dynamic H and W);
    a traced ``linspace`` freezes its number of steps.
    """
    ys = torch.arange(height, dtype=torch.float32, device=device) + 0.5
    xs = torch.arange(width, dtype=torch.float32, device=device) + 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
    return grid_x.reshape(-1), grid_y.reshape(-1)


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
    """mmdet's Deformable-DETR encoder made of :class:`CoDeformableDetrTransformerEncoderLayer`.

    Args:
        with_cp (int): Recompute the activations of the first ``with_cp``
            layers in the backward pass instead of storing them (training
            only), as the official Co-DINO configs do with fairscale. Uses
            ``torch.utils.checkpoint``; the state-dict keys do not change.
            Defaults to 0.
        *args, **kwargs: See :class:`DeformableDetrTransformerEncoder`.
    """

    def __init__(self, *args, with_cp: int = 0, **kwargs) -> None:
        num_layers = kwargs.get('num_layers', args[0] if args else None)
        if not isinstance(with_cp, int) or with_cp < 0 or (
                num_layers is not None and with_cp > num_layers):
            raise ValueError(f'{type(self).__name__}: with_cp={with_cp!r}, expected an int '
                             f'in [0, num_layers={num_layers}]')
        if kwargs.get('num_cp', -1) > 0:
            raise ValueError(f'{type(self).__name__}: num_cp needs fairscale; use with_cp '
                             '(torch.utils.checkpoint) instead')
        self.with_cp = with_cp
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        """``num_layers`` encoder layers."""
        self.layers = ModuleList(
            CoDeformableDetrTransformerEncoderLayer(**self.layer_cfg)
            for _ in range(self.num_layers))
        self.embed_dims = self.layers[0].embed_dims

    @staticmethod
    def get_encoder_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor,
                                     device: Union[torch.device, str]) -> Tensor:
        """mmdet's reference points, (bs, num_queries, num_levels, 2); while exporting to
        ONNX built from :func:`pixel_centres` (same values, shape-generic graph)."""
        if not torch.onnx.is_in_onnx_export():
            return DeformableDetrTransformerEncoder.get_encoder_reference_points(
                spatial_shapes, valid_ratios, device)
        points = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            x, y = pixel_centres(h, w, device)
            points.append(torch.stack((x[None] / (valid_ratios[:, None, lvl, 0] * w),
                                       y[None] / (valid_ratios[:, None, lvl, 1] * h)), -1))
        return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]

    def forward(self, query: Tensor, query_pos: Tensor, key_padding_mask: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, valid_ratios: Tensor,
                **kwargs) -> Tensor:
        """mmdet's encoder loop; the first ``with_cp`` layers are checkpointed.

        Args:
            query (Tensor): Flattened maps, (bs, num_queries, dim).
            query_pos (Tensor): Positional + level embeddings, same shape.
            key_padding_mask (Tensor): (bs, num_queries), True at padding.
            spatial_shapes (Tensor): (num_levels, 2) as (h, w).
            level_start_index (Tensor): (num_levels, ).
            valid_ratios (Tensor): (bs, num_levels, 2).

        Returns:
            Tensor: The memory, (bs, num_queries, dim).
        """
        reference_points = self.get_encoder_reference_points(
            spatial_shapes, valid_ratios, device=query.device)
        layer_kwargs = dict(query_pos=query_pos, key_padding_mask=key_padding_mask,
                            spatial_shapes=spatial_shapes,
                            level_start_index=level_start_index, valid_ratios=valid_ratios,
                            reference_points=reference_points, **kwargs)
        recompute = self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute and i < self.with_cp:
                query = checkpoint(layer, query, use_reentrant=False, **layer_kwargs)
            else:
                query = layer(query, **layer_kwargs)
        return query


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


class CoDinoTransformerDecoder(DinoTransformerDecoder):
    """mmdet's DINO decoder built of :class:`CoDeformableDetrTransformerDecoderLayer`.

    As in DINO and the official Co-DINO, the positional query of every layer
    is ``ref_point_head`` (MLP 2C -> C -> C) of the sine embedding of its
    reference box (order y, x, w, h; ``embed_dims / 2`` frequencies per
    coordinate, so that any width works, not only 256), box refinement uses
    ``inverse_sigmoid(ref, eps=1e-3)``, the hidden states pass through the
    shared ``norm`` and the returned references are the undetached refined
    boxes (look-forward-twice) after the initial ones.
    """

    def _init_layers(self) -> None:
        """Decoder layers, ``ref_point_head`` and the output norm."""
        if self.post_norm_cfg is not None:
            raise ValueError(f'{type(self).__name__}: post_norm_cfg must be None, got '
                             f'{self.post_norm_cfg}')
        if not self.return_intermediate:
            raise ValueError(f'{type(self).__name__}: return_intermediate must be True (the '
                             'head predicts from every layer)')
        self.layers = ModuleList(
            CoDeformableDetrTransformerDecoderLayer(**self.layer_cfg)
            for _ in range(self.num_layers))
        self.embed_dims = self.layers[0].embed_dims
        self.ref_point_head = MLP(self.embed_dims * 2, self.embed_dims, self.embed_dims, 2)
        self.norm = nn.LayerNorm(self.embed_dims)

    def forward(self,
                query: Tensor,
                value: Tensor,
                key_padding_mask: Optional[Tensor],
                self_attn_mask: Optional[Tensor],
                reference_points: Tensor,
                spatial_shapes: Tensor,
                level_start_index: Tensor,
                valid_ratios: Tensor,
                reg_branches: nn.ModuleList,
                **kwargs) -> Tuple[Tensor, Tensor]:
        """Run all decoder layers.

        Args:
            query (Tensor): Content queries, (bs, nq, dim).
            value (Tensor): Flattened encoder memory, (bs, num_value, dim).
            key_padding_mask (Tensor, optional): (bs, num_value), True at padding.
            self_attn_mask (Tensor, optional): Boolean (nq, nq) or
                (bs * num_heads, nq, nq), True = may not attend (denoising groups).
            reference_points (Tensor): Initial boxes, normalised cxcywh, (bs, nq, 4).
            spatial_shapes (Tensor): (num_levels, 2).
            level_start_index (Tensor): (num_levels, ).
            valid_ratios (Tensor): (bs, num_levels, 2).
            reg_branches (nn.ModuleList): Per-layer box branches.

        Returns:
            tuple[Tensor, Tensor]: Normalised hidden states (num_layers, bs, nq, dim)
            and references (num_layers + 1, bs, nq, 4): the initial boxes, then
            each layer's refined boxes with their gradient.
        """
        if reference_points.size(-1) != 4:
            raise ValueError(f'{type(self).__name__} expects 4-d reference boxes, got '
                             f'{reference_points.size(-1)}-d')
        intermediate, references = [], [reference_points]
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (bs, 1, nl, 4)
        for layer_id, layer in enumerate(self.layers):
            reference_points_input = reference_points[:, :, None] * ratios
            query_sine_embed = coordinate_to_encoding(
                reference_points_input[:, :, 0, :], num_feats=self.embed_dims // 2)
            query_pos = self.ref_point_head(query_sine_embed)
            query = layer(
                query,
                query_pos=query_pos,
                value=value,
                key_padding_mask=key_padding_mask,
                self_attn_mask=self_attn_mask,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                valid_ratios=valid_ratios,
                reference_points=reference_points_input,
                **kwargs)
            new_reference_points = (reg_branches[layer_id](query) + inverse_sigmoid(
                reference_points, eps=1e-3)).sigmoid()
            reference_points = new_reference_points.detach()
            intermediate.append(self.norm(query))
            references.append(new_reference_points)  # look forward twice
        return torch.stack(intermediate), torch.stack(references)
