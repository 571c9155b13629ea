"""Faults during training: non-finite losses and gradients, kills (also in the middle of a
checkpoint write) and resume, and determinism of two runs with the same seed.

The end-to-end tests run tools/train.py in subprocesses on tests/configs/co_detr_*_tiny.py
(6 iterations at 64 px, a checkpoint every 2, validation at 4) and kill them with SIGKILL
through tests/reliability_faults.py. Bad data: test_reliability_data.py; fine-tuning and
custom classes: test_reliability_finetune.py.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, build_model, load_cfg
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from reliability_fixtures import log_text, logs_fixture, mmdet_scope_fixture  # noqa: F401
from torch import nn

from projects.codetr.engine.hooks import checkpoint_hook
from projects.codetr.engine.hooks.checkpoint_hook import (
    AtomicCheckpointHook,
    atomic_write_bytes,
    checkpoint_problem,
)
from projects.codetr.engine.hooks.rng_state_hook import capture_rng_state, restore_rng_state
from projects.codetr.engine.optimizers.optim_wrapper import FiniteCheckOptimWrapper
from projects.codetr.utils.checkpoint_compat import register_checkpoint_safe_globals
from tools.misc.generate_synthetic_coco import generate_split

CFG = ROOT / 'tests' / 'configs' / 'co_detr_reliability_tiny.py'
FAULTS_CFG = ROOT / 'tests' / 'configs' / 'co_detr_faults_tiny.py'
EPOCH_CFG = ROOT / 'tests' / 'configs' / 'co_detr_faults_epoch_tiny.py'
SYNTHETIC_CFG = ROOT / 'configs' / 'co_deformable_detr_synthetic.py'


# ---------------------------------------------------------------- non-finite losses


class _ToyModel(BaseModel):
    """Two loss terms and an accuracy; ``poison`` multiplies terms, ``sqrt_at_zero`` adds a
    term whose value is finite (0) but whose gradient is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
        self.poison: dict[str, float] = {}
        self.sqrt_at_zero = False

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'loss') -> dict:
        losses = dict(loss_a=(self.w * inputs).sum(), loss_b=[(self.w ** 2).sum()],
                      acc=torch.tensor(1.0))
        if self.sqrt_at_zero:
            losses['loss_c'] = torch.sqrt((self.w - self.w.detach()).sum())
        for key, factor in self.poison.items():
            value = losses[key]
            scaled = [v * factor for v in value] if isinstance(value, list) else value * factor
            losses[key] = scaled
        return losses


def _toy(on_nonfinite: str = 'raise', **kwargs):
    model = _ToyModel()
    wrapper = FiniteCheckOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters(), lr=0.1), on_nonfinite=on_nonfinite,
        clip_grad=dict(max_norm=0.1), **kwargs)
    hub = MessageHub.get_current_instance()
    hub.update_info('iter', 6)
    hub.update_info('epoch', 0)
    return model, wrapper, dict(inputs=torch.ones(3))


@pytest.mark.parametrize('key, factor, shown', [
    ('loss_a', math.nan, 'loss_a=nan'), ('loss_b', math.inf, 'loss_b=inf')])
def test_nonfinite_loss_stops_naming_the_term_and_iteration(key, factor, shown):
    model, wrapper, data = _toy()
    before = model.w.detach().clone()
    model.poison = {key: factor}
    with pytest.raises(FloatingPointError) as err:
        model.train_step(data, wrapper)
    assert shown in str(err.value) and 'iteration 7 (epoch 1)' in str(err.value)
    assert "on_nonfinite='skip'" in str(err.value)
    assert torch.equal(model.w, before)


