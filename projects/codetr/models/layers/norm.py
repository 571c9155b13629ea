"""Channel-wise layer normalisation of (N, C, H, W) maps, as Co-DINO-Inst's mask heads use it."""
import torch
from mmdet.registry import MODELS
from torch import Tensor, nn


@MODELS.register_module()
class LN2d(nn.Module):
    """LayerNorm over the channels of every pixel of an (N, C, H, W) map.

    Mean and biased variance over dim 1, then a per-channel affine transform. The class
    name matters: mmcv's ``ConvModule`` names its norm child after the class
    (``infer_abbr``), and ``LN2d`` yields ``norm_layer``, the key of the official
    checkpoints (``mask_head.instance_convs.0.norm_layer.weight``).

    Args:
        num_features (int): Channels C.
        eps (float): Added to the variance. Defaults to 1e-6.
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
