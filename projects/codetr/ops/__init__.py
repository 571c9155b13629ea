from .ms_deform_attn import CoMultiScaleDeformableAttention, ms_deform_attn_core
from .ms_deform_attn_cpu import (
    fast_cpu_msda_enabled,
    multi_scale_deformable_attn_cpu,
    use_fast_cpu_ms_deform_attn,
)

__all__ = [
    'CoMultiScaleDeformableAttention', 'ms_deform_attn_core', 'fast_cpu_msda_enabled',
    'multi_scale_deformable_attn_cpu', 'use_fast_cpu_ms_deform_attn'
]
