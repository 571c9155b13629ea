"""End-to-end tests of the command-line tools on a tiny synthetic dataset (CPU, a few minutes).

generate data -> tools/train.py -> checkpoint -> --resume -> tools/test.py (COCO metrics)
-> tools/infer.py -> plot_curves, plus 2-process tools/dist_train.sh (gloo) and the dataset
generator's contract (determinism, empty share, valid boxes).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmengine.config import Config

from tools.misc.generate_synthetic_coco import SYNTHETIC_CLASSES, generate_split
from tools.misc.generate_synthetic_coco import main as generate_main

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / 'tests' / 'configs' / 'tiny_atss_synthetic.py'
COCO_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75', 'coco/bbox_mAP_s',
             'coco/bbox_mAP_m', 'coco/bbox_mAP_l')
NUM_VAL = 6


def _env(threads: int = 2) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHON=sys.executable)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get('PYTHONPATH')]))
    return env


def _run(cmd: list[str], timeout: int = 240, threads: int = 2,
         extra_env: dict | None = None, dist: bool = False) -> subprocess.CompletedProcess:
    env = _env(threads)
    env.update(extra_env or {})
    for _ in range(2 if dist else 1):
        if dist:  # a fresh rendezvous port per attempt
            env['PORT'] = str(_free_port())
        proc = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        # Distributed launches get one retry (a port taken between _free_port() and the
        # rendezvous, a gloo abort seen once on an overloaded machine); a failure that
        # repeats is reported.
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, (
        f'{" ".join(map(str, cmd))} failed ({proc.returncode}):\n'
        f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    return proc


def _data_options(data_root: Path) -> list[str]:
    root = f'{data_root}/'
    ann = f'{root}annotations/instances_val.json'
    return ['--cfg-options'] + [f'{split}_dataloader.dataset.data_root={root}'
                                for split in ('train', 'val', 'test')] + [
        f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']


def val_metrics(work_dir: Path, run: int = -1, keys=COCO_KEYS) -> dict[str, float]:
    """The COCO metrics of the last validation of a training run in ``work_dir`` (``run``
    indexes the runs, oldest first: a resume adds one)."""
    scalars = sorted(work_dir.glob('*/vis_data/scalars.json'))[run]
    records = [json.loads(line) for line in scalars.read_text().splitlines()]
    vals = [r for r in records if keys[0] in r]
    assert vals, f'no validation record in {work_dir}'
    return {k: vals[-1][k] for k in keys}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('synthetic')
    generate_split(root, 'train', 16, img_size=64, seed=0)
    generate_split(root, 'val', NUM_VAL, img_size=64, seed=0)
    return root


@pytest.fixture(scope='module')
def trained(data_root: Path, tmp_path_factory) -> Path:
    """Work dir of a 4-iteration tools/train.py run (validation at iteration 4)."""
    work_dir = tmp_path_factory.mktemp('train')
    _run([sys.executable, 'tools/train.py', CONFIG, '--work-dir', work_dir,
          *_data_options(data_root)])
    return work_dir


# ---------------------------------------------------------------- dataset generator


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = generate_split(tmp_path / 'a', 'train', 6, img_size=64, seed=3)
    b = generate_split(tmp_path / 'b', 'train', 6, img_size=64, seed=3)
    c = generate_split(tmp_path / 'c', 'train', 6, img_size=64, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for name in sorted(p.name for p in (tmp_path / 'a' / 'train').iterdir()):
        img_a = cv2.imread(str(tmp_path / 'a' / 'train' / name))
        np.testing.assert_array_equal(img_a, cv2.imread(str(tmp_path / 'b' / 'train' / name)))
        assert not np.array_equal(img_a, cv2.imread(str(tmp_path / 'c' / 'train' / name)))


def test_generator_annotations_are_valid(tmp_path: Path) -> None:
    img_size, num_images = 96, 50
    ann_file = generate_split(tmp_path, 'val', num_images, img_size=img_size, seed=1)
    coco = json.loads(ann_file.read_text())
    assert [c['name'] for c in coco['categories']] == list(SYNTHETIC_CLASSES)
    assert [c['id'] for c in coco['categories']] == list(range(1, len(SYNTHETIC_CLASSES) + 1))
    assert len(coco['images']) == num_images
    for image in coco['images']:
        assert (tmp_path / 'val' / image['file_name']).is_file()
        assert image['width'] == image['height'] == img_size
    with_objects = {a['image_id'] for a in coco['annotations']}
    assert num_images - len(with_objects) == round(0.1 * num_images)  # empty-image share
    sides = []
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1
        assert x + w <= img_size and y + h <= img_size
        assert 0 < ann['area'] <= w * h and ann['iscrowd'] == 0
        sides.append(max(w, h))
    assert len({a['category_id'] for a in coco['annotations']}) == len(SYNTHETIC_CLASSES)
    assert min(sides) <= 12 and max(sides) >= img_size // 3  # ~8 px up to ~half the image
    assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])


def test_generator_object_sizes_and_reuse(tmp_path: Path, capsys) -> None:
    """--min-size/--max-size bound the shapes; --reuse keeps a split made with the same
    arguments and regenerates it when any argument changes."""
    args = ['--out-dir', str(tmp_path), '--num-train', '30', '--num-val', '4', '--img-size',
            '128', '--min-size', '24', '--max-size', '40', '--min-visible', '0.9', '--reuse']
    generate_main(args)
    assert capsys.readouterr().out.count(' generated -> ') == 2
    ann_file = tmp_path / 'annotations' / 'instances_train.json'
    coco = json.loads(ann_file.read_text())
    assert coco['info']['generator']['min_size'] == 24
    sides = sorted(max(a['bbox'][2:]) for a in coco['annotations'])
    # size = sqrt(w*h) in [24, 40], w/h in [0.5, 2] -> longest side in [24, 57] (+ rotation),
    # at most 10 % hidden; the default generator draws shapes from 8 px
    assert len(sides) > 20 and sides[0] >= 20 and sides[-1] <= 64
    mtime = ann_file.stat().st_mtime_ns
    generate_main(args)
    assert capsys.readouterr().out.count(' reused -> ') == 2
    assert ann_file.stat().st_mtime_ns == mtime
    (tmp_path / 'train' / '000003.png').unlink()  # an image missing: regenerated
    generate_main(args[:-1] + ['--max-size', '48', '--reuse'])
    out = capsys.readouterr().out
    assert 'train: 30 images' in out and out.count(' generated -> ') == 2
    assert json.loads(ann_file.read_text())['info']['generator']['max_size'] == 48
    assert (tmp_path / 'train' / '000003.png').is_file()
    with pytest.raises(ValueError, match='min_size=70'):
        generate_split(tmp_path / 'bad', 'val', 2, img_size=128, min_size=70)
    with pytest.raises(ValueError, match='min_visible=1.5'):
        generate_split(tmp_path / 'bad', 'val', 2, img_size=128, min_visible=1.5)


def test_config_classes_match_generator() -> None:
    cfg = Config.fromfile(str(CONFIG))
    assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == SYNTHETIC_CLASSES
    assert cfg.model.bbox_head.num_classes == len(SYNTHETIC_CLASSES)


def test_missing_dataset_error_names_key_and_generator(tmp_path: Path) -> None:
    from tools.misc.tool_utils import check_dataset_paths

    cfg = Config.fromfile(str(CONFIG))
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'nowhere') + '/'
    with pytest.raises(FileNotFoundError, match='train_dataloader.dataset.ann_file') as info:
        check_dataset_paths(cfg, ('train_dataloader',))
    assert 'generate_synthetic_coco.py' in str(info.value)


# ---------------------------------------------------------------- train / test / infer


def test_train_writes_checkpoint_and_logs(trained: Path) -> None:
    import torch

    from projects.codetr.utils.checkpoint_compat import register_checkpoint_safe_globals

    ckpt_path = trained / 'iter_4.pth'
    assert ckpt_path.is_file()
    assert (trained / 'last_checkpoint').read_text().strip().endswith('iter_4.pth')
    register_checkpoint_safe_globals()
    ckpt = torch.load(str(ckpt_path), map_location='cpu')  # weights_only=True
    assert ckpt['meta']['iter'] == 4
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == SYNTHETIC_CLASSES
    records = [json.loads(line) for f in trained.glob('*/vis_data/scalars.json')
               for line in f.read_text().splitlines()]
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert any('coco/bbox_mAP' in r for r in records)


def test_resume_continues_and_plot_curves(trained: Path, data_root: Path,
                                          tmp_path: Path) -> None:
    from tools.analysis_tools.plot_curves import main as plot_main

    _run([sys.executable, 'tools/train.py', CONFIG, '--work-dir', trained, '--resume',
          *_data_options(data_root), 'train_cfg.max_iters=6', 'train_cfg.val_interval=6'])
    assert (trained / 'iter_6.pth').is_file()
    assert len(list(trained.glob('*/vis_data/scalars.json'))) == 2
    logs = sorted(trained.glob('*/*.log'))
    assert 'resumed from' in logs[-1].read_text().lower()

    out = plot_main([str(trained), '--out', str(tmp_path / 'curves.png')])
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 100 and image.std() > 0
    from tools.analysis_tools.plot_curves import find_scalar_files, load_curves
    curves = load_curves(find_scalar_files(trained))
    assert list(curves['loss']) == [1, 2, 3, 4, 5, 6]  # resumed run continues at iter 5
    assert list(curves['metric']) == [4, 6]


def test_test_tool_prints_coco_metrics(trained: Path, data_root: Path, tmp_path: Path) -> None:
    metrics_out = tmp_path / 'metrics.json'
    proc = _run([sys.executable, 'tools/test.py', CONFIG, trained / 'iter_4.pth',
                 '--work-dir', tmp_path / 'work', '--out', tmp_path / 'results.pkl',
                 '--show-dir', tmp_path / 'show', '--metrics-out', metrics_out,
                 *_data_options(data_root)])
    metrics = json.loads(metrics_out.read_text())
    # the same weights, images and evaluator as the first run's validation at iteration 4
    assert {k: metrics[k] for k in COCO_KEYS} == pytest.approx(val_metrics(trained, run=0),
                                                               abs=1e-4)
    assert 'coco/bbox_mAP' in proc.stdout and 'Average Precision' in proc.stdout
    with open(tmp_path / 'results.pkl', 'rb') as f:
        results = pickle.load(f)
    assert len(results) == NUM_VAL and 'pred_instances' in results[0]
    assert len(list((tmp_path / 'show').glob('*.png'))) == NUM_VAL


def test_infer_writes_png_and_json(trained: Path, data_root: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / 'infer'
    _run([sys.executable, 'tools/infer.py', data_root / 'val', CONFIG, trained / 'iter_4.pth',
          '--out-dir', out_dir, '--score-thr', '0.0', '--device', 'cpu'])
    result = json.loads((out_dir / 'detections.json').read_text())
    assert result['classes'] == list(SYNTHETIC_CLASSES)
    assert len(result['images']) == NUM_VAL
    for record in result['images']:
        assert (out_dir / f'{Path(record["file"]).stem}.png').is_file()
        n = len(record['bboxes'])
        assert len(record['scores']) == len(record['labels']) == len(record['class_names']) == n
        for box, label, name in zip(record['bboxes'], record['labels'],
                                    record['class_names']):
            assert len(box) == 4 and box[0] <= box[2] and box[1] <= box[3]
            assert SYNTHETIC_CLASSES[label] == name
    png = cv2.imread(str(out_dir / '000000.png'))
    assert png.shape[:2] == (64, 64)


def test_infer_upscales_draws_ground_truth_and_contact_sheet(trained: Path, data_root: Path,
                                                            tmp_path: Path) -> None:
    out_dir = tmp_path / 'infer'
    _run([sys.executable, 'tools/infer.py', data_root / 'val', CONFIG, trained / 'iter_4.pth',
          '--out-dir', out_dir, '--score-thr', '0.0', '--min-side', '256', '--gt-ann',
          data_root / 'annotations' / 'instances_val.json', '--contact-sheet',
          out_dir / 'sheet.png', '--sheet-size', '4', '--sheet-tile', '384'])
    png = cv2.imread(str(out_dir / '000000.png'))
    assert png.shape[:2] == (256, 512)  # 64 px upscaled x4, ground truth | prediction
    # the ground-truth half is the upscaled image with the annotated boxes drawn on it
    coco = json.loads((data_root / 'annotations' / 'instances_val.json').read_text())
    image = next(i for i in coco['images']
                 if any(a['image_id'] == i['id'] for a in coco['annotations']))
    gt = [a['bbox'] for a in coco['annotations'] if a['image_id'] == image['id']]
    png = cv2.imread(str(out_dir / image['file_name']))
    raw = cv2.resize(cv2.imread(str(data_root / 'val' / image['file_name'])), (256, 256),
                     interpolation=cv2.INTER_CUBIC)
    changed = np.abs(png[:, :256].astype(int) - raw.astype(int)).max(axis=2) > 40
    x, y, w, h = (round(v * 4) for v in gt[0])
    assert changed[y:y + 3, x:x + w].mean() > 0.5  # the top edge of the first box
    sheet = cv2.imread(str(out_dir / 'sheet.png'))
    # 4 drawings in a 2 x 2 grid of 384 px high tiles with 8 px gutters
    assert sheet.shape[:2] == (2 * 392 + 8, 2 * (768 + 8) + 8)
    json_boxes = json.loads((out_dir / 'detections.json').read_text())['images'][0]['bboxes']
    assert all(max(b) <= 64 for b in json_boxes)  # JSON stays in input-image pixels


def test_infer_ground_truth_reader(tmp_path: Path) -> None:
    """xywh -> xyxy, labels through category names, crowd skipped, masks drawn from the
    segmentations, clear errors."""
    from tools.infer import _decode_segmentations, load_ground_truth
    polygon = [[1, 2, 11, 2, 11, 22, 1, 22]]
    coco = dict(images=[dict(id=7, file_name='sub/a.png', height=30, width=40),
                        dict(id=8, file_name='b.png')],
                categories=[dict(id=3, name='star'), dict(id=9, name='ring')],
                annotations=[dict(id=1, image_id=7, category_id=9, bbox=[1, 2, 10, 20],
                                  segmentation=polygon),
                             dict(id=2, image_id=7, category_id=3, bbox=[0, 0, 5, 5],
                                  iscrowd=1)])
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps(coco))
    gt = load_ground_truth(ann, ('ring', 'star'))
    assert gt == {'a.png': ([[1, 2, 11, 22]], [0], [(polygon, 30, 40)]),
                  'b.png': ([], [], [])}
    masks = _decode_segmentations(gt['a.png'][2], (30, 40), scale=2.0)
    assert masks.shape == (1, 60, 80) and masks[0, 4:44, 2:22].mean() > 0.9
    assert masks.sum() == pytest.approx(masks[0, 4:46, 2:24].sum())  # nothing outside
    with pytest.raises(ValueError, match="category 'star' .* not one of the model"):
        load_ground_truth(ann, ('ring',))
    coco['annotations'][0]['category_id'] = 4
    ann.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match='annotation 1 has category_id 4'):
        load_ground_truth(ann, ('ring', 'star'))
    with pytest.raises(FileNotFoundError, match='missing.json'):
        load_ground_truth(tmp_path / 'missing.json', ('ring',))


def test_browse_dataset_saves_pngs(data_root: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / 'browse'
    _run([sys.executable, 'tools/misc/browse_dataset.py', CONFIG, '--output-dir', out_dir,
          '--not-show', '--max-images', '3', *_data_options(data_root)])
    assert len(list(out_dir.glob('*.png'))) == 3


def test_dist_train_two_cpu_processes(data_root: Path, tmp_path: Path) -> None:
    work_dir = tmp_path / 'dist'
    _run(['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', work_dir,
          *_data_options(data_root), 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
          'default_hooks.checkpoint.interval=2'],
         threads=1, dist=True)
    assert (work_dir / 'iter_2.pth').is_file()
    log = next(work_dir.glob('*/*.log')).read_text()
    assert "dist_cfg: {'backend': 'gloo'}" in log
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # world size 2
    assert 'Iter(train) [2/2]' in log and 'coco/bbox_mAP' in log

    metrics_out = tmp_path / 'dist_metrics.json'
    proc = _run(['bash', 'tools/dist_test.sh', CONFIG, work_dir / 'iter_2.pth', '2',
                 '--work-dir', tmp_path / 'dist_test', '--metrics-out', metrics_out,
                 *_data_options(data_root)],
                threads=1, dist=True)
    assert set(COCO_KEYS) <= set(json.loads(metrics_out.read_text()))
    assert proc.stdout.count('metrics written to') == 1  # only rank 0 reports


def test_plot_curves_places_val_at_its_iteration(tmp_path: Path) -> None:
    from tools.analysis_tools.plot_curves import find_scalar_files, load_curves, plot_curves

    run = tmp_path / '20260101_000000' / 'vis_data'
    run.mkdir(parents=True)
    (run / 'config.py').write_text(
        "train_cfg = dict(type='IterBasedTrainLoop', max_iters=320, val_interval=150)\n")
    lines = []
    for it in range(20, 321, 20):  # logger interval 20: val at 150/300/320 comes after 140/...
        lines.append(json.dumps(dict(loss=10.0 / it, iter=it, step=it)))
        if it in (140, 300, 320):
            lines.append(json.dumps({'coco/bbox_mAP': it / 1000, 'step': 0}))
    (run / 'scalars.json').write_text('\n'.join(lines) + '\n')
    curves = load_curves(find_scalar_files(tmp_path))
    assert list(curves['metric']) == [150, 300, 320]
    assert curves['metric'][150] == pytest.approx(0.14)
    assert len(curves['loss']) == 16
    out = plot_curves(curves, tmp_path / 'c.png')
    assert cv2.imread(str(out)).shape == (400, 1100, 3)


# ---------------------------------------------------------------- Co-DETR through the tools

CODETR_SYNTHETIC = REPO_ROOT / 'configs' / 'co_deformable_detr_synthetic.py'


def _codetr_options(data_root: Path) -> list[str]:
    """--cfg-options: tiny data, one 2-iteration epoch, single-process loading."""
    opts = _data_options(data_root)
    for split in ('train', 'val', 'test'):
        opts += [f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    return opts + ['train_dataloader.batch_size=8', 'train_cfg.max_epochs=1',
                   'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
                   'default_hooks.logger.interval=1']


@pytest.fixture(scope='module')
def codetr_trained(data_root: Path, tmp_path_factory) -> Path:
    """Checkpoint of one epoch (16 images / batch 4) of the synthetic Co-DETR config."""
    work_dir = tmp_path_factory.mktemp('codetr')
    _run([sys.executable, 'tools/train.py', CODETR_SYNTHETIC, '--work-dir', work_dir,
          *_codetr_options(data_root)])
    return work_dir


def test_codetr_config_classes_match_generator() -> None:
    cfg = Config.fromfile(str(CODETR_SYNTHETIC))
    assert tuple(cfg.classes) == SYNTHETIC_CLASSES
    assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == SYNTHETIC_CLASSES
    num = len(SYNTHETIC_CLASSES)
    assert cfg.model.query_head.num_classes == num
    assert cfg.model.roi_head[0].bbox_head.num_classes == num
    assert cfg.model.bbox_head[0].num_classes == num


def test_codetr_train_test_infer(codetr_trained: Path, data_root: Path,
                                 tmp_path: Path) -> None:
    ckpt = codetr_trained / 'epoch_1.pth'
    assert ckpt.is_file()
    log = next(codetr_trained.glob('*/*.log')).read_text()
    assert 'loss_cls_aux1' in log and 'coco/bbox_mAP' in log

    metrics_out = tmp_path / 'metrics.json'
    _run([sys.executable, 'tools/test.py', CODETR_SYNTHETIC, ckpt, '--work-dir',
          tmp_path / 'test', '--metrics-out', metrics_out, *_codetr_options(data_root)])
    assert set(COCO_KEYS) <= set(json.loads(metrics_out.read_text()))

    out_dir = tmp_path / 'infer'
    _run([sys.executable, 'tools/infer.py', data_root / 'val' / '000000.png', CODETR_SYNTHETIC,
          ckpt, '--out-dir', out_dir, '--score-thr', '0.0'])
    record = json.loads((out_dir / 'detections.json').read_text())['images'][0]
    assert (out_dir / '000000.png').is_file()
    assert 0 < len(record['bboxes']) <= 100 and set(record['class_names']) <= set(
        SYNTHETIC_CLASSES)


def _predict_in_process(config: Path, ckpt: Path, images: list[Path], eval_module: str,
                        data_root: Path) -> list:
    """``pred_instances`` of each image from ``init_detector`` + ``inference_detector``."""
    from mmdet.apis import inference_detector, init_detector

    from tools.misc.tool_utils import load_config
    cfg = load_config(str(config), {'model.eval_module': eval_module})
    model = init_detector(cfg, str(ckpt), device='cpu')
    return [inference_detector(model, str(image)).pred_instances for image in images]


@pytest.mark.parametrize('eval_module', ['one-stage', 'two-stage'])
def test_codetr_aux_heads_evaluate_through_test_tool(codetr_trained: Path, data_root: Path,
                                                     tmp_path: Path, eval_module: str) -> None:
    """``--cfg-options model.eval_module=...`` evaluates that aux head: the tool's dumped
    predictions are the head's own (in-process), which differ from the query head's."""
    metrics_out, dump = tmp_path / 'metrics.json', tmp_path / 'results.pkl'
    ckpt = codetr_trained / 'epoch_1.pth'
    _run([sys.executable, 'tools/test.py', CODETR_SYNTHETIC, ckpt, '--work-dir',
          tmp_path / 'test', '--metrics-out', metrics_out, '--out', dump, '--no-cpu-optim',
          *_codetr_options(data_root), f'model.eval_module={eval_module}'])
    assert set(COCO_KEYS) <= set(json.loads(metrics_out.read_text()))
    with open(dump, 'rb') as f:
        dumped = {Path(r['img_path']).name: r['pred_instances'] for r in pickle.load(f)}
    images = sorted((data_root / 'val').glob('*.png'))
    assert sorted(dumped) == [p.name for p in images]
    heads = {m: _predict_in_process(CODETR_SYNTHETIC, ckpt, images, m, data_root)
             for m in (eval_module, 'detr')}
    for image, ours, detr in zip(images, heads[eval_module], heads['detr']):
        tool = dumped[image.name]
        assert len(tool['scores']) == len(ours) > 0, image.name
        order = ours.scores.argsort(descending=True)
        tool_order = tool['scores'].argsort(descending=True)
        np.testing.assert_allclose(tool['scores'][tool_order], ours.scores[order], atol=1e-5)
        np.testing.assert_allclose(tool['bboxes'][tool_order], ours.bboxes[order], atol=1e-3)
        assert len(detr) != len(ours) or not np.allclose(
            detr.scores.sort(descending=True).values, ours.scores[order], atol=1e-3)


def test_codetr_dist_train_two_cpu_processes(data_root: Path, tmp_path: Path) -> None:
    """DDP over gloo with every auxiliary head: no unused parameters, same iterations."""
    work_dir = tmp_path / 'dist'
    _run(['bash', 'tools/dist_train.sh', CODETR_SYNTHETIC, '2', '--work-dir', work_dir,
          *_codetr_options(data_root), 'train_dataloader.batch_size=4',
          'train_cfg.val_interval=2'],
         threads=1, dist=True)
    assert (work_dir / 'epoch_1.pth').is_file()
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'GPU number: 2' in log and "'backend': 'gloo'" in log
    assert 'Epoch(train) [1][2/2]' in log  # 16 images / (2 processes x 4) per iteration


def test_mmdet_det_inferencer_runs_our_config(codetr_trained: Path, data_root: Path) -> None:
    """mmdet's own inference API (what demo/image_demo.py calls) on our config + checkpoint.

    It locates the loading step of the test pipeline by the name LoadImageFromFile.
    """
    from mmdet.apis import DetInferencer

    import projects.codetr  # noqa: F401  (the config's custom_imports also does this)

    inferencer = DetInferencer(model=str(CODETR_SYNTHETIC),
                               weights=str(codetr_trained / 'epoch_1.pth'), device='cpu',
                               show_progress=False)
    image = data_root / 'val' / '000000.png'
    result = inferencer(str(image), return_datasamples=True)
    pred = result['predictions'][0].pred_instances
    assert 0 < len(pred) <= 100
    h, w = cv2.imread(str(image)).shape[:2]
    assert float(pred.bboxes[:, 2].max()) <= w + 1 and float(pred.bboxes[:, 3].max()) <= h + 1
    # same detections as the test tool's model path (tools/infer.py uses mmdet's API too)
    as_dict = inferencer(str(image))['predictions'][0]
    assert len(as_dict['scores']) == len(pred)
    assert set(as_dict['labels']) <= set(range(len(SYNTHETIC_CLASSES)))
