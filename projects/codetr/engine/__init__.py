from .hooks import AtomicCheckpointHook, CheckpointMatchHook, RandomStateHook
from .optimizers import FiniteCheckOptimWrapper

__all__ = ['AtomicCheckpointHook', 'CheckpointMatchHook', 'RandomStateHook',
           'FiniteCheckOptimWrapper']
