from .backbones import ViT
from .dense_heads import CoATSSHead, CoDeformDETRHead, CoDINOHead
from .detectors import CoDETR
from .layers import (
                     AuxPositives,
                     AuxQueryTargets,
                     CoDeformableDetrTransformerDecoder,
                     CoDeformableDetrTransformerDecoderLayer,
                     CoDeformableDetrTransformerEncoder,
                     CoDeformableDetrTransformerEncoderLayer,
                     CoDinoTransformerDecoder,
                     LN2d,
                     build_aux_query_targets,
)
from .losses import BARLoss, generate_block_target
from .necks import SFP
from .roi_heads import CoMaskIoUHead, CoStandardRoIHead, SimpleRefineMaskHead

__all__ = [
    'CoATSSHead', 'CoDeformDETRHead', 'CoDINOHead', 'CoDETR', 'AuxPositives', 'AuxQueryTargets',
    'build_aux_query_targets', 'CoDeformableDetrTransformerDecoder',
    'CoDeformableDetrTransformerDecoderLayer', 'CoDeformableDetrTransformerEncoder',
    'CoDeformableDetrTransformerEncoderLayer', 'CoDinoTransformerDecoder', 'CoStandardRoIHead',
    'BARLoss', 'generate_block_target', 'LN2d', 'CoMaskIoUHead', 'SimpleRefineMaskHead', 'ViT',
    'SFP'
]
