from .checkpoint_compat import register_checkpoint_safe_globals
from .pretrained import register_torchvision_fallback

__all__ = ['register_checkpoint_safe_globals', 'register_torchvision_fallback']
