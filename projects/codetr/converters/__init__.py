"""Checkpoint converters: official Co-DETR (mmdet 2.x) and mmdet 3.x port layouts -> this
package's modules."""
from .co_deformable_detr import KEY_RULES, ConversionError, convert_state_dict, invert_state_dict
from .co_dino import (
                      CO_DINO_KEY_RULES,
                      CO_DINO_PORT_KEY_RULES,
                      CO_DINO_VIT_KEY_RULES,
                      LAYOUTS,
                      detect_layout,
                      rules_for_layout,
)

__all__ = [
    'KEY_RULES', 'ConversionError', 'convert_state_dict', 'invert_state_dict',
    'CO_DINO_KEY_RULES', 'CO_DINO_PORT_KEY_RULES', 'CO_DINO_VIT_KEY_RULES', 'LAYOUTS',
    'detect_layout', 'rules_for_layout'
]
