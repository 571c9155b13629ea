"""Every shipped config and every documented switch trains and evaluates through the tools.

Each file under ``configs/`` (enumerated, so a new config is covered or fails here) and each
switch of the README's "Switching auxiliary heads" table goes through ``tools/train.py`` for
two iterations with a validation (COCO box / mask or LVIS metrics), on data generated here; for
one config of each evaluation path (``TEST_TOOL_CONFIGS``; every config with ``--full``)
``tools/test.py`` then evaluates the checkpoint, and its metrics must equal the training run's
validation. The R50 / Swin-L
COCO configs keep their modules and pipelines; only sizes shrink through ``--cfg-options``
(image scales in the pipeline lists; 100 queries, 20 denoising queries, 100 RPN proposals and
64 RoI samples per image; Swin-L's third stage), the backbone starts without the ImageNet
download, and the data is a COCO-layout folder with the 80 COCO category names and
no ``info`` key (as many exported datasets). ``eval_module`` (evaluating an aux head) is
covered by ``test_tools.py::test_codetr_aux_heads_evaluate_through_test_tool``.
"""
from __future__ import annotations

import json
import math
import pickle
import re
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from tools.misc.generate_synthetic_coco import generate_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_tools import COCO_KEYS, REPO_ROOT, _run, val_metrics  # noqa: E402

CONFIGS = sorted((REPO_ROOT / 'configs').glob('*.py'))
SYNTHETIC = REPO_ROOT / 'configs' / 'co_deformable_detr_synthetic.py'
TRAIN_IMAGES = 4  # two iterations at batch 2
VAL_IMAGES = 3
SMALL_TRAIN_SCALE = (160, 96)
SMALL_TEST_SCALE = (160, 96)
SEGM_KEYS = tuple(k.replace('bbox', 'segm') for k in COCO_KEYS)
LVIS_KEYS = ('lvis/bbox_AP', 'lvis/bbox_AP50', 'lvis/bbox_APr', 'lvis/bbox_APc', 'lvis/bbox_APf')

# The README's switches, as a user writes them: a config that inherits from the synthetic one.
SWITCHES = {
    'atss_only': '''
model = dict(rpn_head=None, roi_head=None, query_head=dict(num_co_heads=1),
             train_cfg=[_base_.model.train_cfg[0], _base_.model.train_cfg[2]],
             test_cfg=[_base_.model.test_cfg[0], _base_.model.test_cfg[2]])
''',
    'roi_only': '''
model = dict(bbox_head=None, query_head=dict(num_co_heads=1),
             train_cfg=_base_.model.train_cfg[:2], test_cfg=_base_.model.test_cfg[:2])
''',
    'no_pos_coord': '''
model = dict(with_pos_coord=False)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
''',
    'zero_padding': '''
model = dict(query_head=dict(use_zero_padding=True))
''',
}
# tools/test.py (metrics equal to training's validation; the --out dump of mask configs) runs
# for one config of each evaluation path: Co-Deformable-DETR (R50 and synthetic), its FCN-mask
# variant, Co-DINO, Co-DINO-Inst (synthetic), the ViT path, LVIS with masks; all of them with
# `make test-full` (pytest --full)
TEST_TOOL_CONFIGS = {
    'co_deformable_detr_r50_1x_coco', 'co_deformable_detr_synthetic',
    'co_deformable_detr_mask_r50_1x_coco', 'co_dino_5scale_r50_1x_coco',
    'co_deformable_detr_inst_synthetic', 'co_dino_5scale_vit_large_coco',
    'co_dino_5scale_vit_large_lvis_instance',
}
# loss-key families each variant must (+) or must not (-) log
EXPECTED_LOSSES = {
    'co_deformable_detr': ({'loss_rpn_cls', 'loss_cls0', 'loss_centerness1', 'loss_cls_aux0',
                            'loss_cls_aux1'}, set()),
    'deformable_detr_pp': ({'enc_loss_cls', 'd0.loss_cls'},
                           {'loss_rpn_cls', 'loss_cls0', 'loss_cls_aux0'}),
    'no_pos_coord': ({'loss_rpn_cls', 'loss_cls0', 'loss_centerness1'}, {'loss_cls_aux0'}),
    'atss_only': ({'loss_centerness0', 'loss_cls_aux0'}, {'loss_rpn_cls', 'loss_cls_aux1'}),
    'roi_only': ({'loss_rpn_cls', 'loss_cls0', 'acc0', 'loss_cls_aux0'},
                 {'loss_centerness0', 'loss_cls_aux1'}),
    'zero_padding': ({'loss_cls_aux0', 'loss_cls_aux1'}, set()),
    'co_deformable_detr_mask': ({'loss_rpn_cls', 'loss_cls0', 'loss_mask0', 'loss_centerness1',
                                 'loss_cls_aux0', 'loss_cls_aux1'}, set()),
    'co_dino_5scale': ({'dn_loss_cls', 'd0.dn_loss_iou', 'enc_loss_cls', 'loss_rpn_cls',
                        'loss_cls0', 'loss_centerness1', 'loss_cls_aux0', 'loss_cls_aux1'},
                       set()),
    'co_deformable_detr_inst': ({'loss_mask', 'loss_mask_iou', 'loss_rpn_cls', 'loss_cls0',
                                 'loss_centerness1', 'loss_cls_aux0', 'loss_cls_aux1'},
                                {'loss_mask0'}),
    'co_dino_5scale_instance': ({'dn_loss_cls', 'enc_loss_cls', 'loss_mask', 'loss_mask_iou',
                                 'loss_rpn_cls', 'loss_cls0', 'loss_centerness1',
                                 'loss_cls_aux0', 'loss_cls_aux1'}, {'loss_mask0'}),
    'dino_5scale': ({'dn_loss_cls', 'enc_loss_cls', 'd0.loss_cls'},
                    {'loss_rpn_cls', 'loss_cls0', 'loss_cls_aux0'}),
}


