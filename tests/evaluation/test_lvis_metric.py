"""CappedLVISMetric: lvis-api AP with a detections-per-image cap, on numpy >= 1.24."""
import json

import numpy as np
import pytest
import torch

from projects.codetr.evaluation import CappedLVISMetric
from projects.codetr.evaluation.metrics.lvis_metric import _lvis_eval_class


def _lvis_file(tmp_path):
    """3 images of 100 x 100, one object each (categories 1, 2, 3: frequent, common, rare)."""
    images = [dict(id=i, width=100, height=100, coco_url=f'http://x/val2017/{i}.jpg',
                   neg_category_ids=[], not_exhaustive_category_ids=[]) for i in (1, 2, 3)]
    boxes = {1: [10, 10, 30, 40], 2: [50, 20, 20, 20], 3: [5, 60, 40, 30]}
    anns = [dict(id=i, image_id=i, category_id=i, bbox=boxes[i], area=boxes[i][2] * boxes[i][3],
                 segmentation=[[boxes[i][0], boxes[i][1], boxes[i][0] + boxes[i][2], boxes[i][1],
                                boxes[i][0] + boxes[i][2], boxes[i][1] + boxes[i][3],
                                boxes[i][0], boxes[i][1] + boxes[i][3]]]) for i in (1, 2, 3)]
    cats = [dict(id=i, name=f'c{i}', frequency='fcr'[i - 1], synset=f'c{i}') for i in (1, 2, 3)]
    path = tmp_path / 'lvis_val.json'
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return str(path), boxes


def _predictions(boxes, num_decoys):
    """Per image: ``num_decoys`` high-score wrong boxes, then the right one."""
    preds = []
    for img_id, (x, y, w, h) in boxes.items():
        decoys = torch.tensor([[60., 60., 90., 90.]]).repeat(num_decoys, 1)
        right = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
        preds.append(dict(img_id=img_id, ori_shape=(100, 100), pred_instances=dict(
            bboxes=torch.cat([decoys, right]),
            scores=torch.cat([torch.full((num_decoys, ), 0.9), torch.tensor([0.5])]),
            labels=torch.full((num_decoys + 1, ), img_id - 1, dtype=torch.long))))
    return preds


def _evaluate(ann_file, preds, max_dets):
    metric = CappedLVISMetric(ann_file=ann_file, metric=['bbox'], max_dets=max_dets)
    metric.dataset_meta = dict(classes=('c1', 'c2', 'c3'))
    metric.process({}, preds)
    return metric.evaluate(len(preds))


def test_cap_decides_whether_late_detections_count(tmp_path):
    """With 4 wrong boxes ranked above the right one, a cap of 5 keeps the right one (false
    positives ranked first: 0 < AP < 1), a cap of 4 drops it (AP 0); the cap is reported."""
    ann_file, boxes = _lvis_file(tmp_path)
    perfect = _evaluate(ann_file, _predictions(boxes, 0), 300)
    assert perfect['lvis/bbox_AP'] == 1.0
    assert perfect['lvis/bbox_APr'] == perfect['lvis/bbox_APc'] == perfect['lvis/bbox_APf'] == 1
    assert perfect['lvis/max_dets'] == 300
    kept = _evaluate(ann_file, _predictions(boxes, 4), 5)
    dropped = _evaluate(ann_file, _predictions(boxes, 4), 4)
    assert 0 < kept['lvis/bbox_AP'] < 1 and dropped['lvis/bbox_AP'] == 0.0
    with pytest.raises(ValueError, match='max_dets=0'):
        CappedLVISMetric(ann_file=ann_file, max_dets=0)
    with pytest.raises(ValueError, match="proposal"):
        CappedLVISMetric(ann_file=ann_file, metric=['bbox', 'proposal'])


def test_accumulate_equals_lvis_api(tmp_path, monkeypatch):
    """Our accumulate gives lvis-api's own precision and recall tables (run here with the
    removed np.float alias restored for the test only)."""
    from lvis import LVIS, LVISEval, LVISResults
    ann_file, boxes = _lvis_file(tmp_path)
    rng = np.random.default_rng(0)
    dets = []
    for img_id, (x, y, w, h) in boxes.items():
        for _ in range(20):
            jitter = rng.normal(0, 6, 4)
            dets.append(dict(image_id=img_id, category_id=int(rng.integers(1, 4)),
                             bbox=[float(x + jitter[0]), float(y + jitter[1]),
                                   float(max(w + jitter[2], 2)), float(max(h + jitter[3], 2))],
                             score=float(rng.random())))
    gt = LVIS(ann_file)
    ours = _lvis_eval_class()(gt, LVISResults(gt, dets), 'bbox')
    ours.evaluate()
    ours.accumulate()
    monkeypatch.setattr(np, 'float', float, raising=False)
    ref = LVISEval(gt, LVISResults(gt, dets), 'bbox')
    ref.evaluate()
    ref.accumulate()
    np.testing.assert_array_equal(ours.eval['precision'], ref.eval['precision'])
    np.testing.assert_array_equal(ours.eval['recall'], ref.eval['recall'])
    assert (ours.eval['precision'] > 0).any()
