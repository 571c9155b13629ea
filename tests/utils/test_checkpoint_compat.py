"""projects/codetr/utils/checkpoint_compat.py: mmengine checkpoints under weights_only."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch import nn
from torch.utils.data import Dataset

from projects.codetr.utils.checkpoint_compat import (
    checkpoint_safe_globals,
    register_checkpoint_safe_globals,
)


class _ToyModel(BaseModel):
    """Linear regression model in mmengine's BaseModel interface."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mode: str = 'tensor'):
        out = self.linear(x)
        if mode == 'loss':
            return dict(loss=((out - y) ** 2).mean())
        return out


class _ToyDataset(Dataset):
    """Eight fixed samples with mmdet-like metainfo (tuple classes, palette list)."""

    metainfo = dict(classes=('a', 'b'), palette=[(1, 2, 3), (4, 5, 6)])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, idx: int) -> dict:
        return dict(x=torch.full((2,), float(idx)), y=torch.ones(1))


class _NotAllowed:
    """A class that is not allow-listed: unpickling it must fail under weights_only."""

    def __init__(self) -> None:
        self.value = 1


class _GetattrEscape:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: must be refused."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def _runner(work_dir: Path, max_epochs: int, **kwargs) -> Runner:
    return Runner(
        model=_ToyModel(),
        default_scope='mmdet',  # leave the registry scope as the other tests expect
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_ToyDataset(), sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=2, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1]),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        randomness=dict(seed=0),
        **kwargs)


def _roundtrip(obj) -> object:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer)  # torch >= 2.6 default: weights_only=True


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> Path:
    """Train the toy model two epochs and return the last checkpoint."""
    register_checkpoint_safe_globals()
    work_dir = tmp_path_factory.mktemp('ckpt')
    _runner(work_dir, max_epochs=2).train()
    ckpt = work_dir / 'epoch_2.pth'
    assert ckpt.is_file()
    return ckpt


def test_register_is_idempotent() -> None:
    register_checkpoint_safe_globals()
    before = len(torch.serialization.get_safe_globals())
    register_checkpoint_safe_globals()
    register_checkpoint_safe_globals()
    assert len(torch.serialization.get_safe_globals()) == before
    allowed = set(torch.serialization.get_safe_globals())
    assert all(entry in allowed for entry in checkpoint_safe_globals())
    assert getattr not in allowed  # the real builtins.getattr is never allow-listed


def test_checkpoint_needs_the_allow_list(trained: Path) -> None:
    """Without the registration (fresh interpreter) torch.load refuses the checkpoint."""
    code = ('import sys, torch\n'
            'try:\n'
            '    torch.load(sys.argv[1], map_location="cpu")\n'
            'except Exception as exc:\n'
            '    print(type(exc).__name__, exc)\n'
            '    sys.exit(3)\n')
    proc = subprocess.run([sys.executable, '-c', code, str(trained)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert 'UnpicklingError' in proc.stdout


def test_weights_only_load_of_runner_checkpoint(trained: Path) -> None:
    ckpt = torch.load(str(trained), map_location='cpu')
    assert ckpt['meta']['epoch'] == 2 and ckpt['meta']['iter'] == 8
    assert ckpt['meta']['dataset_meta']['classes'] == ('a', 'b')
    loss_buffer = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss_buffer, HistoryBuffer)
    assert len(loss_buffer.data[0]) == 8 and np.isfinite(loss_buffer.mean())
    assert isinstance(ckpt['message_hub']['runtime_info']['eta'], np.floating)

    model = _ToyModel()
    loaded = load_checkpoint(model, str(trained), map_location='cpu')
    torch.testing.assert_close(model.linear.weight, loaded['state_dict']['linear.weight'])


def test_runner_resume(trained: Path, tmp_path: Path) -> None:
    runner = _runner(tmp_path, max_epochs=3, resume=True, load_from=str(trained))
    runner.train()
    assert runner.epoch == 3 and runner.iter == 12
    buffer = runner.message_hub.get_scalar('train/loss')
    assert len(buffer.data[0]) == 12  # 8 resumed values + 4 new ones
    assert (tmp_path / 'epoch_3.pth').is_file()
    assert not (tmp_path / 'epoch_1.pth').exists()  # training restarted at epoch 3


def test_numpy_and_configdict_roundtrip() -> None:
    register_checkpoint_safe_globals()
    obj = dict(
        cfg=ConfigDict(a=1, b=dict(c=[1, 2])),
        arrays=[np.arange(4).astype(dtype) for dtype in ('f2', 'f4', 'f8', 'i4', 'i8', 'u1', '?')],
        names=np.array(['ellipse', 'ring']),
        scalars=[np.float64(1.5), np.int64(3), np.bool_(True)])
    out = _roundtrip(obj)
    assert isinstance(out['cfg'], ConfigDict) and out['cfg'].b.c == [1, 2]
    for expected, got in zip(obj['arrays'] + [obj['names']], out['arrays'] + [out['names']]):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    assert out['scalars'] == obj['scalars']


@pytest.mark.parametrize('payload', [_NotAllowed(), _GetattrEscape()],
                         ids=['unlisted_class', 'getattr_escape'])
def test_other_globals_still_rejected(payload: object) -> None:
    register_checkpoint_safe_globals()
    with pytest.raises(pickle.UnpicklingError):
        _roundtrip(dict(weights=torch.zeros(2), extra=payload))
