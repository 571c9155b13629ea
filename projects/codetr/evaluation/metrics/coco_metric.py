"""COCO box metric for annotation files without the optional top-level ``info``."""
from __future__ import annotations

from typing import Sequence

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
    optional ``info``/``licenses`` keys (see :func:`add_missing_coco_info`).

    Args:
        *args, **kwargs: Arguments of :class:`~mmdet.evaluation.CocoMetric`.
        exclude_img_ids: Images of ``ann_file`` left out of the evaluation (``tools/test.py
            --skip-bad-images`` sets the ids of the images it could not read, so that their
            objects do not count as missed; the metrics file lists them).
    """

    def __init__(self, *args, exclude_img_ids: Sequence[int] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exclude_img_ids = tuple(exclude_img_ids)
        if self._coco_api is not None:  # loaded from `ann_file`
            add_missing_coco_info(self._coco_api.dataset)

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """mmdet's ``process``, after checking that a ``segm`` evaluation gets masks."""
        if 'segm' in self.metrics:
            for sample in data_samples:
                if 'masks' not in sample.get('pred_instances', {}):
                    raise ValueError(
                        f'{type(self).__name__}(metric={self.metrics}): the predictions of '
                        f'image {sample.get("img_id")} have no masks. With Co-DETR the masks '
                        "of the auxiliary RoI mask head come with model.eval_module='two-stage' "
                        "(the query head, 'detr', predicts boxes only); or evaluate "
                        "metric='bbox'")
        super().process(data_batch, data_samples)

    def compute_metrics(self, results: list) -> dict:
        """COCO metrics over the annotation file's images, less ``exclude_img_ids``."""
        if self.exclude_img_ids and self._coco_api is not None and self.img_ids is None:
            excluded = set(self.exclude_img_ids)
            self.img_ids = [i for i in self._coco_api.get_img_ids() if i not in excluded]
        return super().compute_metrics(results)
