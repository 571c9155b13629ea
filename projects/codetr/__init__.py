"""Co-DETR (collaborative hybrid assignment training for DETRs) on mmdet 3.x.

Importing the package registers its modules in mmdet's registries and has two other
effects, both needed by the configs and both narrow:

- ``torch.serialization.add_safe_globals`` allow-lists the few mmengine/numpy types of
  mmengine checkpoints, so ``torch.load(weights_only=True)`` (torch >= 2.6) loads them
  (:mod:`.utils.checkpoint_compat`);
- only when torchvision is not installed, mmengine's ``torchvision://`` checkpoint scheme
  (which would fail importing torchvision) is served from mmengine's own URL table
  (:mod:`.utils.pretrained`).

mmcv and mmdet functions are not replaced: the fast CPU deformable attention is used by
this package's own attention module (:class:`~.ops.CoMultiScaleDeformableAttention`);
:func:`~.ops.use_fast_cpu_ms_deform_attn` is an explicit opt-in for other models.
"""
from .converters import KEY_RULES, ConversionError, convert_state_dict, invert_state_dict
from .datasets import CheckedCocoDataset, CheckedLoadImageFromFile
from .deploy import CoDETRDeployModel, ONNXBackendDetector
from .engine import (
                     AtomicCheckpointHook,
                     FiniteCheckOptimWrapper,
                     RandomStateHook,
                     ViTLayerDecayOptimizerConstructor,
)
from .evaluation import CappedLVISMetric, CheckedCocoMetric
from .models import (
                     SFP,
                     AuxPositives,
                     AuxQueryTargets,
                     CoATSSHead,
                     CoDeformableDetrTransformerDecoder,
                     CoDeformableDetrTransformerEncoder,
                     CoDeformDETRHead,
                     CoDETR,
                     CoDINOHead,
                     CoDinoTransformerDecoder,
                     CoMaskIoUHead,
                     CoStandardRoIHead,
                     LN2d,
                     SimpleRefineMaskHead,
                     ViT,
                     build_aux_query_targets,
)
from .ops import (
                     CoMultiScaleDeformableAttention,
                     multi_scale_deformable_attn_cpu,
                     use_fast_cpu_ms_deform_attn,
)
from .utils import register_checkpoint_safe_globals, register_torchvision_fallback

__all__ = [
    'AuxPositives', 'AuxQueryTargets', 'build_aux_query_targets', 'CoATSSHead',
    'CoDeformDETRHead', 'CoDINOHead', 'CoDinoTransformerDecoder', 'CoDETR', 'CoStandardRoIHead',
    'CoDeformableDetrTransformerDecoder',
    'CoDeformableDetrTransformerEncoder', 'CoMultiScaleDeformableAttention',
    'register_torchvision_fallback', 'KEY_RULES', 'ConversionError', 'convert_state_dict',
    'invert_state_dict', 'register_checkpoint_safe_globals', 'multi_scale_deformable_attn_cpu',
    'use_fast_cpu_ms_deform_attn', 'AtomicCheckpointHook', 'CheckedCocoDataset',
    'CheckedCocoMetric', 'CheckedLoadImageFromFile', 'FiniteCheckOptimWrapper',
    'RandomStateHook', 'CoDETRDeployModel', 'ONNXBackendDetector', 'CoMaskIoUHead', 'LN2d',
    'SimpleRefineMaskHead', 'SFP', 'ViT', 'CappedLVISMetric', 'ViTLayerDecayOptimizerConstructor'
]

register_torchvision_fallback()
register_checkpoint_safe_globals()
