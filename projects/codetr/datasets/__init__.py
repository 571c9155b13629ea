from .coco import AnnotationFileError, CheckedCocoDataset, check_coco_structure
from .transforms import CheckedLoadImageFromFile, ImageLoadError

__all__ = [
    'AnnotationFileError', 'CheckedCocoDataset', 'check_coco_structure',
    'CheckedLoadImageFromFile', 'ImageLoadError'
]
