"""Co-DINO-Inst's mask head: RefineMask-style coarse-to-fine masks on the query head's boxes.

Four stages at 14, 28, 56 and 112 px. Each of the first three fuses the RoI features, the
RoI's crop of a full-image semantic feature map (stride 4) and the stage's own mask
probability, then upsamples. Trained with the boundary-aware BAR loss; at test time the
finer stages only replace the coarser logits on a band around the coarse boundary.
Specified in ``shared/DESIGN_MASKS.md`` section 4.1 (official ``refine_mask_head.py``).

Unlike the official head, the semantic branch (two stride-4 convolutions and one 1x1
transform per stage over the whole image) has its own entry point,
:meth:`SimpleRefineMaskHead.forward_semantic`, so that inference runs it once per image
and not once per chunk of RoIs; the values are the same.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_upsample_layer
from mmdet.models.roi_heads.mask_heads.fcn_mask_head import (
    BYTES_PER_FLOAT,
    GPU_MEM_LIMIT,
    _do_paste_mask,
)
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.model import BaseModule
from torch import Tensor, nn

from ...losses.bar_loss import generate_block_target


def _resolve_norm(norm_cfg: OptConfigType) -> OptConfigType:
    """Give mmcv the norm class itself, so that mmdet-registered norms (``LN2d``) are found
    whatever the default registry scope is."""
    if norm_cfg is None or not isinstance(norm_cfg.get('type'), str):
        return norm_cfg
    norm_cls = MODELS.get(norm_cfg['type'])
    if norm_cls is None:
        raise KeyError(f'norm_cfg type {norm_cfg["type"]!r} is not registered in mmdet')
    return dict(norm_cfg, type=norm_cls)


def _take_label(logits: Tensor, labels: Tensor) -> Tensor:
    """(R, K, S, S) logits -> (R, 1, S, S) of each RoI's label (a gather: exports with a
    dynamic number of RoIs)."""
    index = labels.view(-1, 1, 1, 1).expand(-1, 1, logits.shape[2], logits.shape[3])
    return logits.gather(1, index)


class MultiBranchFusion(nn.Module):
    """Sum of 3x3 convolutions at several dilations (each + ReLU), then a 1x1 merge.

    Args:
        channels (int): Input and output channels.
        dilations (Sequence[int]): One branch per dilation (padding = dilation).
    """

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.num_branches = len(dilations)
        for idx, dilation in enumerate(dilations):
            self.add_module(f'dilation_conv_{idx + 1}',
                            ConvModule(channels, channels, 3, padding=dilation,
                                       dilation=dilation))
        self.merge_conv = ConvModule(channels, channels, 1, act_cfg=None)

    def branches(self, x: Tensor) -> Tensor:
        """Sum of the dilated branches."""
        return sum(getattr(self, f'dilation_conv_{i + 1}')(x) for i in range(self.num_branches))

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, C, S, S)."""
        return self.merge_conv(self.branches(x))


