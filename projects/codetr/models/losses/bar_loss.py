"""Boundary-aware refinement (BAR) loss of Co-DINO-Inst's refine mask head.

Stage logits at 14, 28, 56 and 112 px: the first two stages are supervised everywhere, the
last two only on a band around the boundary of the previous stage's prediction and target.
Specified in ``shared/DESIGN_MASKS.md`` section 4.2 (official ``ce.py``).
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor, nn


def generate_block_target(mask_target: Tensor, boundary_width: int = 2) -> Tensor:
    """Label each pixel background (0), boundary band (1) or interior foreground (2).

    With ``k = 2 * boundary_width + 1`` and the mask zero-padded by ``boundary_width``:

    - a foreground pixel is in the band when more than 10 % of its k x k window is not
      foreground (padding counts as not foreground);
    - a background pixel is in the band when more than 10 % of its window is foreground.

    Args:
        mask_target (Tensor): Binary masks (R, S, S).
        boundary_width (int): Half width of the window.

    Returns:
        Tensor: (R, S, S) float with values 0, 1, 2.
    """
    k = 2 * boundary_width + 1
    fg = (mask_target >= 0.5).to(torch.float32)
    padded = F.pad(fg[:, None], [boundary_width] * 4, value=0.0)  # (R, 1, S + 2w, S + 2w)
    window_fg = F.conv2d(padded, fg.new_ones(1, 1, k, k))[:, 0]  # foreground count (R, S, S)
    limit = 0.1 * k * k
    pos_band = (fg > 0) & ((k * k - window_fg) > limit)
    neg_band = (fg == 0) & (window_fg > limit)
    # band 1, else foreground 2, else 0 (torch.where: exports without index_put)
    return torch.where(pos_band | neg_band, 1.0, torch.where(fg > 0, 2.0, 0.0))


def _resize(x: Tensor, size: int) -> Tensor:
    """(R, S, S) -> (R, size, size), bilinear with ``align_corners=True``."""
    return F.interpolate(x[:, None], size=(size, size), mode='bilinear',
                         align_corners=True)[:, 0]


def _band(mask: Tensor, width: int) -> Tensor:
    """Boundary band (float 0/1) of binary masks (R, S, S)."""
    return (generate_block_target(mask, width) == 1).to(torch.float32)


@MODELS.register_module(name=['BARLoss', 'BARCrossEntropyLoss'])
class BARLoss(nn.Module):
    """Sum over stages of ``stage_instance_loss_weight[s]`` x BCE; the stages after
    ``start_stage`` only on the boundary band.

    Also registered as ``BARCrossEntropyLoss``, the official name, with the official
    argument names, so that the official ``loss_cfg`` carries over.

    Args:
        stage_instance_loss_weight (Sequence[float]): Weight of each stage. Defaults to the
            official (0.5, 0.75, 0.75, 1.0).
        boundary_width (int): Half width of the supervised band. Defaults to 2.
        start_stage (int): Last stage supervised on every pixel. Defaults to 1.
        loss_weight (float): Factor of the total. Defaults to 1.0.
    """

    def __init__(self, stage_instance_loss_weight: Sequence[float] = (0.5, 0.75, 0.75, 1.0),
                 boundary_width: int = 2, start_stage: int = 1,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.stage_instance_loss_weight = tuple(stage_instance_loss_weight)
        self.boundary_width = boundary_width
        self.start_stage = start_stage
        self.loss_weight = loss_weight

    def forward(self, stage_preds: List[Tensor], stage_targets: List[Tensor]) -> Tensor:
        """BAR loss.

        Args:
            stage_preds (list[Tensor]): Logits (R, 1, S_s, S_s) of each stage, smallest first.
            stage_targets (list[Tensor]): Binary targets (R, S_s, S_s) of each stage.

        Returns:
            Tensor: Scalar loss (``loss_weight`` applied).
        """
        if len(stage_preds) != len(self.stage_instance_loss_weight):
            raise ValueError(f'BARLoss: {len(stage_preds)} stages, but '
                             f'stage_instance_loss_weight has '
                             f'{len(self.stage_instance_loss_weight)} weights')
        if stage_preds[0].shape[0] == 0:  # no positive RoI: zero, still in the graph
            return sum(p.sum() for p in stage_preds) * 0.0
        total = stage_preds[0].new_zeros(())
        prev_pred = prev_logits = None
        for s, (logits, target) in enumerate(zip(stage_preds, stage_targets)):
            logits = logits[:, 0]  # (R, 1, S, S) -> (R, S, S)
            target = target.to(logits.dtype)
            size = logits.shape[-1]
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction='none')
            if s <= self.start_stage:
                loss = bce.mean()
                refined = logits
            else:
                region = torch.maximum(_band(prev_pred, self.boundary_width),
                                       _band(stage_targets[s - 1].to(logits.dtype),
                                             self.boundary_width))
                region = _resize(region, size) >= 0.5
                loss = (bce * region).sum() / region.sum().clamp(min=1)
                # the prediction as inference builds it: the previous logits upsampled,
                # replaced by this stage's inside the previous prediction's width-1 band
                inside = _resize(_band(prev_pred, 1), size) >= 0.5
                refined = torch.where(inside, logits, _resize(prev_logits, size))
            total = total + self.stage_instance_loss_weight[s] * loss
            prev_logits = refined if s > self.start_stage else logits
            prev_pred = (refined.sigmoid() >= 0.5).to(logits.dtype)
        return self.loss_weight * total
