"""Co-DETR (collaborative hybrid assignment training for DETRs) on mmdet 3.x."""
from .aux_queries import AuxPositives, AuxQueryTargets, build_aux_query_targets
from .checkpoint_compat import register_checkpoint_safe_globals
from .checkpoint_hook import AtomicCheckpointHook
from .co_atss_head import CoATSSHead
from .co_deformable_detr_head import CoDeformDETRHead
from .co_detr import CoDETR
from .co_roi_head import CoStandardRoIHead
from .co_transformer import CoDeformableDetrTransformerDecoder
from .converters import KEY_RULES, ConversionError, convert_state_dict, invert_state_dict
from .datasets import CheckedCocoDataset
from .ms_deform_attn_cpu import multi_scale_deformable_attn_cpu, use_fast_cpu_ms_deform_attn
from .optim_wrapper import FiniteCheckOptimWrapper
from .pretrained import register_torchvision_fallback
from .rng_state_hook import RandomStateHook
from .transforms import CheckedLoadImageFromFile

__all__ = [
    'AuxPositives', 'AuxQueryTargets', 'build_aux_query_targets', 'CoATSSHead',
    'CoDeformDETRHead', 'CoDETR', 'CoStandardRoIHead', 'CoDeformableDetrTransformerDecoder',
    'register_torchvision_fallback', 'KEY_RULES', 'ConversionError', 'convert_state_dict',
    'invert_state_dict', 'register_checkpoint_safe_globals', 'multi_scale_deformable_attn_cpu',
    'use_fast_cpu_ms_deform_attn', 'AtomicCheckpointHook', 'CheckedCocoDataset',
    'CheckedLoadImageFromFile', 'FiniteCheckOptimWrapper', 'RandomStateHook'
]

register_torchvision_fallback()
register_checkpoint_safe_globals()
use_fast_cpu_ms_deform_attn()  # CPU tensors only; opt out with CODETR_DISABLE_FAST_MSDA=1