def test_skip_policy_changes_neither_parameters_nor_optimizer_state(logs):
    model, wrapper, data = _toy('skip')
    model.train_step(data, wrapper)  # a good step creates the AdamW state
    params = model.w.detach().clone()
    state = copy.deepcopy(wrapper.optimizer.state_dict())
    model.poison = {'loss_a': math.nan}
    log_vars = model.train_step(data, wrapper)
    assert math.isnan(log_vars['loss'])  # the log shows the NaN, nothing is hidden
    assert torch.equal(model.w, params)
    new_state = wrapper.optimizer.state_dict()
    assert new_state['state'][0]['step'] == state['state'][0]['step']
    for name in ('exp_avg', 'exp_avg_sq'):
        assert torch.equal(new_state['state'][0][name], state['state'][0][name])
    assert model.w.grad is None or not model.w.grad.any()
    assert 'loss_a=nan' in log_text(logs) and 'optimizer step skipped' in log_text(logs)
    assert wrapper.num_skipped == 1
    model.poison = {}
    model.train_step(data, wrapper)
    assert not torch.equal(model.w, params)  # training goes on


def test_nonfinite_gradient_with_finite_loss_is_caught():
    model, wrapper, data = _toy()
    model.sqrt_at_zero = True
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm (nan|inf).*\['w'\]"):
        model.train_step(data, wrapper)


def test_too_many_consecutive_skips_stop_training():
    model, wrapper, data = _toy('skip', max_consecutive_skips=2)
    model.poison = {'loss_a': math.nan}
    model.train_step(data, wrapper)
    model.train_step(data, wrapper)
    with pytest.raises(FloatingPointError, match='3 consecutive steps skipped'):
        model.train_step(data, wrapper)


def test_codetr_nonfinite_aux_loss_is_named():
    model = build_model(load_cfg(SYNTHETIC_CFG))
    model.train()
    wrapper = FiniteCheckOptimWrapper(optimizer=torch.optim.AdamW(model.parameters(), 1e-4))
    g = torch.Generator().manual_seed(0)
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                         scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[4.0, 4.0, 30.0, 40.0]]),
                                       labels=torch.tensor([2]))
    data = dict(inputs=[torch.randint(0, 255, (3, 64, 64), generator=g, dtype=torch.uint8)],
                data_samples=[sample])
    original = model.loss

    def poisoned(*args, **kwargs):
        losses = original(*args, **kwargs)
        losses['loss_iou_aux1'] = losses['loss_iou_aux1'] * math.nan
        return losses

    model.loss = poisoned
    # parameters only: the forward pass itself updates BN running statistics
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(FloatingPointError, match='loss_iou_aux1=nan'):
        model.train_step(data, wrapper)
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


# ---------------------------------------------------------------- crash-safe checkpoint files


def test_interrupted_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / 'iter_2.pth'
    atomic_write_bytes(b'complete old checkpoint', target)

    def half_then_interrupt(f, data):
        f.write(data[:len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_hook, '_write_payload', half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(b'x' * 1000, target)
    assert target.read_bytes() == b'complete old checkpoint'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_2.pth']


def test_checkpoint_problem_detects_truncated_files(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save(dict(state_dict=dict(w=torch.ones(1000))), good)
    data = good.read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) - 100])
    (tmp_path / 'empty.pth').write_bytes(b'')
    assert checkpoint_problem(str(good)) is None
    assert checkpoint_problem(str(tmp_path / 'cut.pth')).startswith('truncated')
    assert checkpoint_problem(str(tmp_path / 'empty.pth')) == 'empty (0 bytes)'
    assert checkpoint_problem(str(tmp_path / 'none.pth')) == 'missing'


