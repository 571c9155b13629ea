from .checkpoint_hook import AtomicCheckpointHook
from .rng_state_hook import RandomStateHook

__all__ = ['AtomicCheckpointHook', 'RandomStateHook']