class MultiBranchFusionAvg(MultiBranchFusion):
    """:class:`MultiBranchFusion` plus the input's global average as a fourth branch.

    The average pools with a kernel as wide as the input (square RoI maps), as the
    official code does.
    """

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, C, S, S)."""
        pooled = F.avg_pool2d(x, x.shape[-1])  # (R, C, 1, 1), broadcast over the map
        return self.merge_conv(self.branches(x) + pooled)


FUSIONS = {'MultiBranchFusion': MultiBranchFusion, 'MultiBranchFusionAvg': MultiBranchFusionAvg}


class SimpleSFMStage(nn.Module):
    """One refinement stage: fuse instance features, semantic crop and mask probability.

    Args:
        semantic_in_channels (int): Channels of the full-image semantic map.
        channels (int): Channels C of the stage's instance features.
        out_channels (int): Channels after the stage (C // 2); the last one is the
            mask probability, concatenated again.
        fusion_type (str): A key of :data:`FUSIONS`.
        dilations (Sequence[int]): Dilations of the fusion branches.
        out_size (int): RoI size S of the stage.
        semantic_out_stride (int): Stride of the semantic map.
        upsample_cfg (dict): mmcv upsample layer (x2 bilinear).
    """

    def __init__(self, semantic_in_channels: int, channels: int, out_channels: int,
                 fusion_type: str, dilations: Sequence[int], out_size: int,
                 semantic_out_stride: int, upsample_cfg: ConfigType) -> None:
        super().__init__()
        if fusion_type not in FUSIONS:
            raise KeyError(f'mask_head.fusion_type={fusion_type!r}, expected one of '
                           f'{sorted(FUSIONS)}')
        self.semantic_transform_in = nn.Conv2d(semantic_in_channels, channels, 1)
        self.semantic_roi_extractor = MODELS.build(dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=out_size, sampling_ratio=0),
            out_channels=channels,
            featmap_strides=[semantic_out_stride]))
        self.fuse_conv = nn.ModuleList([
            nn.Conv2d(2 * channels + 1, channels, 1),
            FUSIONS[fusion_type](channels, dilations)])
        self.fuse_transform_out = nn.Conv2d(channels, out_channels - 1, 1)
        self.upsample = build_upsample_layer(dict(upsample_cfg))
        self.relu = nn.ReLU(inplace=True)

    def transform_semantic(self, semantic_feat: Tensor) -> Tensor:
        """The stage's view of the full-image map: (B, C_sem, h, w) -> (B, C, h, w)."""
        return self.relu(self.semantic_transform_in(semantic_feat))

    def forward(self, instance_feats: Tensor, instance_logits: Tensor, stage_semantic: Tensor,
                rois: Tensor, upsample: bool = True) -> Tensor:
        """(R, C, S, S) features and (R, 1, S, S) logits -> (R, C // 2, S', S')."""
        ins_semantic = self.semantic_roi_extractor([stage_semantic], rois)  # (R, C, S, S)
        prob = instance_logits.sigmoid()
        x = torch.cat([instance_feats, ins_semantic, prob], dim=1)  # (R, 2C + 1, S, S)
        for conv in self.fuse_conv:
            x = self.relu(conv(x))
        x = self.relu(self.fuse_transform_out(x))  # (R, C // 2 - 1, S, S)
        x = torch.cat([x, prob], dim=1)  # (R, C // 2, S, S)
        return self.upsample(x) if upsample else x


@MODELS.register_module()
class SimpleRefineMaskHead(BaseModule):
    """Co-DINO-Inst's refine mask head (official name and arguments).

    Stage logits: a 1x1 convolution to ``stage_num_classes[i]`` channels, of which the
    RoI label's is kept (the last stage is class-agnostic with ``1``). The last stage's
    56x56 logits are upsampled x2 (``align_corners=True``) to 112x112.

    Args:
        num_convs_instance (int): 3x3 conv + norm + ReLU layers on the RoI features.
        num_convs_semantic (int): Same on the stride-4 map.
        conv_in_channels_instance (int): RoI feature channels.
        conv_in_channels_semantic (int): Semantic map channels.
        conv_kernel_size_instance (int): Kernel (padding stays 1, as officially).
        conv_kernel_size_semantic (int): Kernel (padding stays 1).
        conv_out_channels_instance (int): Channels of stage 0 (halved each stage).
        conv_out_channels_semantic (int): Channels of the semantic map.
        conv_cfg (dict, optional): Conv layer of the conv stacks.
        norm_cfg (dict, optional): Norm of the conv stacks (officially ``LN2d``).
        fusion_type (str): 'MultiBranchFusionAvg' or 'MultiBranchFusion'.
        dilations (Sequence[int]): Fusion branch dilations.
        semantic_out_stride (int): Stride of the semantic map (4 for Co-DINO's stride-4
            encoder level).
        stage_num_classes (Sequence[int]): Logit channels per stage.
        stage_sup_size (Sequence[int]): Supervised size of each stage.
        pre_upsample_last_stage (bool): Upsample the last stage's features rather than
            its logits.
        upsample_cfg (dict, optional): Stage upsampling layer; defaults to x2 bilinear.
        loss_weight (float): Factor of the BAR loss.
        loss_cfg (dict, optional): The BAR loss (``BARCrossEntropyLoss`` =
            :class:`BARLoss`); defaults to the official head's default (stage weights
            0.25, 0.5, 0.75, 1.0, boundary width 2, start stage 1).
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 num_convs_instance: int = 2,
                 num_convs_semantic: int = 4,
                 conv_in_channels_instance: int = 256,
                 conv_in_channels_semantic: int = 256,
                 conv_kernel_size_instance: int = 3,
                 conv_kernel_size_semantic: int = 3,
                 conv_out_channels_instance: int = 256,
                 conv_out_channels_semantic: int = 256,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 fusion_type: str = 'MultiBranchFusionAvg',
                 dilations: Sequence[int] = (1, 3, 5),
                 semantic_out_stride: int = 4,
                 stage_num_classes: Sequence[int] = (80, 80, 80, 80),
                 stage_sup_size: Sequence[int] = (14, 28, 56, 112),
                 pre_upsample_last_stage: bool = False,
                 upsample_cfg: OptConfigType = None,
                 loss_weight: float = 1.0,
                 loss_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if upsample_cfg is None:
            upsample_cfg = dict(type='bilinear', scale_factor=2)
        if loss_cfg is None:
            loss_cfg = dict(type='BARCrossEntropyLoss',
                            stage_instance_loss_weight=[0.25, 0.5, 0.75, 1.0],
                            boundary_width=2, start_stage=1)
        if len(stage_sup_size) < 2 or len(stage_num_classes) != len(stage_sup_size):
            raise ValueError(f'mask_head: stage_sup_size {list(stage_sup_size)} and '
                             f'stage_num_classes {list(stage_num_classes)} need the same '
                             'length, at least 2')
        self.stage_sup_size = list(stage_sup_size)
        self.stage_num_classes = list(stage_num_classes)
        self.semantic_out_stride = semantic_out_stride
        self.pre_upsample_last_stage = pre_upsample_last_stage
        self.loss_weight = loss_weight
        self.loss_func = MODELS.build(loss_cfg)
        norm_cfg = _resolve_norm(norm_cfg)
        self.instance_convs = self._conv_stack(num_convs_instance, conv_in_channels_instance,
                                               conv_out_channels_instance,
                                               conv_kernel_size_instance, conv_cfg, norm_cfg)
        self.semantic_convs = self._conv_stack(num_convs_semantic, conv_in_channels_semantic,
                                               conv_out_channels_semantic,
                                               conv_kernel_size_semantic, conv_cfg, norm_cfg)
        self.stages = nn.ModuleList()
        channels = [conv_out_channels_instance]
        for size in self.stage_sup_size[:-1]:
            self.stages.append(SimpleSFMStage(
                conv_out_channels_semantic, channels[-1], channels[-1] // 2, fusion_type,
                dilations, size, semantic_out_stride, upsample_cfg))
            channels.append(channels[-1] // 2)
        self.stage_instance_logits = nn.ModuleList([
            nn.Conv2d(c, k, 1) for c, k in zip(channels, self.stage_num_classes)])

    @staticmethod
    def _conv_stack(num_convs: int, in_channels: int, out_channels: int, kernel_size: int,
                    conv_cfg: OptConfigType, norm_cfg: OptConfigType) -> nn.ModuleList:
        return nn.ModuleList([
            ConvModule(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                       padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(num_convs)])

    @property
    def num_classes(self) -> int:
        """Classes of the class-specific stages."""
        return self.stage_num_classes[0]

    def init_weights(self) -> None:
        """ConvModules keep mmcv's init; the plain 1x1 convs get Kaiming (fan_out) and 0 bias."""
        super().init_weights()
        plain = [m for stage in self.stages for m in (
            stage.semantic_transform_in, stage.fuse_conv[0], stage.fuse_transform_out)]
        for m in plain + list(self.stage_instance_logits):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            nn.init.constant_(m.bias, 0)

    def forward_semantic(self, semantic_feat: Tensor) -> List[Tensor]:
        """The full-image branch, once per batch.

        Args:
            semantic_feat (Tensor): The stride-``semantic_out_stride`` map (B, C, h, w).

        Returns:
            list[Tensor]: The convolved map, then each stage's transformed map.
        """
        for conv in self.semantic_convs:
            semantic_feat = conv(semantic_feat)
        return [semantic_feat] + [stage.transform_semantic(semantic_feat)
                                  for stage in self.stages]

    def forward(self, instance_feats: Tensor, semantic: Union[Tensor, List[Tensor]],
                rois: Tensor, roi_labels: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Stage logits of the RoIs.

        Args:
            instance_feats (Tensor): RoI features (R, C, 14, 14).
            semantic (Tensor | list[Tensor]): The stride-4 map (B, C, h, w), or its
                :meth:`forward_semantic` output.
            rois (Tensor): (R, 5) = (batch index, x1, y1, x2, y2) in input pixels.
            roi_labels (Tensor): (R,) class of each RoI.

        Returns:
            tuple: Stage logits [(R, 1, S, S) for S in 14, 28, 56, 112] and the hidden
            states (so that an empty batch can still touch every parameter).
        """
        if isinstance(semantic, Tensor):
            semantic = self.forward_semantic(semantic)
        for conv in self.instance_convs:
            instance_feats = conv(instance_feats)
        hidden_states = [instance_feats, semantic[0]]
        stage_preds = []
        for idx, stage in enumerate(self.stages):
            logits = _take_label(self.stage_instance_logits[idx](instance_feats), roi_labels)
            upsample = self.pre_upsample_last_stage or idx < len(self.stages) - 1
            instance_feats = stage(instance_feats, logits, semantic[idx + 1], rois, upsample)
            stage_preds.append(logits)
            hidden_states += [instance_feats, semantic[idx + 1]]
        if self.stage_num_classes[-1] == 1:  # class-agnostic last stage
            roi_labels = roi_labels.clamp(max=0)
        logits = _take_label(self.stage_instance_logits[-1](instance_feats), roi_labels)
        if not self.pre_upsample_last_stage:
            logits = F.interpolate(logits, scale_factor=2, mode='bilinear', align_corners=True)
        stage_preds.append(logits)
        return stage_preds, hidden_states

    def get_targets(self, pos_boxes: Sequence[Tensor], pos_assigned_gt_inds: Sequence[Tensor],
                    gt_masks: Sequence) -> List[Tensor]:
        """Binary targets of each stage size: each positive's GT mask cropped by its box.

        Args:
            pos_boxes (Sequence[Tensor]): Per image (R_i, 4) positive boxes, input pixels.
            pos_assigned_gt_inds (Sequence[Tensor]): Per image (R_i,) GT index.
            gt_masks (Sequence[BitmapMasks | PolygonMasks]): Per image GT masks.

        Returns:
            list[Tensor]: One (R, S, S) float tensor per stage.
        """
        targets = [[] for _ in self.stage_sup_size]
        for boxes, inds, masks in zip(pos_boxes, pos_assigned_gt_inds, gt_masks):
            boxes = boxes.detach().cpu().numpy().copy()
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, masks.width)  # to the mask canvas
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, masks.height)
            inds = inds.cpu().numpy()
            for s, size in enumerate(self.stage_sup_size):
                crops = masks.crop_and_resize(boxes, (size, size), inds=inds,
                                              device=pos_boxes[0].device).to_ndarray()
                targets[s].append(torch.from_numpy(crops).float().to(pos_boxes[0].device))
        return [torch.cat(t) for t in targets]

    def loss(self, stage_preds: List[Tensor], hidden_states: List[Tensor],
             stage_targets: List[Tensor]) -> Dict[str, Tensor]:
        """``loss_mask`` = ``loss_weight`` x BAR loss; 0 (in the graph) without positives."""
        if stage_preds[0].shape[0] == 0:
            zero = sum(t.sum() for t in stage_preds + hidden_states) * 0.0
            return dict(loss_mask=zero)
        return dict(loss_mask=self.loss_func(stage_preds, stage_targets) * self.loss_weight)

    @staticmethod
    def refine(stage_preds: List[Tensor]) -> Tensor:
        """Test-time coarse-to-fine logits from stage 1 on (stage 0 is not used).

        At each step the finer logits are kept only on the coarse prediction's width-1
        boundary band; elsewhere the coarse logits, upsampled (``align_corners=True``),
        replace them. The refined map is the coarse input of the next step.

        Args:
            stage_preds (list[Tensor]): Stage logits (R, 1, S, S), smallest first.

        Returns:
            Tensor: (R, 1, S_last, S_last) logits.
        """
        coarse = stage_preds[1]
        for fine in stage_preds[2:]:
            size = fine.shape[-2:]
            binary = (coarse[:, 0].sigmoid() >= 0.5).float()
            off_band = (generate_block_target(binary, boundary_width=1) != 1).float()[:, None]
            off_band = F.interpolate(off_band, size, mode='bilinear', align_corners=True) >= 0.5
            upsampled = F.interpolate(coarse, size, mode='bilinear', align_corners=True)
            coarse = torch.where(off_band, upsampled, fine)
        return coarse

    @staticmethod
    def paste_masks(mask_logits: Tensor, boxes: Tensor, img_h: int, img_w: int,
                    threshold: float = 0.5, out: Optional[Tensor] = None) -> Tensor:
        """Paste (R, 1, S, S) logits into their boxes on an (img_h, img_w) canvas.

        mmdet's ``_do_paste_mask`` (``grid_sample``, pixel centres at +0.5): on CPU one RoI
        at a time over its box only, on GPU in chunks of at most 1 GiB of floats. A box wholly
        outside the canvas gives an empty mask.

        Args:
            out (Tensor, optional): A zeroed bool (R, img_h, img_w) tensor to paste into
                (the caller's slice of all detections: no copy of the masks is made).

        Returns:
            Tensor: Bool masks (R, img_h, img_w).
        """
        return SimpleRefineMaskHead.paste_mask_probs(mask_logits.sigmoid(), boxes, img_h, img_w,
                                                     threshold, out)

    @staticmethod
    def paste_mask_probs(probs: Tensor, boxes: Tensor, img_h: int, img_w: int,
                         threshold: float = 0.5, out: Optional[Tensor] = None) -> Tensor:
        """:meth:`paste_masks` of probabilities (R, 1, S, S), e.g. the ``masks`` output of an
        exported graph."""
        num = len(probs)
        device = probs.device
        masks = out if out is not None else torch.zeros(num, img_h, img_w, dtype=torch.bool,
                                                        device=device)
        if num == 0:
            return masks
        # boxes wholly outside the canvas (e.g. on the padding of an LSJ canvas, which
        # with_attn_mask=False treats as image) paste nothing; mmdet's paste would fail on them
        inside = ((boxes[:, 0] < img_w) & (boxes[:, 1] < img_h) & (boxes[:, 2] > 0)
                  & (boxes[:, 3] > 0)).nonzero().flatten()
        if len(inside) == 0:
            return masks
        if device.type == 'cpu':
            num_chunks = len(inside)
        else:
            num_chunks = min(len(inside), int(np.ceil(len(inside) * img_h * img_w
                                                      * BYTES_PER_FLOAT / GPU_MEM_LIMIT)))
        for inds in torch.chunk(inside, num_chunks):
            chunk, spatial = _do_paste_mask(probs[inds], boxes[inds], img_h, img_w,
                                            skip_empty=device.type == 'cpu')
            masks[(inds, ) + spatial] = chunk >= threshold
        return masks

