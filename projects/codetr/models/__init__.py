from .dense_heads import CoATSSHead, CoDeformDETRHead
from .detectors import CoDETR
from .layers import (
                     AuxPositives,
                     AuxQueryTargets,
                     CoDeformableDetrTransformerDecoder,
                     CoDeformableDetrTransformerDecoderLayer,
                     CoDeformableDetrTransformerEncoder,
                     CoDeformableDetrTransformerEncoderLayer,
                     build_aux_query_targets,
)
from .roi_heads import CoStandardRoIHead

__all__ = [
    'CoATSSHead', 'CoDeformDETRHead', 'CoDETR', 'AuxPositives', 'AuxQueryTargets',
    'build_aux_query_targets', 'CoDeformableDetrTransformerDecoder',
    'CoDeformableDetrTransformerDecoderLayer', 'CoDeformableDetrTransformerEncoder',
    'CoDeformableDetrTransformerEncoderLayer', 'CoStandardRoIHead'
]
