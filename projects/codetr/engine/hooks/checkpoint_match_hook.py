"""Refuse, before any step, a checkpoint that does not fit the runner's model."""

from __future__ import annotations

import logging

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import find_latest_checkpoint

from ...utils.checkpoint_check import (
    EVAL_WAY_OUT,
    enforce_fit,
    match_checkpoint,
    state_dict_of,
)


@HOOKS.register_module()
class CheckpointMatchHook(Hook):
    """Compare each checkpoint the runner loads with its model, before the weights are copied.

    mmengine's runner loads with ``strict=False``: tensors that do not fit are skipped with a
    warning and keep their random initialisation. ``tools/test.py`` adds this hook for
    evaluation and ``tools/train.py`` for ``--resume``, where a partly loaded model would give
    numbers that look real, or continue a run with half of its weights reset. Fine-tuning
    (``load_from`` in training) does not use it and keeps its partial loading.

    When the checkpoint does not fit:

    - ``allow_partial=False``: :class:`CheckpointMismatchError` with the counts, the first
      tensors of each kind with both shapes, and the likely cause;
    - ``allow_partial=True``: a warning, the model's ``allow_partial_checkpoint`` is set, and
      the report is kept in the message hub (``runner.message_hub.get_info('checkpoint_match')``)
      for the metrics file.

    Args:
        allow_partial: Load what fits instead of refusing.
        checkpoint: File name for the message (the runner does not pass it to hooks; for a
            resume without a file, the work dir's latest checkpoint is named).
        config: Config file name for the message.
        way_out: Last line of the message (default: the evaluation tools' option).
    """

    priority = 'VERY_HIGH'  # before other hooks look at the checkpoint

    def __init__(self, allow_partial: bool = False, checkpoint: str | None = None,
                 config: str | None = None, way_out: str = EVAL_WAY_OUT) -> None:
        self.allow_partial = allow_partial
        self.checkpoint = checkpoint
        self.config = config
        self.way_out = way_out

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Check ``checkpoint`` (not yet copied into the model) against the model."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        match = match_checkpoint(model, state_dict_of(checkpoint))
        if match.ok:
            return
        name = self.checkpoint
        if name is None and getattr(runner, '_resume', False):  # `--resume` without a file
            name = find_latest_checkpoint(runner.work_dir)
        message = enforce_fit(model, match, name, self.config, self.allow_partial,
                              self.way_out)
        runner.message_hub.update_info('checkpoint_match', match.to_dict())
        print_log(f'{message}\nPartial loading is allowed: loading what fits.',
                  logger='current', level=logging.WARNING)
