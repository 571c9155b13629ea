"""Faster R-CNN RoI auxiliary head that also returns its sampled RoIs (and, with a mask head,
trains Mask R-CNN's FCN mask branch: Co-Deformable-DETR's mask variant)."""
from typing import Dict, List, Sequence, Tuple

import torch
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.task_modules.samplers import SamplingResult
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox2roi
from mmdet.utils import InstanceList
from torch import Tensor

from ..layers.aux_queries import AuxPositives


@MODELS.register_module()
class CoStandardRoIHead(StandardRoIHead):
    """:class:`StandardRoIHead` whose loss also yields its positives.

    Per image the candidates are the first ``min(max_proposals, min over images
    of #sampled RoIs)`` sampled RoIs (pixel xyxy), their RoI labels, their
    decoded GT boxes (``reg_decoded_bbox=True``) and their RoIAlign features
    averaged over the 7x7 grid.

    With ``mask_roi_extractor`` and ``mask_head`` (the official
    ``co_deformable_detr_mask_r50_1x_coco``: ``FCNMaskHead`` on the positive
    RoIs of the same samples) the mask loss is added as in mmdet's
    ``StandardRoIHead``, and ``predict`` returns masks; the detector then gives
    masks with ``eval_module='two-stage'``.

    Args:
        max_proposals (int): Cap on candidates per image. Defaults to 2000.
    """

    def __init__(self, *args, max_proposals: int = 2000, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_proposals = max_proposals

    def bbox_loss(self, x: Tuple[Tensor], sampling_results: List[SamplingResult]) -> dict:
        """mmdet's box loss, also returning the targets and RoIs."""
        rois = bbox2roi([res.priors for res in sampling_results])
        bbox_results = self._bbox_forward(x, rois)
        loss_and_target = self.bbox_head.loss_and_target(
            cls_score=bbox_results['cls_score'],
            bbox_pred=bbox_results['bbox_pred'],
            rois=rois,
            sampling_results=sampling_results,
            rcnn_train_cfg=self.train_cfg)
        bbox_results.update(loss_bbox=loss_and_target['loss_bbox'],
                            bbox_targets=loss_and_target['bbox_targets'], rois=rois)
        return bbox_results

    def loss_and_positives(self, x: Sequence[Tensor], rpn_results_list: InstanceList,
                           batch_data_samples: SampleList
                           ) -> Tuple[Dict[str, Tensor], AuxPositives]:
        """Assign and sample proposals, compute the box losses, return positives.

        Args:
            x (Sequence[Tensor]): Input maps, each (bs, c, h, w).
            rpn_results_list (list[InstanceData]): Proposals (``bboxes``).
            batch_data_samples (list[DetDataSample]): With ``gt_instances``.

        Returns:
            tuple: Loss dict and :class:`AuxPositives` of (bs, M, ...) tensors.
        """
        if not self.with_bbox:
            raise NotImplementedError('CoStandardRoIHead needs a bbox head')
        batch_gt_instances, batch_gt_instances_ignore, _ = unpack_gt_instances(
            batch_data_samples)
        sampling_results = []
        for i, rpn_results in enumerate(rpn_results_list):
            rpn_results.priors = rpn_results.pop('bboxes')
            assign_result = self.bbox_assigner.assign(
                rpn_results, batch_gt_instances[i], batch_gt_instances_ignore[i])
            sampling_results.append(self.bbox_sampler.sample(
                assign_result, rpn_results, batch_gt_instances[i],
                feats=[lvl_feat[i][None] for lvl_feat in x]))
        bbox_results = self.bbox_loss(x, sampling_results)

        # Co-DETR: the sampled RoIs are stored image by image, so the first
        # rows of each image's block are taken.
        labels, _, targets, _ = bbox_results['bbox_targets']
        feats = bbox_results['bbox_feats'].mean((2, 3))  # (num_rois, c, 7, 7) -> (num_rois, c)
        rois = bbox_results['rois']
        counts = [len(res.priors) for res in sampling_results]
        keep = min([self.max_proposals, *counts])
        starts = [sum(counts[:i]) for i in range(len(counts))]
        rows = [slice(s, s + keep) for s in starts]
        positives = AuxPositives(
            coords=_stack_rows(rois[:, 1:], rows),
            labels=_stack_rows(labels, rows),
            targets=_stack_rows(targets, rows),
            feats=_stack_rows(feats, rows))
        losses = dict(bbox_results['loss_bbox'])
        if self.with_mask:  # Mask R-CNN's FCN branch on the positives of these samples
            mask_results = self.mask_loss(x, sampling_results, bbox_results['bbox_feats'],
                                          batch_gt_instances)
            losses.update(mask_results['loss_mask'])
        return losses, positives

    def loss(self, x: Sequence[Tensor], rpn_results_list: InstanceList,
             batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """Box (and mask) losses (mmdet API)."""
        return self.loss_and_positives(x, rpn_results_list, batch_data_samples)[0]


def _stack_rows(t: Tensor, rows: List[slice]) -> Tensor:
    """Stack equally long row blocks: (num_rois, ...) -> (bs, keep, ...)."""
    return torch.stack([t[r] for r in rows])
