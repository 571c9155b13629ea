"""DINO query head of Co-DINO with the auxiliary-query branch."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmcv.ops import batched_nms
from mmdet.models.dense_heads import DINOHead
from mmdet.models.layers import CdnQueryGenerator
from mmdet.models.layers.transformer.utils import inverse_sigmoid
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmdet.utils import OptConfigType
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ..layers.aux_queries import AuxQueryTargets
from ..layers.co_transformer import CoDeformableDetrTransformerEncoder, CoDinoTransformerDecoder
from .co_deformable_detr_head import CoDeformDETRHead


@MODELS.register_module()
class CoDINOHead(CoDeformDETRHead, DINOHead):
    """DINO query head (Co-DINO) that also decodes Co-DETR's auxiliary queries.

    Differences from :class:`CoDeformDETRHead` (the official Co-DINO):

    - two-stage top-k ranked by the maximum class logit; the encoder loss sees
      only the top-k proposals (``enc_loss_*``), with gradient through their
      boxes;
    - content queries are the learned ``query_embedding`` (no ``pos_trans``);
      positional queries come from the reference boxes in every decoder layer
      (:class:`CoDinoTransformerDecoder`);
    - contrastive denoising queries during training (mmdet's
      :class:`CdnQueryGenerator`: label noise, positive and negative box
      noise, dynamic groups) with their ``dn_loss_*`` (mmdet's
      :class:`DINOHead` losses);
    - auxiliary queries: content ``LN_k(Linear_k(sine(coords)))`` from 2C to C;
      their position comes from ``ref_point_head`` like every other query;
    - predictions use ``inverse_sigmoid(ref, eps=1e-3)``;
    - test-time soft-NMS when ``test_cfg.nms`` is set: the top ``num_query``
      (query, class) pairs, then class-aware NMS, then ``max_per_img``.

    Args:
        num_query (int): Matching queries (two-stage top-k). Defaults to 900.
        dn_cfg (dict, optional): :class:`CdnQueryGenerator` arguments
            (``label_noise_scale``, ``box_noise_scale``, ``group_cfg``);
            ``num_classes``, ``embed_dims`` and ``num_matching_queries`` are
            set by the head. None disables denoising.
        with_coord_feat (bool): Add the aux heads' features of the positives
            to their content queries. Defaults to False (all official configs).
        *args, **kwargs: See :class:`CoDeformDETRHead`.
    """

    def __init__(self,
                 *args,
                 num_query: int = 900,
                 dn_cfg: OptConfigType = None,
                 with_coord_feat: bool = False,
                 **kwargs) -> None:
        if dn_cfg is not None:
            set_by_head = {'num_classes', 'embed_dims', 'num_matching_queries'} & set(dn_cfg)
            if set_by_head:
                raise ValueError(f'CoDINOHead: dn_cfg must not set {sorted(set_by_head)}; '
                                 'the head sets them from num_classes, embed_dims, num_query')
        if kwargs.get('mixed_selection', True) is not True:
            raise ValueError('CoDINOHead: mixed_selection must be True (DINO learns the '
                             'content queries and takes positions from the proposals)')
        if not kwargs.get('with_box_refine', True):
            raise ValueError('CoDINOHead: with_box_refine must be True for DINO')
        self.dn_cfg = dn_cfg
        super().__init__(*args, num_query=num_query, with_coord_feat=with_coord_feat, **kwargs)

    def _init_layers(self) -> None:
        """Branches, transformer, denoising labels and aux-query projections."""
        super(CoDeformDETRHead, self)._init_layers()  # mmdet's cls/reg branches
        self._init_transformer(CoDeformableDetrTransformerEncoder, CoDinoTransformerDecoder)
        embed_dims = self.embed_dims
        self.query_embedding = nn.Embedding(self.num_query, embed_dims)
        self.dn_query_generator = None
        if self.dn_cfg is not None:
            self.dn_query_generator = CdnQueryGenerator(
                **self.dn_cfg, num_classes=self.num_classes, embed_dims=embed_dims,
                num_matching_queries=self.num_query)
        self._init_downsample()
        if self.num_co_heads > 0:
            k = self.num_co_heads
            self.aux_pos_trans_fc = nn.ModuleList(
                nn.Linear(embed_dims * 2, embed_dims) for _ in range(k))
            self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(k))
            if self.with_coord_feat:
                self.pos_feats_trans = nn.ModuleList(
                    nn.Linear(embed_dims, embed_dims) for _ in range(k))
                self.pos_feats_norm = nn.ModuleList(
                    nn.LayerNorm(embed_dims) for _ in range(k))

    def _xavier_init_modules(self) -> List[nn.Module]:
        """Encoder, decoder (``ref_point_head`` included), proposal projection,
        content queries and aux-query projections, as the official transformer."""
        parts = [self.encoder, self.decoder, self.memory_trans_fc, self.query_embedding]
        if self.num_co_heads > 0:
            parts.append(self.aux_pos_trans_fc)
            if self.with_coord_feat:
                parts.append(self.pos_feats_trans)
        return parts

    def init_weights(self) -> None:
        """As :class:`CoDeformDETRHead`, then content queries ~ N(0, 1)."""
        super().init_weights()
        nn.init.normal_(self.query_embedding.weight)

    def forward(self, hidden_states: Tensor,
                references: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """Class logits and boxes of every decoder layer.

        Args:
            hidden_states (Tensor): (num_layers, bs, nq, dim).
            references (Sequence[Tensor]): num_layers + 1 tensors
                (bs, nq, 4), normalised cxcywh; layer ``l`` predicts offsets
                to ``references[l]``.

        Returns:
            tuple[Tensor, Tensor]: Logits (num_layers, bs, nq, C) and boxes
            (num_layers, bs, nq, 4), normalised cxcywh.
        """
        all_cls, all_coords = [], []
        for layer_id, hidden in enumerate(hidden_states):
            reference = inverse_sigmoid(references[layer_id], eps=1e-3)
            all_cls.append(self.cls_branches[layer_id](hidden))
            all_coords.append((self.reg_branches[layer_id](hidden) + reference).sigmoid())
        return torch.stack(all_cls), torch.stack(all_coords)

    # ------------------------------------------------------------------ main branch
    def pre_decoder(self, memory: Tensor, memory_mask: Optional[Tensor],
                    spatial_shapes: Tensor,
                    batch_data_samples: Optional[SampleList] = None) -> Tuple[Dict, Dict]:
        """Top-k proposals by the maximum class logit, plus denoising queries.

        Args:
            memory (Tensor): Encoder output, (bs, num_feat_points, dim).
            memory_mask (Tensor, optional): Padding mask, (bs, num_feat_points).
            spatial_shapes (Tensor): (num_levels, 2).
            batch_data_samples (list[DetDataSample], optional): With
                ``gt_instances``; given, denoising queries are prepended.

        Returns:
            tuple[dict, dict]: Decoder inputs (``query``, ``reference_points``,
            ``dn_mask``) and head inputs (``enc_outputs_class`` and
            ``enc_outputs_coord`` of the top-k, ``dn_meta``).
        """
        bs, num_points, _ = memory.shape
        output_memory, output_proposals = self.gen_encoder_output_proposals(
            memory, memory_mask, spatial_shapes)
        num_layers = self.decoder.num_layers
        enc_outputs_class = self.cls_branches[num_layers](output_memory)
        enc_outputs_coord_unact = self.reg_branches[num_layers](output_memory) + output_proposals
        num_query = min(self.num_query, num_points)  # tiny inputs have few tokens
        topk = torch.topk(enc_outputs_class.max(-1)[0], num_query, dim=1)[1]
        topk_score = torch.gather(
            enc_outputs_class, 1, topk[..., None].expand(-1, -1, enc_outputs_class.size(-1)))
        topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1,
                                         topk[..., None].expand(-1, -1, 4))
        topk_coords = topk_coords_unact.sigmoid()  # encoder loss, with gradient
        reference_unact = topk_coords_unact.detach()
        query = self.query_embedding.weight[:num_query][None].expand(bs, -1, -1)
        dn_mask = dn_meta = None
        if batch_data_samples is not None and self.dn_query_generator is not None:
            dn_label_query, dn_bbox_query, dn_mask, dn_meta = self.dn_query_generator(
                batch_data_samples)
            # the generator's mask assumes num_query matching queries; the
            # matching columns are never masked, so dropping some is exact
            num_total = dn_meta['num_denoising_queries'] + num_query
            dn_mask = dn_mask[:num_total, :num_total]
            query = torch.cat([dn_label_query, query], dim=1)
            reference_unact = torch.cat([dn_bbox_query, reference_unact], dim=1)
        decoder_inputs = dict(query=query, reference_points=reference_unact.sigmoid(),
                              dn_mask=dn_mask)
        head_inputs = dict(enc_outputs_class=topk_score, enc_outputs_coord=topk_coords,
                           dn_meta=dn_meta)
        return decoder_inputs, head_inputs

    def forward_transformer(self, mlvl_feats: Sequence[Tensor],
                            batch_data_samples: SampleList,
                            denoise: bool = False) -> Dict:
        """Encoder -> top-k selection (+ denoising queries) -> DINO decoder.

        Args:
            mlvl_feats (Sequence[Tensor]): Neck outputs, each (bs, c, h, w).
            batch_data_samples (list[DetDataSample]): Image metas (and
                ``gt_instances`` when ``denoise``).
            denoise (bool): Prepend the denoising queries (training).

        Returns:
            dict: ``hidden_states`` (num_layers, bs, nq, c), ``references``
            (num_layers + 1 tensors (bs, nq, 4)), ``memory``,
            ``enc_outputs_class``/``enc_outputs_coord`` (top-k) and
            ``dn_meta`` (None without denoising). With denoising, the first
            ``dn_meta['num_denoising_queries']`` queries are the denoising ones.
        """
        encoder_inputs, decoder_inputs = self.pre_transformer(mlvl_feats, batch_data_samples)
        memory = self.forward_encoder(**encoder_inputs)['memory']
        dec_inputs, head_inputs = self.pre_decoder(
            memory, decoder_inputs['memory_mask'], decoder_inputs['spatial_shapes'],
            batch_data_samples if denoise else None)
        hidden_states, references = self.decoder(
            query=dec_inputs['query'],
            value=memory,
            key_padding_mask=decoder_inputs['memory_mask'],
            self_attn_mask=dec_inputs['dn_mask'],
            reference_points=dec_inputs['reference_points'],
            spatial_shapes=decoder_inputs['spatial_shapes'],
            level_start_index=decoder_inputs['level_start_index'],
            valid_ratios=decoder_inputs['valid_ratios'],
            reg_branches=self.reg_branches)
        dn_meta = head_inputs['dn_meta']
        if dn_meta is not None and dn_meta['num_denoising_queries'] == 0:
            # No GT in the batch: keep the label embedding in the graph, so that
            # distributed training finds a gradient for every parameter.
            hidden_states[0] += self.dn_query_generator.label_embedding.weight[0, 0] * 0.0
        return dict(hidden_states=hidden_states, references=list(references), memory=memory,
                    **head_inputs)

    def loss(self, mlvl_feats: Sequence[Tensor], batch_data_samples: SampleList,
             return_maps: bool = True, return_proposals: bool = False,
             proposals_with_dn: bool = True) -> Tuple:
        """Matching, encoder and denoising losses plus the encoder maps.

        Args:
            mlvl_feats (Sequence[Tensor]): Neck outputs, each (bs, c, h, w).
            batch_data_samples (list[DetDataSample]): With ``gt_instances``.
            return_maps (bool): Build the encoder maps of the aux heads.
            return_proposals (bool): Also return the mask branch's training
                proposals (:meth:`training_proposals`). Defaults to False.
            proposals_with_dn (bool): The proposals include the denoising queries,
                as the official code's do (their boxes are reconstructions of noised
                GT boxes). False keeps only the matching queries. Defaults to True.

        Returns:
            tuple: Loss dict (``loss_*``, ``d{l}.loss_*``, ``enc_loss_*``,
            ``dn_loss_*``, ``d{l}.dn_loss_*``) and the maps (or None), plus the
            proposals when ``return_proposals``.
        """
        out = self.forward_transformer(mlvl_feats, batch_data_samples,
                                       denoise=self.dn_query_generator is not None)
        batch_gt_instances = [s.gt_instances for s in batch_data_samples]
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        all_cls, all_coords = self(out['hidden_states'], out['references'])
        dn_meta = out['dn_meta']
        if dn_meta is None:  # no denoising: the matching part is everything
            dn_meta = dict(num_denoising_queries=0, num_denoising_groups=1)
        losses = self.loss_by_feat(all_cls, all_coords, out['enc_outputs_class'],
                                   out['enc_outputs_coord'], batch_gt_instances,
                                   batch_img_metas, dn_meta)
        if out['dn_meta'] is None:
            losses = {k: v for k, v in losses.items() if 'dn_loss' not in k}
        maps = self.encoder_maps(out['memory'], mlvl_feats) if return_maps else None
        if not return_proposals:
            return losses, maps
        first = 0 if proposals_with_dn else dn_meta['num_denoising_queries']
        proposals = self.training_proposals(all_cls[-1][:, first:], all_coords[-1][:, first:],
                                            batch_img_metas)
        return losses, maps, proposals

    def _predict_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict,
                                rescale: bool = True) -> InstanceData:
        """Top-k detections, or the official soft-NMS path when ``test_cfg.nms``.

        With ``nms``: the top ``num_query`` of the (query, class) sigmoid scores,
        scores above ``score_thr`` (default 0), boxes in pixels clamped to
        ``img_shape`` (divided by ``scale_factor`` when rescaling), class-aware
        ``nms`` (soft-NMS decays the scores), then the first ``max_per_img``.
        """
        nms_cfg = self.test_cfg.get('nms')
        if nms_cfg is None:
            return super()._predict_by_feat_single(cls_score, bbox_pred, img_meta, rescale)
        scores = cls_score.sigmoid().flatten()
        scores, indexes = scores.topk(min(self.num_query, scores.numel()))
        labels = indexes % self.num_classes
        bbox_pred = bbox_pred[indexes // self.num_classes]
        keep = scores > self.test_cfg.get('score_thr', 0)
        scores, labels, bbox_pred = scores[keep], labels[keep], bbox_pred[keep]

        img_h, img_w = img_meta['img_shape'][:2]
        bboxes = bbox_cxcywh_to_xyxy(bbox_pred) * bbox_pred.new_tensor([img_w, img_h] * 2)
        bboxes[:, 0::2].clamp_(min=0, max=img_w)
        bboxes[:, 1::2].clamp_(min=0, max=img_h)
        if rescale:
            scale_w, scale_h = img_meta['scale_factor'][:2]
            bboxes /= bboxes.new_tensor([scale_w, scale_h] * 2)
        dets, keep = batched_nms(bboxes, scores, labels, dict(nms_cfg))
        max_per_img = self.test_cfg.get('max_per_img', self.num_query)
        results = InstanceData()
        results.bboxes = dets[:max_per_img, :4]
        results.scores = dets[:max_per_img, 4]
        results.labels = labels[keep][:max_per_img]
        return results

    # -------------------------------------------------------------- auxiliary branch
    def forward_aux(self, enc_maps: Sequence[Tensor], aux: AuxQueryTargets,
                    head_idx: int, batch_data_samples: SampleList,
                    value_inputs: Optional[Dict[str, Tensor]] = None
                    ) -> Tuple[Tensor, Tensor]:
        """Decode the auxiliary queries of head ``head_idx`` (no denoising).

        The content query is ``aux_pos_trans_norm[k](aux_pos_trans_fc[k](sine(
        coords)))``, the positional query comes from the decoder's
        ``ref_point_head``; the values are the first ``num_feature_levels``
        encoder maps. In zero-padding mode the padding is masked in
        self-attention (the official Co-DINO passes no mask here).

        Returns:
            tuple[Tensor, Tensor]: Logits (num_layers, bs, N, C) and boxes
            (num_layers, bs, N, 4), normalised cxcywh.
        """
        value_inputs, self_attn_mask = self._aux_decoder_inputs(
            enc_maps, aux, head_idx, batch_data_samples, value_inputs)
        pos = self.get_proposal_pos_embed(inverse_sigmoid(aux.coords),
                                          num_pos_feats=self.embed_dims // 2)
        query = self.aux_pos_trans_norm[head_idx](self.aux_pos_trans_fc[head_idx](pos))
        if self.with_coord_feat:
            query = query + self.pos_feats_norm[head_idx](
                self.pos_feats_trans[head_idx](aux.feats))
        hidden_states, references = self.decoder(
            query=query,
            reference_points=aux.coords,
            self_attn_mask=self_attn_mask,
            reg_branches=self.reg_branches,
            **value_inputs)
        return self(hidden_states, references)
