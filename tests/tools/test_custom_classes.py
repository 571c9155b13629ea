"""Custom classes in a short child config (docs/get_started.md, "Your own classes"), fine-tuned
from an 80-class checkpoint through tools/train.py and evaluated by tools/test.py, for
Co-Deformable-DETR (the synthetic config) and Co-DINO (the R50 COCO config, shrunk as in the
config matrix)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_model, load_cfg
from mmengine.config import Config

from projects.codetr.utils import read_checkpoint
from tools.misc.generate_synthetic_coco import generate_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_config_matrix import _scale_options, sampling_options  # noqa: E402
from test_tools import COCO_KEYS, REPO_ROOT, _run, val_metrics  # noqa: E402

GET_STARTED = REPO_ROOT / 'docs' / 'get_started.md'
CLASSES = ('cat', 'dog', 'bird')
BASES = {'co_deformable_detr': REPO_ROOT / 'configs' / 'co_deformable_detr_synthetic.py',
         'co_dino': REPO_ROOT / 'configs' / 'co_dino_5scale_r50_1x_coco.py'}
CLASS_LAYERS = {'query_head.cls_branches.0.weight': 3, 'roi_head.0.bbox_head.fc_cls.weight': 4,
                'bbox_head.0.atss_cls.weight': 3}


def documented_child_config() -> str:
    """The python block after the ``custom-classes-config`` marker of docs/get_started.md."""
    text = GET_STARTED.read_text()
    found = re.search(r'<!-- custom-classes-config.*?-->\n```python\n(.*?)```', text, re.S)
    assert found, f'no custom-classes block in {GET_STARTED}'
    return found.group(1)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    """Synthetic images whose annotation files name 3 categories (ids 7-9)."""
    root = tmp_path_factory.mktemp('three_classes')
    for split, num in (('train', 4), ('val', 3)):
        generate_split(root, split, num, img_size=64, seed=2)
        ann_file = root / 'annotations' / f'instances_{split}.json'
        data = json.loads(ann_file.read_text())
        data['categories'] = [dict(id=7 + i, name=name) for i, name in enumerate(CLASSES)]
        for ann in data['annotations']:
            ann['category_id'] = 7 + ann['category_id'] % 3
        ann_file.write_text(json.dumps(data))
    return root


def _child_config(tmp_path: Path, base: Path) -> Path:
    text = documented_child_config()
    assert "_base_ = './co_deformable_detr_synthetic.py'" in text
    child = tmp_path / 'my_classes.py'
    child.write_text(text.replace("'./co_deformable_detr_synthetic.py'", repr(str(base))))
    return child


def _options(config: Path, data_root: Path) -> list[str]:
    cfg = Config.fromfile(str(config))
    root = f'{data_root}/'
    opts = []
    for split in ('train', 'val', 'test'):
        key, files = f'{split}_dataloader', 'train' if split == 'train' else 'val'
        opts += [f'{key}.dataset.data_root={root}', f'{key}.num_workers=0',
                 f'{key}.persistent_workers=False', f'{key}.batch_size=2',
                 f'{key}.dataset.ann_file=annotations/instances_{files}.json',
                 f'{key}.dataset.data_prefix.img={files}/']
    ann = f'{root}annotations/instances_val.json'
    opts += [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
             'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
             'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
             'default_hooks.checkpoint.save_optimizer=False', 'model.backbone.init_cfg=None']
    if cfg.model.query_head.type == 'CoDINOHead':  # the config matrix's sizes
        opts += _scale_options(cfg) + sampling_options(cfg)
    return ['--cfg-options', *opts]


@pytest.mark.parametrize('name', list(BASES))
def test_child_config_with_own_classes_finetunes_and_evaluates(name, data_root, tmp_path):
    base = BASES[name]
    child = _child_config(tmp_path, base)
    cfg = Config.fromfile(str(child))
    assert cfg.model.num_classes == 3 and tuple(cfg.classes) == CLASSES
    assert tuple(cfg.test_dataloader.dataset.metainfo.classes) == CLASSES

    # an 80-class checkpoint of the base model (COCO classes)
    base_cfg = load_cfg(base)
    base_cfg.model.num_classes = 80
    source = build_model(base_cfg, seed=1)
    coco80 = tmp_path / 'coco80.pth'
    torch.save(dict(meta={}, state_dict=source.state_dict()), coco80)
    assert source.state_dict()['query_head.cls_branches.0.weight'].shape[0] == 80

    work_dir = tmp_path / 'run'
    options = _options(child, data_root)
    _run([sys.executable, 'tools/train.py', child, '--work-dir', work_dir, *options,
          f'load_from={coco80}'], timeout=420)
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'tensors have a different shape in the checkpoint and keep their initial values' in log
    for key in CLASS_LAYERS:
        assert key in log, key  # each class layer is listed as re-initialised
    ckpt = read_checkpoint(str(work_dir / 'epoch_1.pth'))
    for key, rows in CLASS_LAYERS.items():
        assert ckpt['state_dict'][key].shape[0] == rows, key
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == CLASSES

    metrics_out = tmp_path / 'metrics.json'
    _run([sys.executable, 'tools/test.py', child, work_dir / 'epoch_1.pth', '--work-dir',
          tmp_path / 'test', '--metrics-out', metrics_out, *options], timeout=300)
    metrics = json.loads(metrics_out.read_text())
    assert {k: metrics[k] for k in COCO_KEYS} == pytest.approx(val_metrics(work_dir), abs=1e-4)


def test_list_override_in_a_child_config_is_a_clear_error(tmp_path):
    """The way the Why section of the issue wrote it: the lists replace the base's heads."""
    child = tmp_path / 'lists.py'
    child.write_text(f"_base_ = {str(BASES['co_deformable_detr'])!r}\n"
                     "model = dict(query_head=dict(num_classes=3),\n"
                     "             roi_head=[dict(bbox_head=dict(num_classes=3))],\n"
                     "             bbox_head=[dict(num_classes=3)])\n")
    with pytest.raises(ValueError, match=r'model.roi_head\[0\] has no "type".*num_classes=N'):
        build_model(load_cfg(child))


def test_detector_num_classes_reaches_every_head():
    cfg = load_cfg(BASES['co_deformable_detr'])
    cfg.model.num_classes = 5
    model = build_model(cfg)
    assert model.query_head.num_classes == 5
    assert model.roi_head[0].bbox_head.num_classes == 5
    assert model.bbox_head[0].num_classes == 5
    assert model.query_head.cls_branches[0].out_features == 5
    cfg.model.num_classes = 0
    with pytest.raises(ValueError, match='model.num_classes=0'):
        build_model(cfg)
