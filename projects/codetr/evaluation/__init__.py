from .metrics import CappedLVISMetric, CheckedCocoMetric, add_missing_coco_info

__all__ = ['CheckedCocoMetric', 'add_missing_coco_info', 'CappedLVISMetric']
