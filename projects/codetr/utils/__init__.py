from .checkpoint_check import (
    CheckpointFileError,
    CheckpointMismatchError,
    load_checkpoint_checked,
    read_checkpoint,
)
from .checkpoint_compat import register_checkpoint_safe_globals
from .pretrained import register_torchvision_fallback

__all__ = [
    'CheckpointFileError', 'CheckpointMismatchError', 'load_checkpoint_checked',
    'read_checkpoint', 'register_checkpoint_safe_globals', 'register_torchvision_fallback'
]
