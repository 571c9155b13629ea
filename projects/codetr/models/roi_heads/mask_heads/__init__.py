from .mask_iou_head import CoMaskIoUHead
from .simple_refine_mask_head import (
    MultiBranchFusion,
    MultiBranchFusionAvg,
    SimpleRefineMaskHead,
    SimpleSFMStage,
)

__all__ = ['CoMaskIoUHead', 'MultiBranchFusion', 'MultiBranchFusionAvg',
           'SimpleRefineMaskHead', 'SimpleSFMStage']
