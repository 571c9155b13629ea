"""CheckedCocoMetric: COCO box AP for annotation files without the optional ``info`` key."""
import json

import numpy as np
import pytest
import torch

from projects.codetr.evaluation import CheckedCocoMetric, add_missing_coco_info


def _ann_file(tmp_path, with_info):
    data = dict(
        images=[dict(id=1, file_name='a.png', height=40, width=50)],
        annotations=[dict(id=1, image_id=1, category_id=7, bbox=[5, 6, 20, 10], area=200,
                          iscrowd=0),
                     dict(id=2, image_id=1, category_id=9, bbox=[25, 20, 10, 15], area=150,
                          iscrowd=0)],
        categories=[dict(id=7, name='cat'), dict(id=9, name='dog')])
    if with_info:
        data.update(info=dict(description='x'), licenses=[])
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(data))
    return str(path)


def _evaluate(metric_cls, ann_file, shift=0.0):
    metric = metric_cls(ann_file=ann_file, metric='bbox')
    metric.dataset_meta = dict(classes=('cat', 'dog'))
    pred = dict(bboxes=torch.tensor([[5., 6., 25., 16.], [25. + shift, 20., 35., 35.]]),
                scores=torch.tensor([0.9, 0.8]), labels=torch.tensor([0, 1]))
    metric.process({}, [dict(img_id=1, ori_shape=(40, 50), pred_instances=pred)])
    return metric.compute_metrics(metric.results)


def test_evaluates_file_without_info(tmp_path):
    from mmdet.evaluation import CocoMetric
    ann = _ann_file(tmp_path, with_info=False)
    with pytest.raises(KeyError, match='info'):  # what mmdet's metric does (pycocotools)
        _evaluate(CocoMetric, ann)
    assert _evaluate(CheckedCocoMetric, ann)['bbox_mAP'] == pytest.approx(1.0)
    # a wrong box still costs AP: the metric is real, not a constant
    shifted = _evaluate(CheckedCocoMetric, ann, shift=8.0)['bbox_mAP']
    assert 0 < shifted < 1
    assert np.isclose(_evaluate(CheckedCocoMetric, _ann_file(tmp_path, True))['bbox_mAP'], 1.0)


def test_add_missing_coco_info_keeps_existing_keys():
    data = dict(info=dict(year=2017), images=[])
    assert add_missing_coco_info(data) is True  # licenses added
    assert data['info'] == dict(year=2017) and data['licenses'] == []
    assert add_missing_coco_info(data) is False
