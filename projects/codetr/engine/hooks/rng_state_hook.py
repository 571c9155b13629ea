"""Save the random number generator states in checkpoints so that a resumed run is identical.

mmengine checkpoints hold weights, optimizer, schedulers and the message hub, but not the
states of Python's ``random``, NumPy's and torch's generators. A resumed run re-seeds them from
``randomness.seed``, so random choices after the resume (augmentation, RoI sampling, the
Co-DETR aux-query subsampling, the data order of a new DataLoader iterator) differ from the
uninterrupted run. :class:`RandomStateHook` stores the states in every checkpoint and puts
them back exactly where the interrupted run was:

- ``IterBasedTrainLoop``: mmengine replays the first ``iter`` batches to skip them; the states
  are restored after that replay, right before the first new batch is fetched;
- ``EpochBasedTrainLoop``: restored at the start of the resumed epoch.

It also makes validation leave the training generators untouched (states saved before and
restored after each validation), so a run is identical whether or not it validated at the
iteration it was resumed from. With these, a resumed single-process run with
``num_workers=0`` (or workers whose seeds depend only on ``randomness.seed``) and
``randomness.deterministic=True`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Iterator

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop


def capture_rng_state() -> dict:
    """Return the Python, NumPy, torch (and CUDA) generator states as tensors/primitives.

    Only tensors, ints, floats, strings and tuples are used, so checkpoints stay loadable with
    ``torch.load(weights_only=True)``.
    """
    np_state = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=dict(name=np_state[0], keys=torch.from_numpy(np_state[1].astype(np.int64)),
                   pos=int(np_state[2]), has_gauss=int(np_state[3]),
                   cached_gaussian=float(np_state[4])),
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore generator states captured by :func:`capture_rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    np_state = state['numpy']
    np.random.set_state((np_state['name'], np_state['keys'].numpy().astype(np.uint32),
                         np_state['pos'], np_state['has_gauss'], np_state['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class _RestoreAfterSkip:
    """Iterator proxy that restores RNG states before the ``skip + 1``-th ``next()`` call."""

    def __init__(self, iterator: Iterator, skip: int, state: dict) -> None:
        self._iterator = iterator
        self._remaining = skip
        self._state: dict | None = state

    def __iter__(self) -> _RestoreAfterSkip:
        return self

    def __next__(self) -> Any:
        if self._remaining == 0 and self._state is not None:
            restore_rng_state(self._state)
            self._state = None
        self._remaining -= 1
        return next(self._iterator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Store RNG states in checkpoints, restore them on resume, isolate validation.

    Add it with ``custom_hooks = [dict(type='RandomStateHook')]``. In multi-process runs only
    rank 0 saves checkpoints, so every rank gets rank 0's states back: the resumed run is
    deterministic but not bitwise equal to the uninterrupted one.
    """

    priority = 'VERY_HIGH'  # restore before any other hook of the same stage draws numbers

    def __init__(self) -> None:
        self._loaded = False  # a checkpoint was loaded and the next epoch is the first
        self._resume_state: dict | None = None
        self._before_val_state: dict | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Add ``rng_state``: the training stream's state (the pre-validation one if inside
        a validation, e.g. when the best checkpoint triggers a re-save)."""
        checkpoint['rng_state'] = self._before_val_state or capture_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the checkpoint's states until the training loop resumes."""
        self._loaded = True
        self._resume_state = checkpoint.get('rng_state')

    def before_train_epoch(self, runner) -> None:
        """Schedule or apply the restore for the first epoch after a resume."""
        if not self._loaded:  # a fresh run, or a later epoch of a resumed one
            return
        state, self._resume_state, self._loaded = self._resume_state, None, False
        if runner.iter == 0:  # `load_from` (fine-tuning): keep the seeded states
            return
        if state is None:
            print_log('resumed from a checkpoint without rng_state (not saved by '
                      'RandomStateHook): random draws will differ from the interrupted run',
                      logger='current', level=logging.WARNING)
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            # The loop replays `iter` batches after this hook: restore after that replay.
            loop.dataloader_iterator = _RestoreAfterSkip(loop.dataloader_iterator,
                                                         runner.iter, state)
            return
        if isinstance(loop, EpochBasedTrainLoop) and (
                runner.iter != runner.epoch * len(loop.dataloader)):
            print_log(f'resumed from a mid-epoch checkpoint (iter {runner.iter}, epoch '
                      f'{runner.epoch + 1}): EpochBasedTrainLoop restarts the epoch from its '
                      'first batch, so the run differs from an uninterrupted one; save '
                      'checkpoints by epoch, or use IterBasedTrainLoop, for exact resumes',
                      logger='current', level=logging.WARNING)
        restore_rng_state(state)

    def before_val(self, runner) -> None:
        """Save the training stream before validation draws from the generators."""
        self._before_val_state = capture_rng_state()

    def after_val(self, runner) -> None:
        """Put the training stream back as it was before validation."""
        if self._before_val_state is not None:
            restore_rng_state(self._before_val_state)
            self._before_val_state = None
