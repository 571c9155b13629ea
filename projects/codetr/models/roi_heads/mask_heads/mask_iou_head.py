"""Mask-IoU head of Co-DINO-Inst: Mask Scoring R-CNN's head as the official code changed it."""
from typing import List

import torch
from mmcv.cnn import ConvModule
from mmdet.models.roi_heads.mask_heads import MaskIoUHead
from mmdet.registry import MODELS
from mmdet.utils import InstanceList, OptConfigType, OptMultiConfig
from mmengine.config import ConfigDict
from torch import Tensor, nn

from .simple_refine_mask_head import _resolve_norm


@MODELS.register_module()
class CoMaskIoUHead(MaskIoUHead):
    """Predicts the IoU of a RoI's mask with its ground truth, per class.

    Differences from mmdet's :class:`MaskIoUHead`, as in the official code (spec
    ``DESIGN_MASKS.md`` 4.3, quirk Q12):

    - convolutions are mmcv ``ConvModule`` s with an optional norm (``LN2d``), keys
      ``convs.{i}.conv.weight`` / ``convs.{i}.norm_layer.*``, mmcv's default init;
    - ``score_use_sigmoid``: the output goes through a sigmoid;
    - targets threshold the sigmoid of the mask logits (mmdet compares raw logits);
    - at test time the IoU of the label times the box score is written to
      ``mask_scores``; the box keeps its own score.

    Args:
        num_convs (int): Conv layers (the last has stride 2).
        num_fcs (int): Fully connected layers.
        roi_feat_size (int): RoI feature size.
        in_channels (int): RoI feature channels (+1 for the mask probability).
        conv_out_channels (int): Conv channels.
        fc_out_channels (int): FC width.
        num_classes (int): Classes.
        score_use_sigmoid (bool): Sigmoid on the output. Defaults to True.
        norm_cfg (dict, optional): Norm after each conv.
        loss_iou (dict, optional): Loss on the positive targets. Defaults to MSE,
            weight 0.5.
        init_cfg (dict | list[dict], optional): Defaults to Caffe2Xavier on ``fcs``,
            Normal(0.01) on ``fc_mask_iou``.
    """

    def __init__(self,
                 num_convs: int = 4,
                 num_fcs: int = 2,
                 roi_feat_size: int = 14,
                 in_channels: int = 256,
                 conv_out_channels: int = 256,
                 fc_out_channels: int = 1024,
                 num_classes: int = 80,
                 score_use_sigmoid: bool = True,
                 norm_cfg: OptConfigType = None,
                 loss_iou: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        if loss_iou is None:
            loss_iou = dict(type='MSELoss', loss_weight=0.5)
        if init_cfg is None:
            init_cfg = [dict(type='Caffe2Xavier', override=dict(name='fcs')),
                        dict(type='Normal', std=0.01, override=dict(name='fc_mask_iou'))]
        super().__init__(num_convs=0, num_fcs=num_fcs, roi_feat_size=roi_feat_size,
                         in_channels=in_channels, conv_out_channels=conv_out_channels,
                         fc_out_channels=fc_out_channels, num_classes=num_classes,
                         loss_iou=loss_iou, init_cfg=init_cfg)
        self.score_use_sigmoid = score_use_sigmoid
        norm_cfg = _resolve_norm(norm_cfg)
        self.convs = nn.ModuleList([
            ConvModule(in_channels + 1 if i == 0 else conv_out_channels, conv_out_channels, 3,
                       stride=2 if i == num_convs - 1 else 1, padding=1, norm_cfg=norm_cfg)
            for i in range(num_convs)])

    def forward(self, mask_feat: Tensor, mask_preds: Tensor) -> Tensor:
        """RoI features (R, C, 14, 14) and stage-1 logits (R, 28, 28) -> (R, num_classes)."""
        pooled = self.max_pool(mask_preds.sigmoid().unsqueeze(1))  # (R, 1, 14, 14)
        x = torch.cat((mask_feat, pooled), 1)
        for conv in self.convs:
            x = self.relu(conv(x))
        x = x.flatten(1)
        for fc in self.fcs:
            x = self.relu(fc(x))
        mask_iou = self.fc_mask_iou(x)
        return mask_iou.sigmoid() if self.score_use_sigmoid else mask_iou

    def get_targets(self, sampling_results: List, batch_gt_instances: InstanceList,
                    mask_preds: Tensor, mask_targets: Tensor,
                    rcnn_train_cfg: ConfigDict) -> Tensor:
        """mmdet's targets, with the predicted mask taken as ``sigmoid(logits) > thr``."""
        return super().get_targets(sampling_results, batch_gt_instances, mask_preds.sigmoid(),
                                   mask_targets, rcnn_train_cfg)

    @staticmethod
    def mask_scores(mask_iou_pred: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
        """Segm score = predicted IoU of the label x box score."""
        return mask_iou_pred.gather(1, labels.view(-1, 1))[:, 0] * scores
