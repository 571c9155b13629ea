"""Evaluation and inference never quietly lose or fake results (checkpoints, images, signals).

Driven through the tools as a user runs them (``cli(argv)`` is what ``python tools/X.py``
calls; the signal and one exit-code test run real processes): exit code, message and files.
The checkpoint is the synthetic config's model at its initialisation (saved like mmengine);
what is tested is the loading policy, not accuracy.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, build_model, load_cfg

from projects.codetr.utils.checkpoint_check import (
    CheckpointFileError,
    CheckpointMismatchError,
    match_checkpoint,
    mismatch_message,
    read_checkpoint,
)
from tools.misc.generate_synthetic_coco import SYNTHETIC_CLASSES, generate_split

CONFIG = ROOT / 'configs' / 'co_deformable_detr_synthetic.py'
QUERY_KEY = 'query_head.query_embedding.weight'


def _options(data_root: Path) -> list[str]:
    root = f'{data_root}/'
    ann = f'{root}annotations/instances_val.json'
    opts = ['--cfg-options', f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']
    for split in ('train', 'val', 'test'):
        opts += [f'{split}_dataloader.dataset.data_root={root}',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    return opts


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('synthetic')
    generate_split(root, 'train', 4, img_size=64, seed=0)
    generate_split(root, 'val', 4, img_size=64, seed=0)
    return root


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    """The synthetic config's model, saved as mmengine saves it (meta + state_dict)."""
    model = build_model(load_cfg(CONFIG))
    path = tmp_path_factory.mktemp('ckpt') / 'synthetic.pth'
    torch.save(dict(meta=dict(dataset_meta=dict(classes=SYNTHETIC_CLASSES)),
                    state_dict=model.state_dict()), path)
    return path


def _query_shape(checkpoint: Path) -> list[int]:
    return list(torch.load(checkpoint, weights_only=True)['state_dict'][QUERY_KEY].shape)


# ---------------------------------------------------------------- reading checkpoint files


