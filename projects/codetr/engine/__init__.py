from .hooks import AtomicCheckpointHook, RandomStateHook
from .optimizers import FiniteCheckOptimWrapper

__all__ = ['AtomicCheckpointHook', 'RandomStateHook', 'FiniteCheckOptimWrapper']
