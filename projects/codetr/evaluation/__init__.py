from .metrics import CheckedCocoMetric, add_missing_coco_info

__all__ = ['CheckedCocoMetric', 'add_missing_coco_info']