def _coco_layout(root: Path, src: Path) -> Path:
    """``root`` as a COCO folder (train2017/, val2017/, annotations/instances_*2017.json)
    with the synthetic images, the 80 COCO categories (shapes -> the first 6) and without
    the optional ``info``/``licenses`` keys; plus the LVIS v1 files of the same images
    (annotations/lvis_v1_*.json: ``coco_url`` image paths, the 1203 LVIS categories with
    frequencies f/c/r, no ``iscrowd``)."""
    from mmdet.datasets import CocoDataset, LVISV1Dataset
    names = CocoDataset.METAINFO['classes']
    lvis_names = LVISV1Dataset.METAINFO['classes']  # all 1203, as the model's class layers
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    for split in ('train', 'val'):
        (root / f'{split}2017').symlink_to(src / split, target_is_directory=True)
        data = json.loads((src / 'annotations' / f'instances_{split}.json').read_text())
        for key in ('info', 'licenses'):
            data.pop(key, None)
        data['categories'] = [dict(id=i + 1, name=name) for i, name in enumerate(names)]
        (root / 'annotations' / f'instances_{split}2017.json').write_text(json.dumps(data))
        lvis = dict(
            images=[dict(img, coco_url=f'http://images.cocodataset.org/{split}2017/'
                                       f'{img["file_name"]}',
                         neg_category_ids=[], not_exhaustive_category_ids=[])
                    for img in data['images']],
            categories=[dict(id=i + 1, name=name, frequency='fcr'[i % 3], synset=name)
                        for i, name in enumerate(lvis_names)],
            annotations=[{k: v for k, v in ann.items() if k != 'iscrowd'}
                         for ann in data['annotations']])
        (root / 'annotations' / f'lvis_v1_{split}.json').write_text(json.dumps(lvis))
    return root


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('matrix_data')
    generate_split(root, 'train', TRAIN_IMAGES, img_size=64, seed=1)
    generate_split(root, 'val', VAL_IMAGES, img_size=64, seed=1)
    return root


@pytest.fixture(scope='module')
def coco_root(synthetic_root, tmp_path_factory) -> Path:
    return _coco_layout(tmp_path_factory.mktemp('matrix_coco'), synthetic_root)


def _scale_options(cfg: Config) -> list[str]:
    """``--cfg-options`` that shrink every resize scale and crop of the pipelines."""
    options = []

    def visit(node, path):
        if isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                visit(item, f'{path}.{i}')
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == 'scales':
                    options.append(f'{path}.scales="[{SMALL_TRAIN_SCALE}]"'.replace(' ', ''))
                elif key == 'scale' and 'Resize' in str(node.get('type')):
                    options.append(f'{path}.scale="{SMALL_TEST_SCALE}"'.replace(' ', ''))
                elif key == 'crop_size':
                    options.append(f'{path}.crop_size="(64,64)"')
                elif key == 'size' and node.get('type') == 'Pad':  # LSJ canvas
                    options.append(f'{path}.size="(128,128)"')
                else:
                    visit(value, f'{path}.{key}')

    for split in ('train', 'val', 'test'):
        dataset, path = cfg[f'{split}_dataloader']['dataset'], f'{split}_dataloader.dataset'
        while True:  # wrappers (MultiImageMixDataset) have pipelines of their own
            if 'pipeline' in dataset:
                visit(dataset['pipeline'], f'{path}.pipeline')
            if 'dataset' not in dataset:
                break
            dataset, path = dataset['dataset'], f'{path}.dataset'
    return options


