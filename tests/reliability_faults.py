"""Fault injection for the reliability tests, imported by tests/configs/co_detr_faults_tiny.py.

The faults are chosen with environment variables so that one config serves every scenario:

- ``FAULT_KILL_BEFORE_ITER=N``: SIGKILL the process after batch N (1-based) was fetched, before
  its forward pass (a kill in the middle of an epoch);
- ``FAULT_KILL_SAVING_ITER=N``: SIGKILL the process halfway through writing the bytes of the
  checkpoint saved after iteration N;
- ``FAULT_NAN_AT_ITER=N`` with ``FAULT_NAN_KEY=loss_key``: make that loss term NaN at
  iteration N (only on rank ``FAULT_NAN_RANK`` if set).
"""

from __future__ import annotations

import os
import signal
from typing import IO

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _kill_halfway(f: IO[bytes], data: bytes) -> None:
    """Stand-in for ``checkpoint_hook._write_payload``: write half, flush, then die."""
    f.write(data[:len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class FaultInjectionHook(Hook):
    """Kill the run or poison a loss at the iteration named by the ``FAULT_*`` variables."""

    priority = 'VERY_LOW'  # after the checkpoint hook's before_save_checkpoint neighbours

    def __init__(self) -> None:
        self.kill_before_iter = _env_int('FAULT_KILL_BEFORE_ITER')
        self.kill_saving_iter = _env_int('FAULT_KILL_SAVING_ITER')
        self.nan_at_iter = _env_int('FAULT_NAN_AT_ITER')
        self.nan_key = os.environ.get('FAULT_NAN_KEY', 'loss_bbox0')
        self.nan_rank = _env_int('FAULT_NAN_RANK')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter + 1 == self.kill_before_iter:
            os.kill(os.getpid(), signal.SIGKILL)
        rank = int(os.environ.get('RANK', 0))
        if runner.iter + 1 == self.nan_at_iter and self.nan_rank in (None, rank):
            model = runner.model.module if hasattr(runner.model, 'module') else runner.model
            original = model.loss
            key = self.nan_key

            def poisoned_loss(*args, **kwargs):
                losses = original(*args, **kwargs)
                losses[key] = losses[key] * torch.tensor(float('nan'))
                model.loss = original  # one iteration only
                return losses

            model.loss = poisoned_loss

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if checkpoint['meta'].get('iter') == self.kill_saving_iter:
            from projects.codetr.engine.hooks import checkpoint_hook
            checkpoint_hook._write_payload = _kill_halfway
