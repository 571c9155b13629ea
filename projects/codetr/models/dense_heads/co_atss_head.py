"""ATSS auxiliary head that also returns its assignment for Co-DETR's aux queries."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmdet.models.dense_heads import ATSSHead
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor

from ..layers.aux_queries import AuxPositives


@MODELS.register_module()
class CoATSSHead(ATSSHead):
    """:class:`ATSSHead` whose loss also yields its positives.

    The candidates are all anchors of all levels, concatenated level by level
    in the order the feature maps are flattened, with their ATSS labels and
    assigned GT boxes (``reg_decoded_bbox=True`` makes the targets pixel
    boxes). The content feature of an anchor is the input-map feature at its
    location.
    """

    def get_targets(self, *args, **kwargs) -> tuple:
        """ATSS targets (mmdet), also kept for :meth:`loss_and_positives`."""
        targets = super().get_targets(*args, **kwargs)
        # Co-DETR: the per-level targets are the auxiliary-query candidates.
        self._last_targets = targets
        return targets

    def loss_and_positives(self, x: Sequence[Tensor], batch_data_samples: SampleList
                           ) -> Tuple[Dict[str, Tensor], AuxPositives]:
        """ATSS losses and the candidates for the auxiliary queries.

        Args:
            x (Sequence[Tensor]): Input maps, each (bs, c, h, w).
            batch_data_samples (list[DetDataSample]): With ``gt_instances``.

        Returns:
            tuple: Loss dict and :class:`AuxPositives` with (bs, M, ...) tensors,
            M = number of anchors over all levels.
        """
        self._last_targets = None
        losses = self.loss(x, batch_data_samples)
        anchors, labels, _, bbox_targets, _, _ = self._last_targets
        self._last_targets = None
        feats = torch.cat([lvl.flatten(2) for lvl in x], dim=2).transpose(1, 2)  # (bs, sum hw, c)
        # one feature per location, repeated for the anchors of that location
        feats = feats.repeat_interleave(self.num_base_priors, dim=1)
        positives = AuxPositives(
            coords=torch.cat(anchors, 1),  # per-level (bs, n_l, 4) -> (bs, M, 4)
            labels=torch.cat(labels, 1),
            targets=torch.cat(bbox_targets, 1),
            feats=feats)
        return losses, positives

    def loss_by_feat(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                     centernesses: List[Tensor], batch_gt_instances: list,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: Optional[list] = None) -> Dict[str, Tensor]:
        """mmdet's ATSS loss; checks the number of input levels first."""
        num_levels = self.prior_generator.num_levels
        if len(cls_scores) != num_levels:
            raise ValueError(f'CoATSSHead: got {len(cls_scores)} feature maps but the '
                             f'anchor generator has {num_levels} strides')
        return super().loss_by_feat(cls_scores, bbox_preds, centernesses, batch_gt_instances,
                                    batch_img_metas, batch_gt_instances_ignore)
