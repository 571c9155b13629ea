from .checkpoint_check import (
    CheckpointFileError,
    CheckpointMismatchError,
    enforce_fit,
    read_checkpoint,
)
from .checkpoint_compat import register_checkpoint_safe_globals
from .pretrained import register_torchvision_fallback

__all__ = [
    'CheckpointFileError', 'CheckpointMismatchError', 'enforce_fit',
    'read_checkpoint', 'register_checkpoint_safe_globals', 'register_torchvision_fallback'
]
