"""Checkpoint converters: official Co-DETR (mmdet 2.x) layouts -> this package's modules."""
from .co_deformable_detr import KEY_RULES, ConversionError, convert_state_dict, invert_state_dict

__all__ = ['KEY_RULES', 'ConversionError', 'convert_state_dict', 'invert_state_dict']
