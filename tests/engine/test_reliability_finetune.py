"""Fine-tuning and custom data: `load_from` a checkpoint with another number of classes, and
a user's COCO dataset with N classes through a copy of the synthetic config."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import torch
from conftest import ROOT, TINY_CFG, build_model, load_cfg
from mmengine.config import Config
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from reliability_fixtures import log_text, logs_fixture, mmdet_scope_fixture  # noqa: F401

from projects.codetr import datasets  # noqa: F401  (register the modules)
from projects.codetr.engine.hooks.checkpoint_hook import AtomicCheckpointHook
from projects.codetr.utils.checkpoint_compat import register_checkpoint_safe_globals
from tools.misc.generate_synthetic_coco import SYNTHETIC_CLASSES, generate_split

SYNTHETIC_CFG = ROOT / 'configs' / 'co_deformable_detr_synthetic.py'


def _load(path) -> dict:
    register_checkpoint_safe_globals()
    return torch.load(path, map_location='cpu', weights_only=True)


CLASS_LAYERS = ('query_head.cls_branches.', 'roi_head.0.bbox_head.fc_cls.',
                'roi_head.0.bbox_head.fc_reg.', 'bbox_head.0.atss_cls.')


def test_load_from_other_class_count_reinitialises_only_class_layers(tmp_path, logs):
    source = build_model(TINY_CFG, seed=1)  # 80 classes (COCO)
    ckpt_path = tmp_path / 'coco80.pth'
    torch.save(dict(meta={}, state_dict=source.state_dict()), ckpt_path)
    cfg = load_cfg(SYNTHETIC_CFG)  # 6 classes; same backbone and neck widths as the source
    tiny = load_cfg(TINY_CFG)
    cfg.model.backbone, cfg.model.neck = tiny.model.backbone, tiny.model.neck
    target = build_model(cfg, seed=2)
    init = {k: v.clone() for k, v in target.state_dict().items()}

    checkpoint = _load(ckpt_path)
    AtomicCheckpointHook(interval=1).after_load_checkpoint(SimpleNamespace(model=target),
                                                           checkpoint)
    _load_checkpoint_to_model(target, checkpoint)  # what Runner.load_checkpoint does next

    src = source.state_dict()
    skipped = {k for k, v in init.items() if v.shape != src[k].shape}
    assert skipped and all(k.startswith(CLASS_LAYERS) for k in skipped)
    assert {k.rsplit('.', 2)[0] for k in skipped} >= {
        'query_head.cls_branches', 'roi_head.0.bbox_head', 'bbox_head.0'}
    for key, value in target.state_dict().items():
        expected = init[key] if key in skipped else src[key]
        assert torch.equal(value, expected), key
    text = log_text(logs)
    assert f'{len(src) - len(skipped)} of the model\'s {len(src)} tensors loaded' in text
    assert f'{len(skipped)} tensors have a different shape' in text
    for key in skipped:
        assert f'{key} {tuple(src[key].shape)} -> {tuple(init[key].shape)}' in text


def test_custom_dataset_needs_only_the_classes_variable(tmp_path):
    """A copy of the synthetic config with another `classes` tuple trains on a COCO file with
    those categories: every head's num_classes and the dataset metainfo follow."""
    classes = ('cat', 'dog', 'bird')
    text = SYNTHETIC_CFG.read_text()
    old = f'classes = {SYNTHETIC_CLASSES!r}'
    assert old in text
    text = text.replace(old, f'classes = {classes!r}').replace(
        "_base_ = '../tests/", f"_base_ = '{ROOT}/tests/")
    (tmp_path / 'my_config.py').write_text(text)
    cfg = Config.fromfile(str(tmp_path / 'my_config.py'))
    assert cfg.model.query_head.num_classes == 3
    assert cfg.model.roi_head[0].bbox_head.num_classes == 3
    assert cfg.model.bbox_head[0].num_classes == 3
    assert cfg.train_dataloader.dataset.metainfo.classes == classes

    generate_split(tmp_path, 'train', 4, img_size=64, seed=0)
    ann_file = tmp_path / 'annotations' / 'instances_train.json'
    data = json.loads(ann_file.read_text())
    data['categories'] = [dict(id=7, name='cat'), dict(id=8, name='dog'),
                          dict(id=9, name='bird')]
    for ann in data['annotations']:
        ann['category_id'] = 7 + ann['category_id'] % 3
    ann_file.write_text(json.dumps(data))

    from mmdet.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    ds_cfg.update(type='CheckedCocoDataset', data_root=f'{tmp_path}/')
    dataset = DATASETS.build(ds_cfg)
    model = build_model(cfg)
    model.train()
    batch = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), True)
    _, log_vars = model.parse_losses(model.loss(batch['inputs'], batch['data_samples']))
    assert all(math.isfinite(v) for v in log_vars.values())
