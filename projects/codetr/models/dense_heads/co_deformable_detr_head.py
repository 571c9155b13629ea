"""Deformable-DETR++ query head of Co-DETR with the auxiliary-query branch."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmcv.cnn.bricks.transformer import MultiScaleDeformableAttention
from mmdet.models.dense_heads import DeformableDETRHead
from mmdet.models.detectors import DeformableDETR
from mmdet.models.layers import SinePositionalEncoding
from mmdet.models.layers.transformer.utils import inverse_sigmoid
from mmdet.models.losses import QualityFocalLoss
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps
from mmdet.utils import ConfigType, reduce_mean
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ..layers.aux_queries import AuxQueryTargets
from ..layers.co_transformer import (
    CoDeformableDetrTransformerDecoder,
    CoDeformableDetrTransformerEncoder,
    pixel_centres,
)


@MODELS.register_module()
class CoDeformDETRHead(DeformableDETRHead):
    """Deformable-DETR++ query head (two-stage, box refine, mixed selection,
    look-forward-twice) that also decodes Co-DETR's auxiliary queries.

    Unlike mmdet's Deformable DETR, where the transformer lives in the
    detector, Co-DETR keeps it in the head: the encoder output is handed back
    to the detector as 5 feature maps (the 4 encoder levels plus a stride-2
    conv + GN level) on which the auxiliary heads are trained.

    Args:
        num_query (int): Number of queries (two-stage top-k). Defaults to 300.
        encoder (dict): Config of :class:`CoDeformableDetrTransformerEncoder`.
        decoder (dict): Config of :class:`CoDeformableDetrTransformerDecoder`.
        positional_encoding (dict): Config of :class:`SinePositionalEncoding`.
        num_feature_levels (int): Encoder levels. Defaults to 4.
        with_box_refine (bool): Iterative box refinement. Defaults to True.
        as_two_stage (bool): Two-stage proposals; must be True.
        mixed_selection (bool): Positional queries from the top-k proposals,
            content queries learned. Defaults to True.
        num_co_heads (int): Number K of auxiliary heads whose positives become
            query groups; builds K query projections. Defaults to 2.
        with_coord_feat (bool): Add the auxiliary head's feature of each
            positive to its content query. Defaults to True.
        max_pos_coords (int): Cap of auxiliary queries per head and image.
            Defaults to 300.
        lambda_1 (float): Weight of the auxiliary-query losses. Defaults to 1.
        use_zero_padding (bool): Pad auxiliary queries with masked zeros
            instead of negatives. Defaults to False.
    """

    # Co-DETR: reuse the transformer plumbing of mmdet's DeformableDETR
    # detector; these functions only use attributes this head defines with the
    # same names (positional_encoding, level_embed, encoder, memory_trans_*).
    pre_transformer = DeformableDETR.pre_transformer
    forward_encoder = DeformableDETR.forward_encoder

    def gen_encoder_output_proposals(self, memory: Tensor, memory_mask: Optional[Tensor],
                                     spatial_shapes: Tensor) -> Tuple[Tensor, Tensor]:
        """mmdet's two-stage proposals (``DeformableDETR.gen_encoder_output_proposals``);
        while exporting to ONNX (no padding mask) built from :func:`pixel_centres`, which
        gives the same values in a graph whose H and W stay symbolic.

        Returns:
            tuple[Tensor, Tensor]: The transformed memory (bs, num_feat_points, dim) and the
            proposals in inverse-sigmoid cxcywh, (bs, num_feat_points, 4).
        """
        if memory_mask is not None or not torch.onnx.is_in_onnx_export():
            return DeformableDETR.gen_encoder_output_proposals(self, memory, memory_mask,
                                                               spatial_shapes)
        proposals = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            centres = torch.stack(pixel_centres(h, w, memory.device), -1)  # (h * w, 2)
            centres = centres / torch.stack((w, h))
            size = torch.ones_like(centres) * 0.05 * (2.0**lvl)
            proposals.append(torch.cat((centres, size), -1))
        proposals = torch.cat(proposals).expand(memory.size(0), -1, -1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float('inf'))
        memory = memory.masked_fill(~valid, 0.0)
        return self.memory_trans_norm(self.memory_trans_fc(memory)), proposals
    get_valid_ratio = staticmethod(DeformableDETR.get_valid_ratio)
    get_proposal_pos_embed = staticmethod(DeformableDETR.get_proposal_pos_embed)

    def __init__(self,
                 *args,
                 num_query: int = 300,
                 encoder: ConfigType,
                 decoder: ConfigType,
                 positional_encoding: ConfigType,
                 num_feature_levels: int = 4,
                 with_box_refine: bool = True,
                 as_two_stage: bool = True,
                 mixed_selection: bool = True,
                 num_co_heads: int = 2,
                 with_coord_feat: bool = True,
                 max_pos_coords: int = 300,
                 lambda_1: float = 1.0,
                 use_zero_padding: bool = False,
                 **kwargs) -> None:
        if not as_two_stage:
            raise ValueError('CoDeformDETRHead: only as_two_stage=True is implemented '
                             '(the Deformable-DETR++ query head of Co-DETR)')
        self.num_query = num_query
        self.encoder_cfg = encoder
        self.decoder_cfg = decoder
        self.positional_encoding_cfg = positional_encoding
        self.num_feature_levels = num_feature_levels
        self.with_box_refine = with_box_refine
        self.mixed_selection = mixed_selection
        self.num_co_heads = num_co_heads
        self.with_coord_feat = with_coord_feat
        self.max_pos_coords = max_pos_coords
        self.lambda_1 = lambda_1
        self.use_zero_padding = use_zero_padding
        super().__init__(
            *args,
            share_pred_layer=not with_box_refine,
            num_pred_layer=decoder['num_layers'] + 1,
            as_two_stage=True,
            **kwargs)

    def _init_layers(self) -> None:
        """Build prediction branches, transformer and auxiliary projections."""
        super()._init_layers()
        self._init_transformer(CoDeformableDetrTransformerEncoder,
                               CoDeformableDetrTransformerDecoder)
        embed_dims = self.embed_dims
        self.pos_trans_fc = nn.Linear(embed_dims * 2, embed_dims * 2)
        self.pos_trans_norm = nn.LayerNorm(embed_dims * 2)
        if self.mixed_selection:
            # content queries; positional queries come from the proposals
            self.query_embedding = nn.Embedding(self.num_query, embed_dims)
        self._init_downsample()  # after the queries: keeps the official init RNG order
        if self.num_co_heads > 0:
            k = self.num_co_heads
            self.aux_pos_trans_fc = nn.ModuleList(
                nn.Linear(embed_dims * 2, embed_dims * 2) for _ in range(k))
            self.aux_pos_trans_norm = nn.ModuleList(
                nn.LayerNorm(embed_dims * 2) for _ in range(k))
            self.pos_feats_trans = nn.ModuleList(
                nn.Linear(embed_dims, embed_dims) for _ in range(k))
            self.pos_feats_norm = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(k))
            # Co-DETR: the official nn.Embedding(K, 1, ...) holds one scalar per
            # head, broadcast over channels; kept for checkpoint compatibility.
            self.head_pos_embed = nn.Embedding(k, 1)

    def _init_transformer(self, encoder_type: type, decoder_type: type) -> None:
        """Positional encoding, encoder, decoder, level embeddings and the
        proposal projection."""
        self.positional_encoding = SinePositionalEncoding(**self.positional_encoding_cfg)
        self.encoder = encoder_type(**self.encoder_cfg)
        self.decoder = decoder_type(**self.decoder_cfg)
        embed_dims = self.encoder.embed_dims
        name = type(self).__name__
        if embed_dims != self.embed_dims or self.decoder.embed_dims != embed_dims:
            raise ValueError(
                f'{name}: embed_dims={self.embed_dims} but the encoder has '
                f'{embed_dims} and the decoder {self.decoder.embed_dims}')
        if self.positional_encoding.num_feats * 2 != embed_dims:
            raise ValueError(
                f'{name}: positional_encoding.num_feats must be embed_dims / 2 '
                f'({embed_dims // 2}), got {self.positional_encoding.num_feats}')
        self.level_embed = nn.Parameter(torch.empty(self.num_feature_levels, embed_dims))
        self.memory_trans_fc = nn.Linear(embed_dims, embed_dims)
        self.memory_trans_norm = nn.LayerNorm(embed_dims)

    def _init_downsample(self) -> None:
        """The extra stride-2 level of the aux heads: (bs, c, h, w) -> (bs, c, h/2, w/2)."""
        self.downsample = nn.Sequential(
            nn.Conv2d(self.embed_dims, self.embed_dims, 3, stride=2, padding=1),
            nn.GroupNorm(32, self.embed_dims))

    def _xavier_init_modules(self) -> List[nn.Module]:
        """Modules whose weights (dim > 1) the official transformer xavier-initialises."""
        parts = [self.encoder, self.decoder, self.memory_trans_fc, self.pos_trans_fc]
        if self.num_co_heads > 0:
            parts += [self.aux_pos_trans_fc, self.pos_feats_trans, self.head_pos_embed]
        return parts

    def init_weights(self) -> None:
        """Initialise branches (mmdet) and the transformer (xavier, as official)."""
        super().init_weights()
        for part in self._xavier_init_modules():
            for p in part.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.init_weights()
        nn.init.normal_(self.level_embed)

    # ------------------------------------------------------------------ main branch
    def pre_decoder(self, memory: Tensor, memory_mask: Optional[Tensor],
                    spatial_shapes: Tensor) -> Tuple[Dict, Dict]:
        """Two-stage proposals -> top-k decoder queries (mixed selection).

        Args:
            memory (Tensor): Encoder output, (bs, num_feat_points, dim).
            memory_mask (Tensor, optional): Padding mask, (bs, num_feat_points).
            spatial_shapes (Tensor): (num_levels, 2).

        Returns:
            tuple[dict, dict]: Decoder inputs (query, query_pos, memory,
            reference_points) and encoder-proposal outputs for the loss.
        """
        bs, num_points, c = memory.shape
        output_memory, output_proposals = self.gen_encoder_output_proposals(
            memory, memory_mask, spatial_shapes)
        num_layers = self.decoder.num_layers
        enc_outputs_class = self.cls_branches[num_layers](output_memory)
        enc_outputs_coord_unact = self.reg_branches[num_layers](output_memory) + output_proposals
        # Only the first channel scores the proposals (class-agnostic targets).
        num_query = min(self.num_query, num_points)  # tiny inputs have few tokens
        topk_proposals = torch.topk(enc_outputs_class[..., 0], num_query, dim=1)[1]
        topk_coords_unact = torch.gather(
            enc_outputs_coord_unact, 1,
            topk_proposals.unsqueeze(-1).repeat(1, 1, 4)).detach()  # (bs, nq, 4)
        reference_points = topk_coords_unact.sigmoid()
        pos_trans_out = self.pos_trans_norm(self.pos_trans_fc(
            self.get_proposal_pos_embed(topk_coords_unact, num_pos_feats=c // 2)))
        if self.mixed_selection:
            query_pos = pos_trans_out[..., :c]
            query = self.query_embedding.weight[:num_query].unsqueeze(0).expand(bs, -1, -1)
        else:
            query_pos, query = torch.split(pos_trans_out, c, dim=2)
        decoder_inputs = dict(query=query, query_pos=query_pos, memory=memory,
                              reference_points=reference_points)
        head_inputs = dict(enc_outputs_class=enc_outputs_class,
                           enc_outputs_coord=enc_outputs_coord_unact.sigmoid())
        return decoder_inputs, head_inputs

    def forward_transformer(self, mlvl_feats: Sequence[Tensor],
                            batch_data_samples: SampleList) -> Dict:
        """Encoder -> two-stage selection -> decoder.

        Args:
            mlvl_feats (Sequence[Tensor]): Neck outputs, each (bs, c, h, w).
            batch_data_samples (list[DetDataSample]): Provide ``img_shape``
                and ``batch_input_shape``.

        Returns:
            dict: ``hidden_states`` (num_layers, bs, nq, c), ``references``
            (list of num_layers + 1 tensors (bs, nq, 4)), ``enc_outputs_class``,
            ``enc_outputs_coord`` and ``memory`` (bs, num_feat_points, c).
        """
        encoder_inputs, decoder_inputs = self.pre_transformer(mlvl_feats, batch_data_samples)
        encoder_outputs = self.forward_encoder(**encoder_inputs)
        dec_inputs, head_inputs = self.pre_decoder(**encoder_outputs)
        hidden_states, inter_references = self.decoder(
            query=dec_inputs['query'],
            query_pos=dec_inputs['query_pos'],
            value=dec_inputs['memory'],
            key_padding_mask=decoder_inputs['memory_mask'],
            reference_points=dec_inputs['reference_points'],
            spatial_shapes=decoder_inputs['spatial_shapes'],
            level_start_index=decoder_inputs['level_start_index'],
            valid_ratios=decoder_inputs['valid_ratios'],
            reg_branches=self.reg_branches if self.with_box_refine else None)
        return dict(hidden_states=hidden_states,
                    references=[dec_inputs['reference_points'], *inter_references],
                    memory=encoder_outputs['memory'], **head_inputs)

    def encoder_maps(self, memory: Tensor, mlvl_feats: Sequence[Tensor]) -> List[Tensor]:
        """Encoder memory -> the 5 maps used by the auxiliary heads.

        Args:
            memory (Tensor): (bs, sum(h_l * w_l), c).
            mlvl_feats (Sequence[Tensor]): The encoder's input maps (for shapes).

        Returns:
            list[Tensor]: 4 maps (bs, c, h_l, w_l) plus the downsampled one.
        """
        maps, start = [], 0
        for feat in mlvl_feats:
            bs, c, h, w = feat.shape
            # (bs, h*w, c) -> (bs, c, h, w); contiguous like the official maps: the
            # convolutions of the aux heads and of `downsample` take another kernel on a
            # strided view, and its ~1e-6 differences reorder near-tied RPN scores.
            maps.append(memory[:, start:start + h * w].permute(0, 2, 1).reshape(
                bs, c, h, w).contiguous())
            start += h * w
        maps.append(self.downsample(maps[-1]))
        return maps

    def forward_encoder_maps(self, mlvl_feats: Sequence[Tensor],
                             batch_data_samples: SampleList) -> List[Tensor]:
        """Run only the encoder and return its 5 maps (for aux-head inference)."""
        encoder_inputs, _ = self.pre_transformer(mlvl_feats, batch_data_samples)
        memory = self.forward_encoder(**encoder_inputs)['memory']
        return self.encoder_maps(memory, mlvl_feats)

    def loss(self, mlvl_feats: Sequence[Tensor], batch_data_samples: SampleList,
             return_maps: bool = True, return_proposals: bool = False,
             proposals_with_dn: bool = True) -> Tuple:
        """Hungarian losses of the main branch plus the encoder maps.

        Args:
            mlvl_feats (Sequence[Tensor]): Neck outputs, each (bs, c, h, w).
            batch_data_samples (list[DetDataSample]): With ``gt_instances``.
            return_maps (bool): Build the 5 encoder maps (skipped when no
                auxiliary head needs them). Defaults to True.
            return_proposals (bool): Also return :meth:`training_proposals` (the
                detector-level mask branch trains on them). Defaults to False.
            proposals_with_dn (bool): Unused here (no denoising queries).

        Returns:
            tuple: Loss dict and the 5 encoder maps (or None), plus the proposals
            when ``return_proposals``.
        """
        out = self.forward_transformer(mlvl_feats, batch_data_samples)
        batch_gt_instances = [s.gt_instances for s in batch_data_samples]
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        all_cls, all_coords = self(out['hidden_states'], out['references'])
        losses = self.loss_by_feat(all_cls, all_coords, out['enc_outputs_class'],
                                   out['enc_outputs_coord'], batch_gt_instances,
                                   batch_img_metas)
        maps = self.encoder_maps(out['memory'], mlvl_feats) if return_maps else None
        if not return_proposals:
            return losses, maps
        return losses, maps, self.training_proposals(all_cls[-1], all_coords[-1],
                                                     batch_img_metas)

    @torch.no_grad()
    def training_proposals(self, cls_scores: Tensor, bbox_preds: Tensor,
                           batch_img_metas: List[dict]) -> List[Tensor]:
        """Boxes of the last decoder layer for the mask branch's training (official rule).

        Per image: the top ``test_cfg.max_per_img`` (query, class) pairs by sigmoid score
        (a query can appear once per class), scores above ``test_cfg.score_thr`` (default
        0), boxes in input pixels clamped to ``img_shape``; no NMS, labels dropped.

        Args:
            cls_scores (Tensor): (bs, nq, num_classes) logits.
            bbox_preds (Tensor): (bs, nq, 4) normalised cxcywh.
            batch_img_metas (list[dict]): With ``img_shape``.

        Returns:
            list[Tensor]: Per image (k, 5) = (x1, y1, x2, y2, score), detached.
        """
        max_per_img = self.test_cfg.get('max_per_img', self.num_query)
        score_thr = self.test_cfg.get('score_thr', 0)
        proposals = []
        for cls_score, bbox_pred, meta in zip(cls_scores, bbox_preds, batch_img_metas):
            scores, indexes = cls_score.sigmoid().flatten().topk(
                min(max_per_img, cls_score.numel()))
            boxes = bbox_cxcywh_to_xyxy(bbox_pred[indexes // self.num_classes])
            img_h, img_w = meta['img_shape'][:2]
            boxes = boxes * boxes.new_tensor([img_w, img_h, img_w, img_h])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=img_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=img_h)
            keep = scores > score_thr
            proposals.append(torch.cat([boxes, scores[:, None]], dim=1)[keep])
        return proposals

    def predict(self, mlvl_feats: Sequence[Tensor], batch_data_samples: SampleList,
                rescale: bool = True, return_maps: bool = False):
        """Detections of the last decoder layer (plus the encoder maps when asked)."""
        out = self.forward_transformer(mlvl_feats, batch_data_samples)
        all_cls, all_coords = self(out['hidden_states'], out['references'])
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        results = self.predict_by_feat(all_cls, all_coords, batch_img_metas, rescale=rescale)
        if not return_maps:
            return results
        return results, self.encoder_maps(out['memory'], mlvl_feats)

    def _predict_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict,
                                rescale: bool = True) -> InstanceData:
        """mmdet's top-k post-processing, with k capped at queries x classes.

        Co-DETR: a tiny image has fewer encoder tokens than ``num_query``, so the
        two-stage selection keeps fewer queries and ``max_per_img`` can exceed
        the number of (query, class) pairs.
        """
        limit = cls_score.numel()
        test_cfg = self.test_cfg
        if test_cfg.get('max_per_img', limit) <= limit:
            return super()._predict_by_feat_single(cls_score, bbox_pred, img_meta, rescale)
        self.test_cfg = ConfigDict({**test_cfg, 'max_per_img': limit})
        try:
            return super()._predict_by_feat_single(cls_score, bbox_pred, img_meta, rescale)
        finally:
            self.test_cfg = test_cfg

    # -------------------------------------------------------------- auxiliary branch
    def aux_value_inputs(self, enc_maps: Sequence[Tensor],
                         batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """Decoder values of the auxiliary branch, shared by all auxiliary heads.

        Returns:
            dict: ``value`` (the first ``num_feature_levels`` encoder maps
            flattened, (bs, num_value, c)), ``key_padding_mask``,
            ``spatial_shapes``, ``level_start_index`` and ``valid_ratios``.
        """
        encoder_inputs, decoder_inputs = self.pre_transformer(
            enc_maps[:self.num_feature_levels], batch_data_samples)
        return dict(value=encoder_inputs['feat'],
                    key_padding_mask=decoder_inputs['memory_mask'],
                    spatial_shapes=decoder_inputs['spatial_shapes'],
                    level_start_index=decoder_inputs['level_start_index'],
                    valid_ratios=decoder_inputs['valid_ratios'])

    def _aux_decoder_inputs(self, enc_maps: Sequence[Tensor], aux: AuxQueryTargets,
                            head_idx: int, batch_data_samples: SampleList,
                            value_inputs: Optional[Dict[str, Tensor]]
                            ) -> Tuple[Dict[str, Tensor], Optional[Tensor]]:
        """Check ``head_idx``; the decoder values (built when None) and the
        zero-padding self-attention mask, (bs * num_heads, N, N) or None."""
        if not 0 <= head_idx < self.num_co_heads:
            raise IndexError(f'{type(self).__name__}: auxiliary head index {head_idx} is out '
                             f'of range for num_co_heads={self.num_co_heads}')
        if value_inputs is None:
            value_inputs = self.aux_value_inputs(enc_maps, batch_data_samples)
        self_attn_mask = None
        if aux.attn_mask is not None:
            num_heads = self.decoder.layers[0].self_attn.num_heads
            # (bs, N, N) -> (bs * num_heads, N, N)
            self_attn_mask = aux.attn_mask.repeat_interleave(num_heads, dim=0)
        return value_inputs, self_attn_mask

    def forward_aux(self, enc_maps: Sequence[Tensor], aux: AuxQueryTargets,
                    head_idx: int, batch_data_samples: SampleList,
                    value_inputs: Optional[Dict[str, Tensor]] = None
                    ) -> Tuple[Tensor, Tensor]:
        """Decode the auxiliary queries of head ``head_idx``.

        Args:
            enc_maps (Sequence[Tensor]): The 5 encoder maps; the first
                ``num_feature_levels`` are the decoder's values.
            aux (AuxQueryTargets): Queries (normalised cxcywh) and features.
            head_idx (int): Index k of the auxiliary head.
            batch_data_samples (list[DetDataSample]): For masks/valid ratios.
            value_inputs (dict, optional): :meth:`aux_value_inputs`, computed
                once for all heads; built here when None.

        Returns:
            tuple[Tensor, Tensor]: Class logits (num_layers, bs, N, C) and
            boxes (num_layers, bs, N, 4), normalised cxcywh.
        """
        value_inputs, self_attn_mask = self._aux_decoder_inputs(
            enc_maps, aux, head_idx, batch_data_samples, value_inputs)
        c = self.embed_dims
        pos = self.get_proposal_pos_embed(inverse_sigmoid(aux.coords), num_pos_feats=c // 2)
        pos_trans_out = self.aux_pos_trans_norm[head_idx](self.aux_pos_trans_fc[head_idx](pos))
        query_pos, query = torch.split(pos_trans_out, c, dim=2)  # 2 x (bs, N, c)
        if self.with_coord_feat:
            feats = self.pos_feats_trans[head_idx](aux.feats)
            query = query + self.pos_feats_norm[head_idx](feats)
            query_pos = query_pos + self.head_pos_embed.weight[head_idx]
        hidden_states, inter_references = self.decoder(
            query=query,
            query_pos=query_pos,
            reference_points=aux.coords,
            **value_inputs,
            reg_branches=self.reg_branches if self.with_box_refine else None,
            self_attn_mask=self_attn_mask)
        return self(hidden_states, [aux.coords, *inter_references])

    def loss_aux(self, enc_maps: Sequence[Tensor], aux: AuxQueryTargets, head_idx: int,
                 batch_data_samples: SampleList,
                 value_inputs: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        """Losses of the auxiliary queries of one head (fixed targets).

        Returns:
            dict[str, Tensor]: ``loss_{cls,bbox,iou}_aux`` for the last layer and
            ``d{l}.loss_{cls,bbox,iou}_aux`` for the others; the detector appends
            the head index.
        """
        all_cls, all_coords = self.forward_aux(enc_maps, aux, head_idx, batch_data_samples,
                                               value_inputs)
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        losses = {}
        num_layers = all_cls.size(0)
        for layer, (cls_scores, bbox_preds) in enumerate(zip(all_cls, all_coords)):
            loss_cls, loss_bbox, loss_iou = self.loss_aux_single(
                cls_scores, bbox_preds, aux, batch_img_metas)
            prefix = '' if layer == num_layers - 1 else f'd{layer}.'
            losses[f'{prefix}loss_cls_aux'] = loss_cls
            losses[f'{prefix}loss_bbox_aux'] = loss_bbox
            losses[f'{prefix}loss_iou_aux'] = loss_iou
        return losses

    def loss_aux_single(self, cls_scores: Tensor, bbox_preds: Tensor, aux: AuxQueryTargets,
                        batch_img_metas: List[dict]) -> Tuple[Tensor, Tensor, Tensor]:
        """Focal (or quality focal) / L1 / GIoU losses of one decoder layer
        against fixed targets.

        Args:
            cls_scores (Tensor): (bs, N, num_classes) logits.
            bbox_preds (Tensor): (bs, N, 4) normalised cxcywh.
            aux (AuxQueryTargets): Labels, weights and targets, (bs, N, ...).
            batch_img_metas (list[dict]): For ``img_shape``.

        Returns:
            tuple[Tensor]: The three losses, each times ``lambda_1``.
        """
        labels = aux.labels.reshape(-1)
        num_pos = int(((labels >= 0) & (labels < self.num_classes)).sum())
        num_neg = labels.numel() - num_pos
        cls_avg_factor = num_pos * 1.0 + num_neg * self.bg_cls_weight
        if self.sync_cls_avg_factor:
            cls_avg_factor = reduce_mean(cls_scores.new_tensor([cls_avg_factor]))
        cls_avg_factor = max(cls_avg_factor, 1)
        cls_target = labels
        if isinstance(self.loss_cls, QualityFocalLoss):
            # Co-DINO: the positives' soft target is the IoU of the (detached)
            # predicted box with the aux target, normalised xyxy; negatives 0.
            is_pos = (labels >= 0) & (labels < self.num_classes)
            quality = cls_scores.new_zeros(labels.shape)
            quality[is_pos] = bbox_overlaps(
                bbox_cxcywh_to_xyxy(bbox_preds.reshape(-1, 4)[is_pos].detach()),
                bbox_cxcywh_to_xyxy(aux.bbox_targets.reshape(-1, 4)[is_pos]),
                is_aligned=True)
            cls_target = (labels, quality)
        loss_cls = self.loss_cls(cls_scores.reshape(-1, self.cls_out_channels), cls_target,
                                 aux.label_weights.reshape(-1), avg_factor=cls_avg_factor)

        num_total_pos = torch.clamp(reduce_mean(loss_cls.new_tensor([num_pos])), min=1).item()
        factors = torch.stack([bbox_preds.new_tensor([m['img_shape'][1], m['img_shape'][0]] * 2)
                               for m in batch_img_metas])  # (bs, 4)
        bbox_weights = aux.bbox_weights.reshape(-1, 4)
        bboxes = (bbox_cxcywh_to_xyxy(bbox_preds) * factors[:, None]).reshape(-1, 4)
        bboxes_gt = (bbox_cxcywh_to_xyxy(aux.bbox_targets) * factors[:, None]).reshape(-1, 4)
        loss_iou = self.loss_iou(bboxes, bboxes_gt, bbox_weights, avg_factor=num_total_pos)
        loss_bbox = self.loss_bbox(bbox_preds.reshape(-1, 4), aux.bbox_targets.reshape(-1, 4),
                                   bbox_weights, avg_factor=num_total_pos)
        return (loss_cls * self.lambda_1, loss_bbox * self.lambda_1, loss_iou * self.lambda_1)