def sampling_options(cfg: Config) -> list[str]:
    """``--cfg-options`` for 100 queries, 20 denoising queries, 100 RPN proposals and 64 RoI
    samples per image (the synthetic config's sizes), 64 mask-branch samples and 100
    detections per image at test (Co-DINO: 300, Co-DINO-Inst and ViT-L: 1000, each of which
    runs the mask branch)."""
    opts = ['model.query_head.num_query=100', 'model.test_cfg.0.max_per_img=100']
    if cfg.model.query_head.get('dn_cfg'):
        opts.append('model.query_head.dn_cfg.group_cfg.num_dn_queries=20')
    for i, train in enumerate(cfg.model.train_cfg):
        if 'rpn_proposal' in train:
            opts += [f'model.train_cfg.{i}.rpn_proposal.nms_pre=300',
                     f'model.train_cfg.{i}.rpn_proposal.max_per_img=100',
                     f'model.train_cfg.{i}.rcnn.sampler.num=64']
    if cfg.model.get('mask_head'):  # Co-DINO-Inst: 16 positive mask RoIs (COCO: 128)
        opts.append('model.train_cfg.1.sampler.num=64')
    for i, test in enumerate(cfg.model.test_cfg):
        if 'rpn' in test:
            opts += [f'model.test_cfg.{i}.rpn.nms_pre=300',
                     f'model.test_cfg.{i}.rpn.max_per_img=100']
    return opts


def _inner_dataset(cfg: Config, split: str) -> tuple[dict, str]:
    """The innermost dataset of a split (inside wrappers) and its ``--cfg-options`` path."""
    dataset, path = cfg[f'{split}_dataloader']['dataset'], f'{split}_dataloader.dataset'
    while 'dataset' in dataset:
        dataset, path = dataset['dataset'], f'{path}.dataset'
    return dataset, path


def _options(config: Path, synthetic_root: Path, coco_root: Path,
             full: bool = False) -> list[str]:
    cfg = Config.fromfile(str(config))
    # configs with their own `classes` (metainfo) read the synthetic layout; the others are
    # mmdet's COCO dataset config (80 classes, train2017/ + instances_train2017.json)
    is_coco = not _inner_dataset(cfg, 'train')[0].get('metainfo')
    root = coco_root if is_coco else synthetic_root
    ann = cfg.val_dataloader.dataset.ann_file
    opts = [f'{_inner_dataset(cfg, split)[1]}.data_root={root}/'
            for split in ('train', 'val', 'test')]
    opts += [f'val_evaluator.ann_file={root}/{ann}', f'test_evaluator.ann_file={root}/{ann}',
             'train_dataloader.batch_size=2', 'val_dataloader.batch_size=2',
             'test_dataloader.batch_size=2', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
             'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
             # tools/test.py reads the weights only; writing and reading AdamW's state as well
             # cost up to 1.5 GB and 10 s per run (resume: tests/engine/test_reliability.py)
             'default_hooks.checkpoint.save_optimizer=False',
             'model.backbone.init_cfg=None',  # no ImageNet download here
             'load_from=None',  # nor the official Objects365 detectors
             # the usual data-debugging switch; persistent_workers is dropped by the tools
             'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
             'test_dataloader.num_workers=0']
    if is_coco:
        opts += _scale_options(cfg)
    if is_coco and not full:
        # COCO-sized sampling on 3 images of 160x96 px: the same modules and code paths with
        # fewer queries, proposals and RoI samples (the synthetic config's sizes); `make
        # test-full` runs the configs' own counts
        opts += sampling_options(cfg)
    if cfg.model.backbone.type == 'SwinTransformer':
        # Swin-L's third stage shortened from 18 to 2 blocks: the same modules and wiring at
        # a fraction of the CPU time (the full depth is built and checked against the port's
        # key listing in tests/converters/test_co_dino_converter.py)
        depths = list(cfg.model.backbone.depths)
        depths[2] = 2
        opts.append(f'model.backbone.depths={depths}'.replace(' ', ''))
    if cfg.model.backbone.type == 'ViT':
        # ViT-L cut to 2 of 24 blocks (a window block and a global one); the full depth is
        # built and counted in tests/models/backbones/test_vit.py
        opts += ['model.backbone.depth=2', 'model.backbone.window_block_indexes=[0]']
        if cfg.optim_wrapper.get('constructor') == 'ViTLayerDecayOptimizerConstructor':
            opts.append('optim_wrapper.paramwise_cfg.num_layers=2')
    return ['--cfg-options', *opts]


