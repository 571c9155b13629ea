from .aux_queries import AuxPositives, AuxQueryTargets, build_aux_query_targets
from .co_transformer import (
                             CoDeformableDetrTransformerDecoder,
                             CoDeformableDetrTransformerDecoderLayer,
                             CoDeformableDetrTransformerEncoder,
                             CoDeformableDetrTransformerEncoderLayer,
    CoDinoTransformerDecoder,
)
from .norm import LN2d

__all__ = [
    'AuxPositives', 'AuxQueryTargets', 'build_aux_query_targets',
    'CoDeformableDetrTransformerDecoder', 'CoDeformableDetrTransformerDecoderLayer',
    'CoDeformableDetrTransformerEncoder', 'CoDeformableDetrTransformerEncoderLayer',
    'CoDinoTransformerDecoder', 'LN2d'
]
