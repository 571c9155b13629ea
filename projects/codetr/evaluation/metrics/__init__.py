from .coco_metric import CheckedCocoMetric, add_missing_coco_info
from .lvis_metric import CappedLVISMetric

__all__ = ['CheckedCocoMetric', 'add_missing_coco_info', 'CappedLVISMetric']
