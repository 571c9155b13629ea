from .hooks import AtomicCheckpointHook, CheckpointMatchHook, RandomStateHook
from .optimizers import FiniteCheckOptimWrapper, ViTLayerDecayOptimizerConstructor

__all__ = ['AtomicCheckpointHook', 'CheckpointMatchHook', 'RandomStateHook',
           'FiniteCheckOptimWrapper', 'ViTLayerDecayOptimizerConstructor']
