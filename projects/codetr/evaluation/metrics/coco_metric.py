"""COCO box metric for annotation files without the optional top-level ``info``."""
from __future__ import annotations

from mmdet.evaluation import CocoMetric
from mmdet.registry import METRICS


def add_missing_coco_info(dataset: dict) -> bool:
    """Give a loaded COCO annotation dict an empty ``info`` (and ``licenses``) if absent.

    ``info`` and ``licenses`` are optional in the COCO format and many exports from labelling
    tools omit them, but pycocotools 2.0.10 ``COCO.loadRes`` copies ``dataset['info']`` and
    fails with ``KeyError: 'info'``.

    Args:
        dataset: The ``dataset`` dict of a ``pycocotools.coco.COCO`` object; changed in place.

    Returns:
        bool: Whether anything was added.
    """
    added = False
    for key, empty in (('info', {}), ('licenses', [])):
        if key not in dataset:
            dataset[key] = empty
            added = True
    return added


@METRICS.register_module()
class CheckedCocoMetric(CocoMetric):
    """:class:`~mmdet.evaluation.CocoMetric` that also evaluates annotation files without the
    optional ``info``/``licenses`` keys (see :func:`add_missing_coco_info`). Same arguments.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._coco_api is not None:  # loaded from `ann_file`
            add_missing_coco_info(self._coco_api.dataset)