def _logged_losses(work_dir: Path) -> dict[str, float]:
    """Loss values of the last training log line, from mmengine's scalars file."""
    scalars = next(work_dir.glob('*/vis_data/scalars.json'))
    train = [json.loads(line) for line in scalars.read_text().splitlines()
             if '"loss"' in line]
    assert train, f'no training record in {scalars}'
    return {k: v for k, v in train[-1].items() if 'loss' in k or k.startswith('acc')}


def _train_and_test(config: Path, synthetic_root: Path, coco_root: Path,
                    work_dir: Path, full: bool = False) -> tuple[dict, dict]:
    options = _options(config, synthetic_root, coco_root, full)
    _run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir, *options],
         timeout=420)
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'resumed from a checkpoint' not in log  # a fresh run is not a resume
    assert re.search(r'(coco/bbox_mAP|lvis/bbox_AP): [-\d.]+', log), \
        'no validation metrics in the log'
    ckpt = work_dir / 'epoch_1.pth'
    assert ckpt.is_file()
    metrics_out, dump = work_dir / 'test_metrics.json', work_dir / 'dets.pkl'
    evaluator = Config.fromfile(str(config)).test_evaluator
    segm = 'segm' in str(evaluator)
    lvis = evaluator.type == 'CappedLVISMetric'
    keys = COCO_KEYS + (SEGM_KEYS if segm else ())
    if lvis:
        keys = LVIS_KEYS + (tuple(k.replace('bbox', 'segm') for k in LVIS_KEYS) if segm else ())
    if Path(config).stem not in TEST_TOOL_CONFIGS and not full:
        # evaluated by training's validation (checked above); tools/test.py runs for one
        # config of each evaluation path (TEST_TOOL_CONFIGS) and for all with --full
        return _logged_losses(work_dir), val_metrics(work_dir, keys=keys)
    _run([sys.executable, 'tools/test.py', config, ckpt, '--work-dir', work_dir / 'test',
          '--metrics-out', metrics_out, *(['--out', dump] if segm else []), *options],
         timeout=300)
    metrics = json.loads(metrics_out.read_text())
    # tools/test.py reproduces training's validation of the same checkpoint (same images and
    # evaluator): the tool loaded these weights and evaluated this config; mask configs
    # evaluate segm as well, and their --out dump holds COCO RLE masks
    if lvis:
        assert metrics['lvis/max_dets'] == 1000  # the official cap
    if segm:
        with open(dump, 'rb') as f:
            dets = [r['pred_instances'] for r in pickle.load(f)]
        assert len(dets) == VAL_IMAGES
        for pred in dets:
            assert len(pred['masks']) == len(pred['scores']) > 0
            assert {'size', 'counts'} <= set(pred['masks'][0])
    assert {k: metrics[k] for k in keys} == pytest.approx(val_metrics(work_dir, keys=keys),
                                                          abs=1e-4)
    return _logged_losses(work_dir), metrics


def _check_losses(losses: dict[str, float], variant: str) -> None:
    present, absent = EXPECTED_LOSSES[variant]
    assert present <= set(losses), f'{variant}: missing {present - set(losses)}'
    assert not absent & set(losses), f'{variant}: unexpected {absent & set(losses)}'
    assert all(math.isfinite(v) for v in losses.values()), losses


def test_every_config_is_in_the_matrix():
    names = {c.stem for c in CONFIGS}
    assert SYNTHETIC.stem in names and len(names) >= 5
    for name in names:  # each config is a Co-DETR or an aux-free baseline
        assert name.startswith(('co_deformable_detr', 'deformable_detr_pp', 'co_dino_5scale',
                                'dino_5scale')), name


@pytest.mark.parametrize('config', CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_trains_and_evaluates(config, synthetic_root, coco_root, tmp_path, full_run):
    losses, _ = _train_and_test(config, synthetic_root, coco_root, tmp_path / 'run', full_run)
    variant = 'no_pos_coord' if 'no_pos_coord' in config.stem else re.split(
        '_r50|_swin|_vit|_synthetic', config.stem)[0]
    if config.stem.endswith('_instance'):  # Co-DINO-Inst: the detector-level mask branch
        variant += '_instance'
    _check_losses(losses, variant)


@pytest.mark.parametrize('switch', list(SWITCHES))
def test_switch_trains_and_evaluates(switch, synthetic_root, coco_root, tmp_path):
    config = tmp_path / f'co_deformable_detr_synthetic_{switch}.py'
    config.write_text(f"_base_ = '{SYNTHETIC}'\n{SWITCHES[switch]}")
    losses, _ = _train_and_test(config, synthetic_root, coco_root, tmp_path / 'run')
    _check_losses(losses, switch)

