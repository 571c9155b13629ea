"""Co-DETR detector: a DETR query head plus one-to-many auxiliary heads."""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmdet.models.detectors import BaseDetector
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import DetDataSample, OptSampleList, SampleList
from mmdet.structures.bbox import bbox2roi
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.config import ConfigDict
from mmengine.model import ModuleList
from mmengine.structures import InstanceData
from torch import Tensor

from ...utils.checkpoint_check import CheckpointFitMixin
from ..layers.aux_queries import build_aux_query_targets

CfgList = Optional[Union[ConfigType, Sequence[ConfigType]]]


def _as_list(cfg: CfgList) -> List[ConfigDict]:
    """None -> [], dict -> [dict], list -> list, as ConfigDicts."""
    if cfg is None:
        return []
    if isinstance(cfg, dict):
        cfg = [cfg]
    return [ConfigDict(c) for c in cfg]


@MODELS.register_module()
class CoDETR(CheckpointFitMixin, BaseDetector):
    """Co-DETR (Zong et al., "DETRs with Collaborative Hybrid Assignments
    Training", ICCV 2023, arXiv 2211.12860).

    Training: the query head runs encoder and decoder and returns the encoder
    output as 5 maps; the RPN, the RoI heads and the dense heads (ATSS) are
    trained on those maps with one-to-many assignment, and the positives of
    each auxiliary head k become an extra query group decoded by the same
    decoder (losses suffixed ``_aux{k}``). Inference runs the query head only
    (``eval_module='detr'``), or an auxiliary head on the encoder maps.

    ``train_cfg``/``test_cfg`` are lists ordered as
    [query head, (mask branch,) one (rpn + rcnn) entry per RoI head, one per
    dense head], the official layout: the mask entry exists only with
    ``mask_head``.

    Co-DINO-Inst's detector-level mask branch (``mask_head``, optional
    ``mask_iou_head``) runs on the query head's boxes and the encoder maps:
    in training on the query head's top (query, class) boxes of the last
    decoder layer, assigned and sampled by ``train_cfg[1]``; at test time on
    the final detections, in chunks of ``test_cfg[1].mask_chunk_size`` (150),
    refined coarse-to-fine and pasted; ``pred_instances.mask_scores`` = box
    score x predicted mask IoU, ``scores`` stay the box scores.

    ``predict`` refuses to run after loading a checkpoint that does not fit
    the model (missing, unexpected or size-mismatched tensors) until a
    training step or ``allow_partial_checkpoint = True``
    (:class:`~projects.codetr.utils.checkpoint_check.CheckpointFitMixin`).

    Args:
        backbone (dict): Backbone config.
        neck (dict, optional): Neck config.
        query_head (dict, optional): Query head (:class:`CoDeformDETRHead`).
        rpn_head (dict, optional): RPN shared by all RoI heads.
        roi_head (list[dict], optional): RoI heads (:class:`CoStandardRoIHead`).
        mask_roi_extractor (dict, optional): RoI features of the mask branch.
        mask_head (dict, optional): Detector-level mask head
            (:class:`SimpleRefineMaskHead`).
        mask_iou_head (dict, optional): Mask scoring (:class:`CoMaskIoUHead`).
        bbox_head (list[dict], optional): Dense heads (:class:`CoATSSHead`).
        train_cfg (list[dict], optional): Training configs (see above).
        test_cfg (list[dict], optional): Testing configs (see above).
        with_pos_coord (bool): Turn auxiliary positives into queries.
            Defaults to True.
        eval_module (str): 'detr', 'one-stage' or 'two-stage'.
        eval_index (int): Which dense / RoI head to evaluate. Defaults to 0.
        with_attn_mask (bool): Mask the padding of each image. False (the
            official LSJ recipes, whose images are padded to a fixed canvas)
            sets every image's ``img_shape`` to the batch input shape, so the
            padding is treated as image: no padding mask, targets normalised by
            the canvas, test boxes clamped to it. Defaults to True.
        num_classes (int, optional): Number of classes of every head: the
            query head, each RoI head's ``bbox_head`` and each dense head.
            A short child config sets ``model = dict(num_classes=N)``
            instead of repeating the head lists (mmengine replaces lists
            rather than merging them). None keeps the heads' own values,
            which must agree.
        data_preprocessor (dict, optional): Data preprocessor config.
        init_cfg (dict, optional): Initialisation config.
    """

    EVAL_MODULES = ('detr', 'one-stage', 'two-stage')

    def __init__(self,
                 backbone: ConfigType,
                 neck: OptConfigType = None,
                 query_head: OptConfigType = None,
                 rpn_head: OptConfigType = None,
                 roi_head: CfgList = None,
                 bbox_head: CfgList = None,
                 mask_roi_extractor: OptConfigType = None,
                 mask_head: OptConfigType = None,
                 mask_iou_head: OptConfigType = None,
                 train_cfg: CfgList = None,
                 test_cfg: CfgList = None,
                 with_pos_coord: bool = True,
                 eval_module: str = 'detr',
                 eval_index: int = 0,
                 with_attn_mask: bool = True,
                 num_classes: Optional[int] = None,
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        roi_heads, dense_heads = _as_list(roi_head), _as_list(bbox_head)
        mask_head = ConfigDict(mask_head) if mask_head is not None else None
        mask_iou_head = ConfigDict(mask_iou_head) if mask_iou_head is not None else None
        if num_classes is not None:  # one number for every head (configs' lists replace)
            query_head, roi_heads, dense_heads, mask_head, mask_iou_head = _with_num_classes(
                num_classes, query_head, roi_heads, dense_heads, mask_head, mask_iou_head)
        train_cfgs, test_cfgs = _as_list(train_cfg), _as_list(test_cfg)
        self._check_config(query_head, rpn_head, roi_heads, dense_heads, train_cfgs,
                           test_cfgs, with_pos_coord, eval_module, eval_index,
                           mask_head is not None)
        self._check_mask_config(query_head, mask_roi_extractor, mask_head, mask_iou_head,
                                train_cfgs, test_cfgs)
        self.with_pos_coord = with_pos_coord
        self.eval_module = eval_module
        self.eval_index = eval_index
        self.with_attn_mask = with_attn_mask
        self.train_cfg = train_cfgs
        self.test_cfg = test_cfgs
        train_at = (lambda i: train_cfgs[i]) if train_cfgs else (lambda i: None)
        off = 1 if mask_head is not None else 0  # the mask entry shifts the aux heads' cfgs
        self._rpn_cfg_index = 1 + off

        self.backbone = MODELS.build(backbone)
        if neck is not None:
            self.neck = MODELS.build(neck)
        self.query_head = None
        if query_head is not None:
            query_head = copy.deepcopy(query_head)
            query_head.update(train_cfg=train_at(0), test_cfg=test_cfgs[0])
            self.query_head = MODELS.build(query_head)
        self.rpn_head = None
        if rpn_head is not None:
            rpn_head = copy.deepcopy(rpn_head)
            rpn_head.update(num_classes=1,
                            train_cfg=train_cfgs[1 + off].rpn if train_cfgs else None,
                            test_cfg=test_cfgs[1 + off].rpn)
            self.rpn_head = MODELS.build(rpn_head)
        self.roi_head = ModuleList()
        for i, cfg in enumerate(roi_heads):
            cfg = copy.deepcopy(cfg)
            cfg.update(train_cfg=train_cfgs[i + 1 + off].rcnn if train_cfgs else None,
                       test_cfg=test_cfgs[i + 1 + off].rcnn)
            self.roi_head.append(MODELS.build(cfg))
        self.bbox_head = ModuleList()
        for j, cfg in enumerate(dense_heads):
            idx = j + 1 + off + len(roi_heads)
            cfg = copy.deepcopy(cfg)
            cfg.update(train_cfg=train_at(idx), test_cfg=test_cfgs[idx])
            self.bbox_head.append(MODELS.build(cfg))
        self.mask_head = self.mask_roi_extractor = self.mask_iou_head = None
        if mask_head is not None:
            self.mask_roi_extractor = MODELS.build(mask_roi_extractor)
            self.mask_head = MODELS.build(mask_head)
            if mask_iou_head is not None:
                self.mask_iou_head = MODELS.build(mask_iou_head)
            self.mask_train_cfg = train_at(1)
            self.mask_test_cfg = test_cfgs[1]
            if self.mask_train_cfg is not None:
                self.mask_assigner = TASK_UTILS.build(self.mask_train_cfg.assigner)
                self.mask_sampler = TASK_UTILS.build(self.mask_train_cfg.sampler)

    @staticmethod
    def _check_config(query_head, rpn_head, roi_heads, dense_heads, train_cfgs, test_cfgs,
                      with_pos_coord, eval_module, eval_index, with_mask_head=False) -> None:
        """Fail early, naming the config key, on inconsistent head lists."""
        if query_head is None:
            raise ValueError('CoDETR: model.query_head is required')
        for key, cfgs in (('roi_head', roi_heads), ('bbox_head', dense_heads)):
            for i, cfg in enumerate(cfgs):
                if 'type' not in cfg:
                    raise ValueError(
                        f'CoDETR: model.{key}[{i}] has no "type" ({dict(cfg)}). A child config '
                        'replaces a list of its base instead of merging it; to change the '
                        'classes set model.num_classes=N, otherwise write whole entries, e.g. '
                        f'{key}=[dict(_base_.model.{key}[{i}], ...)]')
        if eval_module not in CoDETR.EVAL_MODULES:
            raise ValueError(f'CoDETR: model.eval_module={eval_module!r}, expected one of '
                             f'{CoDETR.EVAL_MODULES}')
        if roi_heads and rpn_head is None:
            raise ValueError('CoDETR: model.roi_head is set but model.rpn_head is missing')
        expected = 1 + int(with_mask_head) + len(roi_heads) + len(dense_heads)
        mask_entry = 'mask_head, ' if with_mask_head else ''
        for key, cfgs in (('train_cfg', train_cfgs), ('test_cfg', test_cfgs)):
            if key == 'train_cfg' and not cfgs:
                continue  # inference-only configs may omit train_cfg
            if len(cfgs) != expected:
                raise ValueError(
                    f'CoDETR: model.{key} has {len(cfgs)} entries but {expected} are needed, '
                    f'ordered [query_head, {mask_entry}one per roi_head ({len(roi_heads)}), '
                    f'one per bbox_head ({len(dense_heads)})]')
        num_classes = {'query_head': query_head.get('num_classes')}
        for i, cfg in enumerate(roi_heads):
            num_classes[f'roi_head[{i}].bbox_head'] = cfg.get('bbox_head', {}).get('num_classes')
        for j, cfg in enumerate(dense_heads):
            num_classes[f'bbox_head[{j}]'] = cfg.get('num_classes')
        if len(set(num_classes.values())) > 1:
            raise ValueError(f'CoDETR: num_classes disagree between heads: {num_classes}; '
                             'set one num_classes variable in the config and use it everywhere')
        num_aux = len(roi_heads) + len(dense_heads)
        num_co_heads = query_head.get('num_co_heads', 2)
        if with_pos_coord and num_aux > 0 and num_co_heads != num_aux:
            raise ValueError(
                f'CoDETR: model.query_head.num_co_heads={num_co_heads} aux-query projections '
                f'but there are {num_aux} auxiliary heads ({len(roi_heads)} roi_head + '
                f'{len(dense_heads)} bbox_head); set num_co_heads={num_aux}, or '
                'with_pos_coord=False')
        if eval_module == 'one-stage' and not 0 <= eval_index < len(dense_heads):
            raise ValueError(f'CoDETR: eval_index={eval_index} but only {len(dense_heads)} '
                             'bbox_head entries exist for eval_module="one-stage"')
        if eval_module == 'two-stage' and not 0 <= eval_index < len(roi_heads):
            raise ValueError(f'CoDETR: eval_index={eval_index} but only {len(roi_heads)} '
                             'roi_head entries exist for eval_module="two-stage"')

    @staticmethod
    def _check_mask_config(query_head, mask_roi_extractor, mask_head, mask_iou_head,
                           train_cfgs, test_cfgs) -> None:
        """The detector-level mask branch: its modules and its config entries."""
        if mask_head is None:
            if mask_roi_extractor is not None or mask_iou_head is not None:
                raise ValueError('CoDETR: model.mask_roi_extractor / model.mask_iou_head are '
                                 'set but model.mask_head is not')
            return
        if mask_roi_extractor is None:
            raise ValueError('CoDETR: model.mask_head needs model.mask_roi_extractor')
        if train_cfgs and not {'assigner', 'sampler'} <= set(train_cfgs[1]):
            raise ValueError('CoDETR: model.train_cfg[1] is the mask branch entry (with '
                             'mask_head) and needs assigner and sampler; got '
                             f'{dict(train_cfgs[1])}')
        if train_cfgs and mask_iou_head is not None and 'mask_thr_binary' not in train_cfgs[1]:
            raise ValueError('CoDETR: model.train_cfg[1].mask_thr_binary is needed by '
                             'model.mask_iou_head')
        if 'rpn' in test_cfgs[1] or 'rcnn' in test_cfgs[1]:
            raise ValueError('CoDETR: model.test_cfg[1] is the mask branch entry (with '
                             'mask_head), not an rpn/rcnn entry; the official order is '
                             '[query_head, mask_head, rpn+roi_head, bbox_head]')
        classes = {'query_head': query_head.get('num_classes'),
                   'mask_head.stage_num_classes[0]': mask_head.get('stage_num_classes',
                                                                    [None])[0]}
        if mask_iou_head is not None:
            classes['mask_iou_head'] = mask_iou_head.get('num_classes')
        if len(set(classes.values())) > 1:
            raise ValueError(f'CoDETR: num_classes disagree between heads: {classes}; '
                             'set model.num_classes=N')

    @property
    def with_mask(self) -> bool:
        """Whether masks are predicted: a detector-level mask head, or one in a RoI head."""
        return self.mask_head is not None or any(h.with_mask for h in self.roi_head)

    @property
    def with_rpn(self) -> bool:
        """Whether an RPN is built."""
        return self.rpn_head is not None

    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor]:
        """Backbone + neck: (bs, 3, H, W) -> maps of strides 8..64."""
        x = self.backbone(batch_inputs)
        if self.with_neck:
            x = self.neck(x)
        return x

    def _drop_attn_mask(self, batch_data_samples: SampleList) -> None:
        """``with_attn_mask=False``: the whole padded canvas is the image."""
        if self.with_attn_mask:
            return
        for sample in batch_data_samples:
            sample.set_metainfo(dict(img_shape=tuple(sample.batch_input_shape)))

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """Losses of the query head, the auxiliary heads and the aux queries."""
        self.forget_checkpoint_fit()
        self._drop_attn_mask(batch_data_samples)
        x = self.extract_feat(batch_inputs)
        with_aux = self.with_rpn or len(self.roi_head) > 0 or len(self.bbox_head) > 0
        if self.mask_head is not None:
            losses, enc_maps, mask_proposals = self.query_head.loss(
                x, batch_data_samples, return_maps=True, return_proposals=True,
                proposals_with_dn=self.mask_train_cfg.get('proposals_with_dn', True))
            losses.update(self.mask_loss(enc_maps, mask_proposals, batch_data_samples))
        else:
            losses, enc_maps = self.query_head.loss(x, batch_data_samples,
                                                    return_maps=with_aux)

        proposals = None
        if self.with_rpn:
            rpn_cfg = self.train_cfg[self._rpn_cfg_index]
            proposal_cfg = rpn_cfg.get('rpn_proposal', self.test_cfg[self._rpn_cfg_index].rpn)
            rpn_samples = copy.deepcopy(batch_data_samples)
            for sample in rpn_samples:  # the RPN is class-agnostic
                sample.gt_instances.labels = torch.zeros_like(sample.gt_instances.labels)
            rpn_losses, proposals = self.rpn_head.loss_and_predict(
                enc_maps, rpn_samples, proposal_cfg=proposal_cfg)
            losses.update(rpn_losses)

        all_positives = []
        for i, roi_head in enumerate(self.roi_head):
            head_losses, positives = roi_head.loss_and_positives(
                enc_maps, copy.deepcopy(proposals), batch_data_samples)
            losses.update(_suffix(head_losses, i))
            all_positives.append(positives)
        for j, dense_head in enumerate(self.bbox_head):
            head_losses, positives = dense_head.loss_and_positives(enc_maps, batch_data_samples)
            losses.update(_suffix(head_losses, j + len(self.roi_head)))
            all_positives.append(positives)

        if self.with_pos_coord and all_positives:  # aux-free configs have no positives
            img_shapes = [s.img_shape for s in batch_data_samples]
            head = self.query_head
            value_inputs = head.aux_value_inputs(enc_maps, batch_data_samples)  # shared by k
            for k, positives in enumerate(all_positives):
                aux = build_aux_query_targets(
                    positives, img_shapes, head.num_classes, max_pos_coords=head.max_pos_coords,
                    use_zero_padding=head.use_zero_padding)
                aux_losses = head.loss_aux(enc_maps, aux, k, batch_data_samples, value_inputs)
                losses.update(_suffix(aux_losses, k))
        return losses

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Detections of ``eval_module``; 'detr' runs the query head only."""
        self.check_checkpoint_fit()
        self._drop_attn_mask(batch_data_samples)
        x = self.extract_feat(batch_inputs)
        if self.eval_module == 'detr' and self.mask_head is not None:
            results, enc_maps = self.query_head.predict(x, batch_data_samples, rescale=rescale,
                                                        return_maps=True)
            results = self.predict_masks(enc_maps, results, batch_data_samples, rescale)
        elif self.eval_module == 'detr':
            results = self.query_head.predict(x, batch_data_samples, rescale=rescale)
        else:
            enc_maps = self.query_head.forward_encoder_maps(x, batch_data_samples)
            if self.eval_module == 'one-stage':
                results = self.bbox_head[self.eval_index].predict(
                    enc_maps, batch_data_samples, rescale=rescale)
            else:
                proposals = self.rpn_head.predict(enc_maps, batch_data_samples, rescale=False)
                results = self.roi_head[self.eval_index].predict(
                    enc_maps, proposals, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    # -------------------------------------------------------------- mask branch
    def mask_loss(self, enc_maps: List[Tensor], proposals: List[Tensor],
                  batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """``loss_mask`` (BAR) and ``loss_mask_iou`` on the query head's boxes.

        Args:
            enc_maps (list[Tensor]): Encoder maps, finest (stride 4 for Co-DINO) first.
            proposals (list[Tensor]): Per image (k, 5) training proposals of the query
                head (detached).
            batch_data_samples (list[DetDataSample]): With ``gt_instances.masks``.

        Returns:
            dict: ``loss_mask`` and, with a mask-IoU head, ``loss_mask_iou``.
        """
        batch_gt_instances = [s.gt_instances for s in batch_data_samples]
        for sample in batch_data_samples:
            if 'masks' not in sample.gt_instances:
                raise ValueError(
                    'CoDETR: model.mask_head is set but the training data has no instance '
                    f'masks (image {sample.metainfo.get("img_path", "?")}); load them with '
                    "dict(type='LoadAnnotations', with_bbox=True, with_mask=True) in "
                    'train_pipeline and keep gt_masks in PackDetInputs')
        sampling_results = []
        for boxes, gt_instances in zip(proposals, batch_gt_instances):
            pred_instances = InstanceData(priors=boxes[:, :4])
            assign_result = self.mask_assigner.assign(pred_instances, gt_instances)
            sampling_results.append(
                self.mask_sampler.sample(assign_result, pred_instances, gt_instances))
        pos_boxes = [res.pos_priors for res in sampling_results]
        pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        rois = bbox2roi(pos_boxes)  # (R, 5)
        ins_feats = self.mask_roi_extractor(enc_maps[:self.mask_roi_extractor.num_inputs],
                                            rois)  # (R, C, 14, 14)
        semantic = self.mask_head.forward_semantic(enc_maps[0])
        stage_preds, hidden_states = self.mask_head(ins_feats, semantic, rois, pos_labels)
        stage_targets = self.mask_head.get_targets(
            pos_boxes, [res.pos_assigned_gt_inds for res in sampling_results],
            [gt.masks for gt in batch_gt_instances])
        losses = self.mask_head.loss(stage_preds, hidden_states, stage_targets)
        if self.mask_iou_head is not None:
            stage1 = stage_preds[1][:, 0]  # (R, 28, 28) logits
            mask_iou_pred = self.mask_iou_head(ins_feats, stage1)
            pos_iou = mask_iou_pred[torch.arange(len(pos_labels)), pos_labels]
            losses.update(self.mask_iou_head.loss_and_target(
                pos_iou, stage1, stage_targets[1], sampling_results, batch_gt_instances,
                self.mask_train_cfg))
        return losses

    def predict_masks(self, enc_maps: List[Tensor], results_list: List[InstanceData],
                      batch_data_samples: SampleList, rescale: bool = True
                      ) -> List[InstanceData]:
        """Masks (and mask scores) of the query head's detections, image by image.

        The semantic branch runs once for the batch; the RoI part in chunks of
        ``test_cfg[1].mask_chunk_size`` (default 150) detections.

        Args:
            enc_maps (list[Tensor]): Encoder maps, finest first.
            results_list (list[InstanceData]): Detections, in original-image pixels when
                ``rescale`` else in input pixels.
            batch_data_samples (list[DetDataSample]): Image metas.
            rescale (bool): Paste on ``ori_shape`` (else on ``img_shape``).

        Returns:
            list[InstanceData]: The same results with ``masks`` (N, H, W) bool and, with a
            mask-IoU head, ``mask_scores`` (N,).
        """
        feats = enc_maps[:self.mask_roi_extractor.num_inputs]
        semantic = self.mask_head.forward_semantic(enc_maps[0])
        chunk_size = self.mask_test_cfg.get('mask_chunk_size', 150)
        threshold = self.mask_test_cfg.get('mask_thr_binary', 0.5)
        for i, (results, sample) in enumerate(zip(results_list, batch_data_samples)):
            boxes, labels = results.bboxes, results.labels
            img_h, img_w = sample.ori_shape[:2] if rescale else sample.img_shape[:2]
            input_boxes = boxes
            if rescale:  # the RoIs are in input pixels
                input_boxes = boxes * boxes.new_tensor(sample.scale_factor[:2]).repeat(2)
            rois = torch.cat([boxes.new_full((len(boxes), 1), i), input_boxes], dim=1)
            # pasted chunk by chunk into one tensor: the output is the only full-size memory
            masks = boxes.new_zeros((len(boxes), img_h, img_w), dtype=torch.bool)
            mask_scores = [boxes.new_zeros(0)]
            for start in range(0, len(boxes), chunk_size):
                part = slice(start, start + chunk_size)
                ins_feats = self.mask_roi_extractor(feats, rois[part])
                stage_preds, _ = self.mask_head(ins_feats, semantic, rois[part], labels[part])
                if self.mask_iou_head is not None:
                    iou = self.mask_iou_head(ins_feats, stage_preds[1][:, 0])
                    mask_scores.append(self.mask_iou_head.mask_scores(
                        iou, labels[part], results.scores[part]))
                logits = self.mask_head.refine(stage_preds)  # (n, 1, 112, 112)
                self.mask_head.paste_masks(logits, boxes[part], img_h, img_w, threshold,
                                           out=masks[part])
            results.masks = masks
            if self.mask_iou_head is not None:
                results.mask_scores = torch.cat(mask_scores)
        return results_list

    def _forward(self, batch_inputs: Tensor, batch_data_samples: OptSampleList = None,
                 return_memory: bool = False) -> Tuple:
        """Tensor-mode forward of the inference path (query head only).

        Args:
            batch_inputs (Tensor): (bs, 3, H, W).
            batch_data_samples (list[DetDataSample], optional): Image metas;
                when None every image is taken to fill the whole input.
            return_memory (bool): Also return the encoder memory (bs, sum(h_l * w_l), c)
                and the neck maps (for their shapes), e.g. for the mask branch.

        Returns:
            tuple: Class logits (num_layers, bs, nq, C) and boxes (num_layers, bs, nq, 4),
            normalised cxcywh (then memory and neck maps with ``return_memory``).
        """
        if batch_data_samples is None:
            h, w = batch_inputs.shape[-2:]
            batch_data_samples = [
                DetDataSample(metainfo=dict(img_shape=(h, w), batch_input_shape=(h, w)))
                for _ in range(batch_inputs.size(0))]
        self._drop_attn_mask(batch_data_samples)
        x = self.extract_feat(batch_inputs)
        out = self.query_head.forward_transformer(x, batch_data_samples)
        all_cls, all_boxes = self.query_head(out['hidden_states'], out['references'])
        if return_memory:
            return all_cls, all_boxes, out['memory'], x
        return all_cls, all_boxes


def _with_num_classes(num_classes: int, query_head: ConfigType, roi_heads: List[ConfigDict],
                      dense_heads: List[ConfigDict], mask_head: OptConfigType = None,
                      mask_iou_head: OptConfigType = None) -> Tuple:
    """Copies of the head configs with ``num_classes`` set in every head."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f'CoDETR: model.num_classes={num_classes!r}, expected an int >= 1')
    query_head = ConfigDict(copy.deepcopy(query_head)) if query_head is not None else None
    if query_head is not None:
        query_head.num_classes = num_classes
    roi_heads = [copy.deepcopy(cfg) for cfg in roi_heads]
    for cfg in roi_heads:
        cfg.bbox_head.num_classes = num_classes
        if 'mask_head' in cfg and 'num_classes' in cfg.mask_head:
            cfg.mask_head.num_classes = num_classes
    dense_heads = [copy.deepcopy(cfg) for cfg in dense_heads]
    for cfg in dense_heads:
        cfg.num_classes = num_classes
    if mask_head is not None:  # class-specific stages get N, a class-agnostic one keeps 1
        mask_head = copy.deepcopy(mask_head)
        stages = list(mask_head.get('stage_num_classes', [80, 80, 80, 80]))
        mask_head.stage_num_classes = [1 if k == 1 else num_classes for k in stages]
    if mask_iou_head is not None:
        mask_iou_head = copy.deepcopy(mask_iou_head)
        mask_iou_head.num_classes = num_classes
    return query_head, roi_heads, dense_heads, mask_head, mask_iou_head


def _suffix(losses: Dict[str, Tensor], idx: int) -> Dict[str, Tensor]:
    """Append the head index to every key: ``loss_cls`` -> ``loss_cls0``."""
    return {f'{key}{idx}': value for key, value in losses.items()}

