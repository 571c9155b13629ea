from .co_roi_head import CoStandardRoIHead
from .mask_heads import (
    CoMaskIoUHead,
    MultiBranchFusion,
    MultiBranchFusionAvg,
    SimpleRefineMaskHead,
    SimpleSFMStage,
)

__all__ = ['CoStandardRoIHead', 'CoMaskIoUHead', 'MultiBranchFusion', 'MultiBranchFusionAvg',
           'SimpleRefineMaskHead', 'SimpleSFMStage']