@pytest.mark.parametrize('resume', [True, False])
def test_pointer_to_truncated_checkpoint_is_repaired(tmp_path, logs, resume):
    torch.save(dict(state_dict={}), tmp_path / 'iter_2.pth')
    torch.save(dict(state_dict=dict(w=torch.ones(100))), tmp_path / 'iter_4.pth')
    cut = (tmp_path / 'iter_4.pth').read_bytes()
    (tmp_path / 'iter_4.pth').write_bytes(cut[:len(cut) // 2])  # a non-atomic writer's kill
    (tmp_path / '.iter_6.pth.tmp-123').write_bytes(b'partial')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    hook = AtomicCheckpointHook(interval=2, by_epoch=False)
    runner = SimpleNamespace(work_dir=str(tmp_path), _resume=resume)
    hook.before_run(runner)
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_2.pth')
    assert not (tmp_path / '.iter_6.pth.tmp-123').exists()
    assert 'which is truncated' in log_text(logs)

    (tmp_path / 'iter_2.pth').write_bytes(b'')  # now no complete checkpoint is left
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    if resume:
        with pytest.raises(RuntimeError, match='no other complete checkpoint; cannot resume'):
            hook.before_run(runner)
    else:
        hook.before_run(runner)
        assert not (tmp_path / 'last_checkpoint').exists()


def test_rng_state_round_trip_survives_weights_only_load(tmp_path):
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), __import__('numpy').random.rand(), __import__('random').random())
    torch.save(dict(rng_state=state), tmp_path / 'c.pth')
    loaded = torch.load(tmp_path / 'c.pth', weights_only=True)['rng_state']
    torch.manual_seed(99)
    restore_rng_state(loaded)
    got = (torch.rand(3), __import__('numpy').random.rand(), __import__('random').random())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


# ---------------------------------------------------------------- end to end (tools/train.py)
# Every run uses one intra-op thread, so that two runs can go in parallel on 2 cores and give
# bitwise-identical results (reduction order depends on the thread count).


_RUN_IDS = itertools.count()


