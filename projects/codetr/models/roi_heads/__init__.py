from .co_roi_head import CoStandardRoIHead

__all__ = ['CoStandardRoIHead']
