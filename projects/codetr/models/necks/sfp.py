"""Simple feature pyramid (SFP) of Co-DINO ViT-L: five maps from the ViT's one stride-16 map.

Specified in ``shared/DESIGN_VITL.md`` section 3 (official ``mmdet/models/necks/sfp.py``).
Up-sampling is nearest x2 + 3x3 conv (no deconvolution), down-sampling max-pool (+ a stride-2
conv for the stride-64 level); convolutions have no bias and are followed by a channel-wise
LayerNorm (:class:`LN2d`, eps 1e-6) and exact GELU. The ``nn.Sequential`` indices are the
official ones (parameter-free layers included), so are the state-dict keys.
"""
from typing import List, Optional, Sequence, Tuple

import torch.utils.checkpoint as cp
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from ..layers.norm import LN2d


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _up() -> nn.Upsample:
    return nn.Upsample(scale_factor=2)  # nearest


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


@MODELS.register_module()
class SFP(BaseModule):
    """Strides 4 (with ``use_p2``), 8, 16, 32 and 64 from one stride-16 map.

    Args:
        in_channels (Sequence[int]): One entry, the backbone's channels.
        out_channels (int): Channels of every level.
        num_outs (int): Official argument; must be 4 + ``use_p2``.
        use_p2 (bool): Build the stride-4 level.
        use_act_checkpoint (bool): Recompute each level in the backward pass.
        init_cfg (dict, optional): Defaults to Xavier-uniform on the convolutions (official).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int = 5,
                 use_p2: bool = False, use_act_checkpoint: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        if init_cfg is None:
            init_cfg = dict(type='Xavier', layer='Conv2d', distribution='uniform')
        super().__init__(init_cfg=init_cfg)
        if len(in_channels) != 1:
            raise ValueError(f'SFP: in_channels={list(in_channels)}, expected one entry (the '
                             'ViT has one output map)')
        if num_outs != 4 + int(use_p2):
            raise ValueError(f'SFP: num_outs={num_outs} but use_p2={use_p2} gives '
                             f'{4 + int(use_p2)} levels')
        c, out = in_channels[0], out_channels
        self.use_p2 = use_p2
        self.use_act_checkpoint = use_act_checkpoint
        if use_p2:  # stride 4
            self.p2 = nn.Sequential(
                _up(), _conv(c, c // 2, 3), LN2d(c // 2), nn.GELU(),
                _up(), _conv(c // 2, c // 4, 3), LN2d(c // 4), nn.GELU(),
                _conv(c // 4, out, 1), LN2d(out), nn.GELU(), _conv(out, out, 3), LN2d(out))
        self.p3 = nn.Sequential(  # stride 8
            _up(), _conv(c, c // 2, 3), LN2d(c // 2), nn.GELU(),
            _conv(c // 2, out, 1), LN2d(out), nn.GELU(), _conv(out, out, 3), LN2d(out))
        self.p4 = nn.Sequential(  # stride 16
            _conv(c, out, 1), LN2d(out), nn.GELU(), _conv(out, out, 3), LN2d(out))
        self.p5 = nn.Sequential(  # stride 32
            _pool(), _conv(c, out, 1), LN2d(out), nn.GELU(), _conv(out, out, 3), LN2d(out))
        self.p6 = nn.Sequential(  # stride 64
            _pool(), _conv(c, c, 3, stride=2), LN2d(c), nn.GELU(),
            _conv(c, out, 1), LN2d(out), nn.GELU(), _conv(out, out, 3), LN2d(out))

    def forward(self, inputs: List[Tensor]) -> Tuple[Tensor, ...]:
        """[(B, C, h, w)] -> (p2,) p3, p4, p5, p6, each (B, out_channels, ., .)."""
        x = inputs[0]
        levels = ([self.p2] if self.use_p2 else []) + [self.p3, self.p4, self.p5, self.p6]
        if self.use_act_checkpoint and self.training and x.requires_grad:
            return tuple(cp.checkpoint(level, x, use_reentrant=False) for level in levels)
        return tuple(level(x) for level in levels)
