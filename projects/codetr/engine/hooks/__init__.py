from .checkpoint_hook import AtomicCheckpointHook
from .checkpoint_match_hook import CheckpointMatchHook
from .rng_state_hook import RandomStateHook

__all__ = ['AtomicCheckpointHook', 'CheckpointMatchHook', 'RandomStateHook']