def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected words of the one-line message)."""
    files = {}
    data = good.read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    files['truncated'] = (tmp_path / 'cut.pth', 'is truncated or corrupt')
    (tmp_path / 'empty.pth').write_bytes(b'')
    files['empty'] = (tmp_path / 'empty.pth', 'is empty (0 bytes)')
    (tmp_path / 'notes.pth').write_text('these are not weights\n')
    files['text'] = (tmp_path / 'notes.pth', 'is not a torch checkpoint')
    torch.save(['a', 'list', 3], tmp_path / 'list.pth')
    files['wrong pickle'] = (tmp_path / 'list.pth', 'holds a list, not a checkpoint')
    torch.save(dict(epoch=3, note='no tensors'), tmp_path / 'meta.pth')
    files['no tensors'] = (tmp_path / 'meta.pth', "holds a dict with keys ['epoch', 'note']")
    torch.save(dict(state_dict={}, args=Namespace(lr=0.1)), tmp_path / 'obj.pth')
    files['weights_only'] = (tmp_path / 'obj.pth',
                             'was refused by torch.load(weights_only=True)')
    with open(tmp_path / 'plain.pkl', 'wb') as f:
        pickle.dump({'w': [1.0, 2.0]}, f)
    files['plain pickle'] = (tmp_path / 'plain.pkl', 'not a torch checkpoint')
    files['missing'] = (tmp_path / 'nope.pth', 'does not exist')
    return files


def test_read_checkpoint_names_the_file_and_the_problem(tmp_path, checkpoint) -> None:
    assert QUERY_KEY in read_checkpoint(str(checkpoint))['state_dict']
    assert QUERY_KEY in read_checkpoint(str(checkpoint), mmap=True)['state_dict']
    for name, (path, words) in _bad_files(tmp_path, checkpoint).items():
        with pytest.raises(CheckpointFileError) as info:
            read_checkpoint(str(path))
        message = str(info.value)
        assert message.startswith(f'checkpoint {str(path)!r} '), (name, message)
        assert words in message, (name, message)
        assert '\n' not in message, (name, message)


def test_test_tool_reports_a_truncated_checkpoint_in_one_line(tmp_path, data_root,
                                                              checkpoint) -> None:
    """A real process: exit code 1, one line on stderr, no traceback, no metrics."""
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(checkpoint.read_bytes()[:4096])
    metrics = tmp_path / 'm.json'
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='2')
    proc = subprocess.run([sys.executable, 'tools/test.py', str(CONFIG), str(cut),
                           '--metrics-out', str(metrics), '--work-dir', str(tmp_path / 'w'),
                           *_options(data_root)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith(
        f'error: checkpoint {str(cut)!r} is truncated or corrupt'), proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    assert not metrics.exists()


@pytest.mark.parametrize('tool', ['infer', 'export'])
def test_inference_tools_refuse_unreadable_checkpoints(tmp_path, data_root, checkpoint,
                                                       capsys, tool) -> None:
    from tools import infer
    from tools.deployment import export_onnx
    path = tmp_path / 'list.pth'
    torch.save(['not', 'weights'], path)
    image = data_root / 'val' / '000000.png'
    if tool == 'infer':
        code = infer.cli([str(image), str(CONFIG), str(path), '--out-dir', str(tmp_path / 'o')])
    else:
        code = export_onnx.cli([str(CONFIG), str(path), '--out', str(tmp_path / 'm.onnx')])
    assert code == 1
    err = capsys.readouterr().err
    assert f'error: checkpoint {str(path)!r} holds a list, not a checkpoint' in err
    assert not (tmp_path / 'o').exists() and not (tmp_path / 'm.onnx').exists()


# ---------------------------------------------------------------- checkpoint fits the config


def test_mismatch_message_counts_examples_and_cause() -> None:
    model = build_model(load_cfg(CONFIG))
    state = dict(model.state_dict())
    rows, dims = state[QUERY_KEY].shape
    state[QUERY_KEY] = torch.zeros(rows + 30, dims)
    del state['query_head.cls_branches.0.bias']
    state['query_head.extra.weight'] = torch.zeros(2)
    match = match_checkpoint(model, state)
    assert (len(match.missing), len(match.unexpected), len(match.mismatched)) == (1, 1, 1)
    assert match.num_loaded == len(model.state_dict()) - 2
    text = mismatch_message(match, 'x.pth', 'cfg.py')
    assert text.splitlines()[0] == (
        f"checkpoint 'x.pth' does not fit the model of cfg.py: {match.num_loaded} of the "
        f"model's {match.num_model} tensors load; 1 missing, 1 unexpected, 1 size-mismatched.")
    assert f'{QUERY_KEY}: checkpoint [{rows + 30}, {dims}], model [{rows}, {dims}]' in text
    assert 'query_head.cls_branches.0.bias' in text and 'query_head.extra.weight' in text
    assert 'Likely cause: the checkpoint was trained with another config' in text

    official = match_checkpoint(model, {'query_head.transformer.level_embeds': torch.zeros(1),
                                        **model.state_dict()})
    assert 'official_to_mmdet3.py' in mismatch_message(official, 'o.pth')
    classes = dict(model.state_dict())
    for key in [k for k in classes if k.startswith('query_head.cls_branches.')]:
        classes[key] = torch.zeros(80, *classes[key].shape[1:])
    assert 'another number of classes' in mismatch_message(match_checkpoint(model, classes),
                                                           'c.pth')


def test_test_tool_refuses_a_checkpoint_of_another_config(tmp_path, data_root, checkpoint,
                                                          capsys) -> None:
    from tools import test as test_tool
    metrics = tmp_path / 'm.json'
    rows, dims = _query_shape(checkpoint)
    code = test_tool.cli([str(CONFIG), str(checkpoint), '--metrics-out', str(metrics),
                          '--work-dir', str(tmp_path / 'w'), *_options(data_root),
                          'model.query_head.num_query=80'])
    err = capsys.readouterr().err
    assert code == 1
    assert f'error: checkpoint {str(checkpoint)!r} does not fit the model of {CONFIG}' in err
    assert '1 size-mismatched' in err
    assert f'{QUERY_KEY}: checkpoint [{rows}, {dims}], model [80, {dims}]' in err
    assert 'Likely cause' in err and '--allow-partial-checkpoint' in err
    assert not metrics.exists()

    # opting in evaluates, and the metrics file says the checkpoint was partial
    code = test_tool.cli([str(CONFIG), str(checkpoint), '--metrics-out', str(metrics),
                          '--work-dir', str(tmp_path / 'w'), '--allow-partial-checkpoint',
                          *_options(data_root), 'model.query_head.num_query=80'])
    assert code == 0
    record = json.loads(metrics.read_text())
    assert 'coco/bbox_mAP' in record
    partial = record['partial_checkpoint']
    assert partial['num_size_mismatched'] == 1 and partial['checkpoint'] == str(checkpoint)
    assert partial['size_mismatched'] == [f'{QUERY_KEY}: checkpoint [{rows}, {dims}], '
                                          f'model [80, {dims}]']
    assert 'evaluated a partly loaded checkpoint' in capsys.readouterr().out


def test_infer_and_export_refuse_a_checkpoint_of_another_config(tmp_path, data_root,
                                                                checkpoint, capsys) -> None:
    from tools import infer
    from tools.deployment import export_onnx
    image = data_root / 'val' / '000000.png'
    code = infer.cli([str(image), str(CONFIG), str(checkpoint), '--out-dir',
                      str(tmp_path / 'o'), '--cfg-options', 'model.query_head.num_query=80'])
    assert code == 1
    assert 'does not fit the model' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()

    out = infer.main([str(image), str(CONFIG), str(checkpoint), '--out-dir',
                      str(tmp_path / 'o'), '--allow-partial-checkpoint', '--cfg-options',
                      'model.query_head.num_query=80'])
    saved = json.loads((tmp_path / 'o' / 'detections.json').read_text())
    assert saved['partial_checkpoint']['num_size_mismatched'] == 1
    assert len(out['images']) == 1

    code = export_onnx.cli([str(CONFIG), str(checkpoint), '--out', str(tmp_path / 'm.onnx'),
                            '--cfg-options', 'model.query_head.num_query=80'])
    assert code == 1 and 'does not fit the model' in capsys.readouterr().err
    assert not (tmp_path / 'm.onnx').exists()


def test_det_inferencer_refuses_until_allowed(tmp_path, data_root, checkpoint) -> None:
    from mmdet.apis import DetInferencer
    wrong = tmp_path / 'wrong.pth'
    state = torch.load(checkpoint, weights_only=True)
    state['state_dict'][QUERY_KEY] = torch.zeros(80, state['state_dict'][QUERY_KEY].shape[1])
    torch.save(state, wrong)
    image = str(data_root / 'val' / '000000.png')
    good = DetInferencer(model=str(CONFIG), weights=str(checkpoint), device='cpu',
                         show_progress=False)
    assert len(good(image, return_datasamples=True)['predictions']) == 1
    inferencer = DetInferencer(model=str(CONFIG), weights=str(wrong), device='cpu',
                               show_progress=False)
    with pytest.raises(CheckpointMismatchError, match='1 size-mismatched'):
        inferencer(image)
    inferencer.model.allow_partial_checkpoint = True
    assert len(inferencer(image, return_datasamples=True)['predictions']) == 1


def test_detector_guard_clears_after_a_training_step() -> None:
    """Fine-tuning keeps its partial loading: after ``loss`` the model predicts."""
    from conftest import make_batch
    model = build_model()
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith('query_head.cls_branches.')}
    model.load_state_dict(state, strict=False)
    assert model.checkpoint_match is not None and len(model.checkpoint_match.missing) > 0
    model.eval()
    inputs, samples = make_batch(model, [[(4, 4, 40, 40, 1)]], [(64, 64)])
    with pytest.raises(CheckpointMismatchError, match='missing'):
        model.predict(inputs, samples)
    model.train()
    model.loss(inputs, samples)
    model.eval()
    assert len(model.predict(inputs, samples)) == 1
    model.load_state_dict(model.state_dict())  # an exact load is fine too
    assert model.checkpoint_match.ok
    assert len(model.predict(inputs, samples)) == 1


def test_resume_refuses_a_changed_model_before_any_step(tmp_path, data_root, checkpoint,
                                                        capsys) -> None:
    from tools import train
    work_dir = tmp_path / 'run'
    code = train.cli([str(CONFIG), '--work-dir', str(work_dir), '--resume', str(checkpoint),
                      *_options(data_root), 'model.query_head.num_query=80',
                      'train_cfg.max_epochs=1'])
    err = capsys.readouterr().err
    assert code == 1
    assert f'error: checkpoint {str(checkpoint)!r} does not fit the model of {CONFIG}' in err
    assert 'resume with the config the checkpoint was trained with' in err
    logs = '\n'.join(p.read_text() for p in work_dir.glob('*/*.log'))
    assert 'Epoch(train)' not in logs
    assert not list(work_dir.glob('*.pth'))


# ---------------------------------------------------------------- images


def _folder_with_bad_image(tmp_path: Path, data_root: Path) -> Path:
    folder = tmp_path / 'images'
    folder.mkdir()
    for name in ('000000.png', '000001.png'):
        shutil.copy(data_root / 'val' / name, folder / name)
    (folder / '000000b_broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
    return folder


def test_infer_skips_unreadable_images_and_keeps_the_rest(tmp_path, data_root, checkpoint,
                                                          capsys) -> None:
    from tools import infer
    folder = _folder_with_bad_image(tmp_path, data_root)
    out_dir = tmp_path / 'out'
    code = infer.cli([str(folder), str(CONFIG), str(checkpoint), '--out-dir', str(out_dir),
                      '--score-thr', '0'])
    err = capsys.readouterr().err
    assert code == infer.EXIT_SKIPPED == 3
    broken = str(folder / '000000b_broken.png')
    assert f'{broken} cannot be decoded' in err and 'skipped 1 of 3 images' in err
    saved = json.loads((out_dir / 'detections.json').read_text())
    assert [Path(r['file']).name for r in saved['images']] == ['000000.png', '000001.png']
    assert saved['num_skipped'] == 1 and saved['skipped'][0]['file'] == broken
    assert saved['interrupted'] is False
    assert sorted(p.name for p in out_dir.glob('*.png')) == ['000000.png', '000001.png']


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_infer_interrupted_still_writes_what_it_made(tmp_path, checkpoint, signum) -> None:
    folder = tmp_path / 'train'
    generate_split(tmp_path, 'train', 40, img_size=64, seed=1)
    out_dir = tmp_path / 'out'
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([sys.executable, 'tools/infer.py', str(folder), str(CONFIG),
                             str(checkpoint), '--out-dir', str(out_dir), '--score-thr', '0'],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        done = 0
        while done < 2 and time.monotonic() < deadline:  # wait for two images
            line = proc.stdout.readline()
            assert line, proc.stderr.read()[-3000:]
            done += ' detections (score >= ' in line
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err[-3000:]
    saved = json.loads((out_dir / 'detections.json').read_text())
    assert saved['interrupted'] == signal.Signals(signum).name
    assert 2 <= len(saved['images']) < 40
    assert all((out_dir / Path(r['file']).with_suffix('.png').name).is_file()
               for r in saved['images'])
    assert not list(out_dir.glob('.detections.json.tmp-*'))


def _val_ids(data_root: Path) -> dict[str, int]:
    """Image id of each val file name."""
    coco = json.loads((data_root / 'annotations' / 'instances_val.json').read_text())
    return {Path(img['file_name']).name: img['id'] for img in coco['images']}


def _damage_val_images(tmp_path: Path, data_root: Path) -> tuple[Path, list[str]]:
    root = tmp_path / 'data'
    shutil.copytree(data_root, root)
    cut = root / 'val' / '000001.png'
    cut.write_bytes(cut.read_bytes()[:60])
    (root / 'val' / '000002.png').unlink()
    return root, [str(root / 'val' / '000001.png'), str(root / 'val' / '000002.png')]


def test_test_tool_refuses_or_skips_unusable_images(tmp_path, data_root, checkpoint,
                                                    capsys) -> None:
    from tools import test as test_tool
    root, bad = _damage_val_images(tmp_path, data_root)
    metrics = tmp_path / 'm.json'
    args = [str(CONFIG), str(checkpoint), '--metrics-out', str(metrics), '--work-dir',
            str(tmp_path / 'w'), *_options(root)]
    code = test_tool.cli(args)
    err = capsys.readouterr().err
    assert code == 1 and not metrics.exists()
    assert 'test_dataloader.dataset: 2 of 4 images cannot be used' in err
    ids = _val_ids(data_root)
    assert f'{bad[0]} (img_id={ids["000001.png"]}): cannot be decoded' in err
    assert f'{bad[1]} (img_id={ids["000002.png"]}): does not exist' in err
    assert '--skip-bad-images' in err

    assert test_tool.cli(args + ['--skip-bad-images']) == 0
    record = json.loads(metrics.read_text())
    skipped = record['skipped_images']
    assert skipped['count'] == 2 and [s['file'] for s in skipped['images']] == bad
    assert [s['img_id'] for s in skipped['images']] == [ids['000001.png'], ids['000002.png']]
    assert 'coco/bbox_mAP' in record


def test_coco_metric_leaves_excluded_images_out(tmp_path, data_root) -> None:
    """Perfect detections on two images: AP 1 when the other two are excluded, less if not."""
    from projects.codetr.evaluation import CheckedCocoMetric
    ann_file = data_root / 'annotations' / 'instances_val.json'
    coco = json.loads(ann_file.read_text())
    cat_ids = [c['id'] for c in coco['categories']]
    ids = sorted(_val_ids(data_root).values())
    kept, excluded = ids[::3], [i for i in ids if i not in ids[::3]]
    results = []
    for img_id in kept:
        anns = [a for a in coco['annotations'] if a['image_id'] == img_id]
        assert anns
        pred = dict(img_id=img_id,
                    bboxes=torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                                         (a['bbox'] for a in anns)]),
                    scores=torch.ones(len(anns)),
                    labels=torch.tensor([cat_ids.index(a['category_id']) for a in anns]))
        results.append(dict(img_id=img_id, pred_instances=pred,
                            ori_shape=(64, 64), gt_instances={}, ignored_instances={}))

    def evaluate(exclude):
        metric = CheckedCocoMetric(ann_file=str(ann_file), exclude_img_ids=exclude,
                                   outfile_prefix=str(tmp_path / 'r'))
        metric.dataset_meta = dict(classes=SYNTHETIC_CLASSES)
        metric.process({}, results)
        return metric.evaluate(len(results))['coco/bbox_mAP']

    others = [a for a in coco['annotations'] if a['image_id'] in excluded]
    assert others  # their objects would count as missed
    assert evaluate(excluded) == pytest.approx(1.0)
    assert evaluate([]) < 0.9