class _Run:
    """A tools/train.py subprocess; output goes to files so parallel runs never block."""

    def __init__(self, config: Path, work_dir: Path, data_root: Path, *extra: str,
                 options: tuple[str, ...] = (), **faults: int | str) -> None:
        root = f'{data_root}/'
        cmd = [sys.executable, 'tools/train.py', str(config), '--work-dir', str(work_dir),
               *extra, '--cfg-options', f'train_dataloader.dataset.data_root={root}',
               f'val_dataloader.dataset.data_root={root}',
               f'test_dataloader.dataset.data_root={root}',
               f'val_evaluator.ann_file={root}annotations/instances_val.json', *options]
        env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
        env.update({f'FAULT_{k.upper()}': str(v) for k, v in faults.items()})
        work_dir.mkdir(parents=True, exist_ok=True)
        self.out = work_dir.parent / f'{work_dir.name}.{next(_RUN_IDS)}.out'
        self.work_dir = work_dir
        with open(self.out, 'w') as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

    def wait(self, expect_rc: int = 0, timeout: int = 400) -> str:
        """Wait for the process, check its exit code and return its output."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        output = self.out.read_text()
        assert self.proc.returncode == expect_rc, (
            f'rc={self.proc.returncode}, expected {expect_rc}:\n{output[-6000:]}')
        return output


def _losses(work_dir: Path) -> dict[int, float]:
    """Total loss per iteration from every run (timestamp folder) in ``work_dir``."""
    out: dict[int, float] = {}
    for scalars in sorted(work_dir.glob('*/vis_data/scalars.json')):
        for line in scalars.read_text().splitlines():
            record = json.loads(line)
            if 'loss' in record:
                loss = out.setdefault(record['iter'], record['loss'])
                assert repr(loss) == repr(record['loss']), record  # reruns agree too (NaN too)
    return out


def _load(path: Path) -> dict:
    register_checkpoint_safe_globals()
    return torch.load(path, map_location='cpu', weights_only=True)


def _assert_same_training_state(path: Path, expected_path: Path) -> None:
    """Weights and optimizer state of two checkpoints are bitwise equal."""
    final, expected = _load(path), _load(expected_path)
    assert final['state_dict'].keys() == expected['state_dict'].keys()
    for key, value in expected['state_dict'].items():
        assert torch.equal(final['state_dict'][key], value), key
    for idx, param_state in expected['optimizer']['state'].items():
        for name, value in param_state.items():
            assert torch.equal(torch.as_tensor(final['optimizer']['state'][idx][name]),
                               torch.as_tensor(value)), (idx, name)


KILLED = -signal.SIGKILL
KEEP_ONE = ('default_hooks.checkpoint.max_keep_ckpts=1',)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('reliability_synthetic')
    generate_split(root, 'train', 16, img_size=64, seed=0)
    generate_split(root, 'val', 4, img_size=64, seed=0)
    return root


@pytest.fixture(scope='module')
def baseline(data_root, tmp_path_factory) -> _Run:
    """The uninterrupted 6-iteration run, started in the background (call ``.wait()``)."""
    return _Run(CFG, tmp_path_factory.mktemp('runs') / 'uninterrupted', data_root)


def _log_text(work_dir: Path) -> str:
    return '\n'.join(p.read_text() for p in sorted(work_dir.glob('2*/2*.log')))


def test_killed_twice_then_resumed_run_equals_uninterrupted_run(baseline, data_root, tmp_path):
    """SIGKILL halfway through writing iter_4.pth, --resume; SIGKILL at the start of iteration
    5 (mid-epoch), --resume: the run ends with the weights, optimizer state and losses of the
    uninterrupted run. max_keep_ckpts=1: the stock hook would delete iter_2.pth before writing
    iter_4.pth and leave last_checkpoint pointing at a deleted file. Control: mmengine's own
    resume (no RandomStateHook) from the same iter_4.pth diverges."""
    work = tmp_path / 'killed'
    _Run(FAULTS_CFG, work, data_root, options=KEEP_ONE, kill_saving_iter=4).wait(KILLED)
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_2.pth')
    assert not (work / 'iter_4.pth').exists() and list(work.glob('.iter_4.pth.tmp-*'))
    baseline.wait()
    ref = _losses(baseline.work_dir)
    assert sorted(ref) == list(range(1, 7))
    # Two processes, same seed, deterministic mode: identical losses (iterations 1-4).
    assert _losses(work) == {i: ref[i] for i in range(1, 5)}

    _Run(FAULTS_CFG, work, data_root, '--resume', options=KEEP_ONE,
         kill_before_iter=5).wait(KILLED)
    log = _log_text(work)
    assert 'left by an interrupted checkpoint write' in log
    assert 'resumed epoch: 0, iter: 2' in log
    assert not list(work.glob('.*.tmp-*'))
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_4.pth')
    assert not (work / 'iter_2.pth').exists()  # deleted, but only once iter_4.pth was complete

    stock = tmp_path / 'stock'
    stock.mkdir()
    (stock / 'iter_4.pth').write_bytes((work / 'iter_4.pth').read_bytes())
    (stock / 'last_checkpoint').write_text(str(stock / 'iter_4.pth'))
    runs = [_Run(FAULTS_CFG, work, data_root, '--resume', options=KEEP_ONE),
            _Run(CFG, stock, data_root, '--resume', options=('custom_hooks=[]',))]
    for run in runs:
        run.wait()
    assert 'resumed epoch: 0, iter: 4' in _log_text(work)
    assert _losses(work) == ref
    _assert_same_training_state(work / 'iter_6.pth', baseline.work_dir / 'iter_6.pth')
    assert _losses(stock)[5] != ref[5]  # mmengine alone re-seeds instead of restoring


def test_epoch_based_resume_equals_uninterrupted(data_root, tmp_path):
    """The mission config's loop type: EpochBasedTrainLoop with epoch checkpoints and
    validation every epoch; killed in the middle of epoch 2, resumed from epoch_1.pth."""
    options = ('train_cfg.max_epochs=2', 'train_dataloader.dataset.indices=8')
    ref_run = _Run(EPOCH_CFG, tmp_path / 'ref', data_root, options=options)
    work = tmp_path / 'killed'
    _Run(EPOCH_CFG, work, data_root, options=options, kill_before_iter=6).wait(KILLED)
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_1.pth')
    _Run(EPOCH_CFG, work, data_root, '--resume', options=options).wait()
    ref_run.wait()
    assert _losses(work) == _losses(ref_run.work_dir)
    _assert_same_training_state(work / 'epoch_2.pth', ref_run.work_dir / 'epoch_2.pth')
    # a fresh run entering epoch 2 after saving epoch_1.pth is not a resume
    assert 'without rng_state' not in _log_text(ref_run.work_dir)


def test_rng_hook_acts_only_on_the_first_epoch_after_a_load(logs):
    """Regression: every epoch after the first used to be taken for a resume."""
    from mmengine.runner import EpochBasedTrainLoop

    from projects.codetr.engine.hooks.rng_state_hook import RandomStateHook

    loop = EpochBasedTrainLoop.__new__(EpochBasedTrainLoop)
    loop.dataloader = [0] * 4
    runner = SimpleNamespace(iter=4, epoch=1, train_loop=loop)
    hook = RandomStateHook()
    hook.before_train_epoch(runner)  # fresh run, epoch 2: nothing to restore, no warning
    assert 'without rng_state' not in log_text(logs)

    state = capture_rng_state()
    torch.manual_seed(123)
    hook.after_load_checkpoint(runner, dict(rng_state=state))
    hook.before_train_epoch(runner)  # the resumed epoch: states restored
    assert torch.equal(torch.get_rng_state(), state['torch'])
    torch.manual_seed(5)
    runner.iter, runner.epoch = 8, 2
    hook.before_train_epoch(runner)  # the next epoch: left alone
    assert not torch.equal(torch.get_rng_state(), state['torch'])

    hook.after_load_checkpoint(runner, {})  # a checkpoint without states: one warning
    hook.before_train_epoch(runner)
    hook.before_train_epoch(runner)
    assert log_text(logs).count('without rng_state') == 1


def test_nonfinite_loss_through_the_training_tool(data_root, tmp_path):
    """loss_bbox0 is NaN at iteration 3: on_nonfinite='raise' stops the run naming the term
    and the iteration; 'skip' skips that step and finishes. No checkpoint holds NaN."""
    runs = {policy: _Run(FAULTS_CFG, tmp_path / policy, data_root, nan_at_iter=3,
                         nan_key='loss_bbox0', options=(f'optim_wrapper.on_nonfinite={policy}',))
            for policy in ('raise', 'skip')}
    output = runs['raise'].wait(expect_rc=1)
    assert 'FloatingPointError: non-finite loss nan: loss_bbox0=nan' in output
    assert 'at iteration 3 (epoch 1)' in output
    assert (tmp_path / 'raise' / 'last_checkpoint').read_text().endswith('iter_2.pth')
    runs['skip'].wait()
    assert 'at iteration 3 (epoch 1): optimizer step skipped' in _log_text(tmp_path / 'skip')
    losses = _losses(tmp_path / 'skip')
    assert math.isnan(losses[3]) and math.isfinite(losses[6])
    for run in runs.values():
        last = _load(Path((run.work_dir / 'last_checkpoint').read_text()))
        assert all(torch.isfinite(v).all() for v in last['state_dict'].values()
                   if v.is_floating_point())


def test_nonfinite_loss_on_one_rank_skips_the_step_on_every_rank(data_root, tmp_path):
    """Two gloo processes, NaN on rank 1 only: both skip the step together (no hang)."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    root = f'{data_root}/'
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT=str(port), FAULT_NAN_AT_ITER='3',
               FAULT_NAN_RANK='1', PYTHON=sys.executable)
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', str(FAULTS_CFG), '2', '--work-dir', str(tmp_path),
         '--cfg-options', f'train_dataloader.dataset.data_root={root}',
         f'val_dataloader.dataset.data_root={root}', f'test_dataloader.dataset.data_root={root}',
         f'val_evaluator.ann_file={root}annotations/instances_val.json',
         'optim_wrapper.on_nonfinite=skip'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'non-finite loss on another rank at iteration 3' in _log_text(tmp_path)
    assert (tmp_path / 'iter_6.pth').is_file()
