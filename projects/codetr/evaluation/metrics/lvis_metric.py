"""LVIS metric with a configurable cap on detections per image.

mmdet's ``LVISMetric`` evaluates with lvis-api's default of 300 detections per image; the
official Co-DETR LVIS numbers were computed with 1000 ("the same test setting as EVA-02",
official issue #22; its ``LVISResults(..., max_dets=1000)``). ``max_dets`` chooses; the
result keys say which cap produced them (``lvis/bbox_AP`` with ``max_dets`` recorded as
``lvis/max_dets``).
"""
from __future__ import annotations

import datetime
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict

import numpy as np
from mmdet.evaluation import LVISMetric
from mmdet.registry import METRICS
from mmengine.logging import MMLogger

ITEMS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'APr', 'APc', 'APf')


def _lvis_eval_class():
    """lvis-api's ``LVISEval`` with ``accumulate`` written for numpy >= 1.24.

    lvis-api 0.5.3 (the release on PyPI) accumulates with ``np.float``, which numpy 1.24
    removed. This subclass computes the same precision / recall tables (detections of a
    category and area range over all images sorted by score, cumulative true / false
    positives per IoU threshold, precision made non-increasing from the right and read at the
    101 recall thresholds); the rest is lvis-api's.
    """
    from lvis import LVISEval

    class CumulativeLVISEval(LVISEval):

        def accumulate(self) -> None:
            params = self.params
            cat_ids = params.cat_ids if params.use_cats else [-1]
            num_thrs, num_recalls = len(params.iou_thrs), len(params.rec_thrs)
            num_cats, num_areas = len(cat_ids), len(params.area_rng)
            num_imgs = len(params.img_ids)
            precision = -np.ones((num_thrs, num_recalls, num_cats, num_areas))
            recall = -np.ones((num_thrs, num_cats, num_areas))
            for cat in range(num_cats):
                for area in range(num_areas):
                    start = (cat * num_areas + area) * num_imgs
                    evals = [e for e in self.eval_imgs[start:start + num_imgs] if e is not None]
                    if not evals:
                        continue
                    order = np.argsort(-np.concatenate([e['dt_scores'] for e in evals]),
                                       kind='mergesort')
                    matched = np.concatenate([e['dt_matches'] for e in evals], axis=1)[:, order]
                    ignored = np.concatenate([e['dt_ignore'] for e in evals], axis=1)[:, order]
                    num_gt = np.count_nonzero(
                        np.concatenate([e['gt_ignore'] for e in evals]) == 0)
                    if num_gt == 0:
                        continue
                    counted = np.logical_not(ignored)
                    tps = np.cumsum(np.logical_and(matched, counted), axis=1, dtype=np.float64)
                    fps = np.cumsum(np.logical_and(np.logical_not(matched), counted), axis=1,
                                    dtype=np.float64)
                    for t, (tp, fp) in enumerate(zip(tps, fps)):
                        rc = tp / num_gt
                        recall[t, cat, area] = rc[-1] if len(rc) else 0
                        pr = tp / (tp + fp + np.spacing(1))
                        pr = np.maximum.accumulate(pr[::-1])[::-1]  # max to the right
                        at = np.searchsorted(rc, params.rec_thrs, side='left')
                        found = at < len(pr)
                        precision[t, found, cat, area] = pr[at[found]]
                        precision[t, ~found, cat, area] = 0.0
            self.eval = dict(params=params,
                             counts=[num_thrs, num_recalls, num_cats, num_areas],
                             date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S'),
                             precision=precision, recall=recall)

    return CumulativeLVISEval


@METRICS.register_module()
class CappedLVISMetric(LVISMetric):
    """:class:`LVISMetric` for 'bbox' / 'segm' with ``max_dets`` detections per image.

    Args:
        max_dets (int): Detections kept per image (highest scores first) before LVIS
            evaluation: 300 is lvis-api's default (and mmdet's), 1000 the official
            Co-DETR / EVA-02 setting. -1 keeps all.
        **kwargs: :class:`LVISMetric` arguments (``metric`` 'bbox' and/or 'segm').
    """

    default_prefix = 'lvis'

    def __init__(self, max_dets: int = 300, **kwargs) -> None:
        super().__init__(**kwargs)
        unsupported = set(self.metrics) - {'bbox', 'segm'}
        if unsupported:
            raise ValueError(f'CappedLVISMetric: metric {sorted(unsupported)} is not supported '
                             "(use 'bbox' and/or 'segm', or mmdet's LVISMetric)")
        if not isinstance(max_dets, int) or (max_dets < 1 and max_dets != -1):
            raise ValueError(f'CappedLVISMetric: max_dets={max_dets!r}, expected a positive '
                             'int or -1 (no cap)')
        self.max_dets = max_dets

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """LVIS AP (all, rare / common / frequent, sizes) of each metric at ``max_dets``."""
        from lvis import LVIS, LVISResults
        LVISEval = _lvis_eval_class()
        logger = MMLogger.get_current_instance()
        gts, preds = zip(*results)
        with tempfile.TemporaryDirectory() as tmp_dir:
            prefix = self.outfile_prefix or str(Path(tmp_dir) / 'results')
            if self._lvis_api is None:
                self._lvis_api = LVIS(self.gt_to_coco_json(gt_dicts=gts, outfile_prefix=prefix))
            if self.cat_ids is None:
                self.cat_ids = self._lvis_api.get_cat_ids()
            if self.img_ids is None:
                self.img_ids = self._lvis_api.get_img_ids()
            result_files = self.results2json(preds, prefix)
            eval_results = OrderedDict()
            if self.format_only:
                logger.info(f'results are saved in {Path(prefix).parent}')
                return eval_results
            for metric in self.metrics:
                try:
                    detections = LVISResults(self._lvis_api, result_files[metric],
                                             max_dets=self.max_dets)
                except IndexError:  # lvis-api on an empty result list
                    logger.info(f'no {metric} detections on the whole dataset: AP 0')
                    eval_results.update({f'{metric}_{k}': 0.0 for k in ITEMS})
                    continue
                lvis_eval = LVISEval(self._lvis_api, detections, metric)
                lvis_eval.params.imgIds = self.img_ids
                lvis_eval.run()
                lvis_eval.print_results()
                summary = lvis_eval.get_results()
                eval_results.update({f'{metric}_{k}': round(float(summary[k]), 3)
                                     for k in ITEMS})
            eval_results['max_dets'] = self.max_dets
        return eval_results
