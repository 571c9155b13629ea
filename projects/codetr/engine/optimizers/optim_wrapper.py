"""Optimizer wrapper that never applies a step computed from a non-finite loss or gradient."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.logging import MessageHub, print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn


def _nonfinite_terms(losses: dict | None) -> str:
    """Describe the non-finite entries of a model's loss dict, e.g. ``loss_bbox0=nan``."""
    if losses is None:
        return 'loss terms unknown (the forward output was not a dict)'
    bad = []
    for key, value in losses.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for idx, item in enumerate(values):
            if torch.is_tensor(item) and not torch.isfinite(item.detach()).all():
                name = key if len(values) == 1 else f'{key}[{idx}]'
                bad.append(f'{name}={item.detach().float().sum().item()}')
    return ', '.join(bad) if bad else 'no single term is non-finite (their sum overflowed)'


@OPTIM_WRAPPERS.register_module()
class FiniteCheckOptimWrapper(OptimWrapper):
    """:class:`~mmengine.optim.OptimWrapper` that checks the loss and gradients first.

    Before ``backward`` the total loss is checked; after ``backward`` (before clipping) the
    total gradient norm is. If either is NaN/inf the step is not applied and, depending on
    ``on_nonfinite``, training stops with a :class:`FloatingPointError` naming the iteration
    and the offending loss terms (or parameters), or the step is skipped with a warning.
    A skipped step changes neither the parameters nor the optimizer state (moments, step
    count); parameter schedulers still advance. In distributed runs the decision is taken
    jointly (one all-reduce of a flag per iteration), so every rank raises or skips together.

    The loss terms are read from the model's forward output, captured by a forward hook that
    :meth:`optim_context` installs, so no change to the detector is needed.

    Args:
        on_nonfinite: ``'raise'`` (default) or ``'skip'``.
        check_grad: Also check the gradient norm (a finite loss can still give NaN
            gradients, e.g. ``sqrt`` at 0).
        max_consecutive_skips: With ``'skip'``, stop after this many consecutive skipped
            steps (the run is diverging, not hitting a one-off bad batch).
        *args, **kwargs: Arguments of :class:`~mmengine.optim.OptimWrapper`.
    """

    def __init__(self, *args, on_nonfinite: str = 'raise', check_grad: bool = True,
                 max_consecutive_skips: int = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if on_nonfinite not in ('raise', 'skip'):
            raise ValueError(f"on_nonfinite={on_nonfinite!r}: expected 'raise' or 'skip'")
        self.on_nonfinite = on_nonfinite
        self.check_grad = check_grad
        self.max_consecutive_skips = max_consecutive_skips
        self.num_skipped = 0
        self._consecutive_skips = 0
        self._skip_pending = False  # a bad loss occurred in the current accumulation window
        self._losses: dict | None = None
        self._model: nn.Module | None = None

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """Parent context plus a forward hook that keeps the loss dict for error messages."""
        self._model = model

        def capture(_module: nn.Module, _args: Any, output: Any) -> None:
            self._losses = output if isinstance(output, dict) else None

        handle = model.register_forward_hook(capture)
        try:
            with super().optim_context(model):
                yield
        finally:
            handle.remove()

    def _where(self) -> str:
        """``'iteration i (epoch e)'`` from the runner's message hub (1-based, as the log)."""
        hub = MessageHub.get_current_instance()
        it, epoch = hub.get_info('iter'), hub.get_info('epoch')
        where = f'iteration {it + 1}' if it is not None else 'an unknown iteration'
        return where + (f' (epoch {epoch + 1})' if epoch is not None else '')

    @staticmethod
    def _any_rank(bad: bool, device: torch.device) -> bool:
        """Whether ``bad`` holds on any rank (all ranks must raise or skip together)."""
        if get_world_size() == 1:
            return bad
        flag = torch.tensor([float(bad)], device=device)
        all_reduce(flag, op='sum')
        return bool(flag.item() > 0)

    def _handle(self, problem: str) -> None:
        """Raise, or record a skipped step and warn, according to ``on_nonfinite``."""
        if self.on_nonfinite == 'raise':
            raise FloatingPointError(
                f'{problem} at {self._where()}. The optimizer step was not applied, so the '
                'parameters and the last checkpoint are not affected. Check the data around '
                'this iteration or lower the learning rate, or set '
                "optim_wrapper.on_nonfinite='skip' to skip such steps.")
        self.num_skipped += 1
        self._consecutive_skips += 1
        self.message_hub.update_info('nonfinite_skipped_steps', self.num_skipped)
        if self._consecutive_skips > self.max_consecutive_skips:
            raise FloatingPointError(
                f'{problem} at {self._where()}: {self._consecutive_skips} consecutive steps '
                f'skipped (max_consecutive_skips={self.max_consecutive_skips}); training is '
                'diverging, stopping.')
        print_log(f'{problem} at {self._where()}: optimizer step skipped '
                  f'({self.num_skipped} skipped so far)', logger='current',
                  level=logging.WARNING)

    def update_params(self, loss: torch.Tensor, step_kwargs: dict | None = None,
                      zero_kwargs: dict | None = None) -> None:
        """Check the loss, then backward/step as the parent unless it is non-finite.

        Args:
            loss: Total loss of the iteration (a scalar tensor).
            step_kwargs: Arguments of ``optimizer.step``.
            zero_kwargs: Arguments of ``optimizer.zero_grad``.
        """
        try:
            local_bad = not bool(torch.isfinite(loss.detach()).all())
            if self._any_rank(local_bad, loss.device):
                problem = (f'non-finite loss {loss.detach().float().sum().item()}: '
                           f'{_nonfinite_terms(self._losses)}' if local_bad
                           else 'non-finite loss on another rank')
                self._handle(problem)
                # Skip: no backward; count the micro-step so accumulation stays aligned.
                self._skip_pending = True
                self._inner_count += 1
                if self.should_update():
                    self.zero_grad(**(zero_kwargs or {}))
                    self._skip_pending = False
                return
            super().update_params(loss, step_kwargs, zero_kwargs)
        finally:
            self._losses = None  # do not keep the autograd graph alive

    def _grad_norm(self) -> torch.Tensor | None:
        """Total L2 norm of the current gradients (before clipping), or None if none."""
        grads = [p.grad.detach() for group in self.optimizer.param_groups
                 for p in group['params'] if p.grad is not None]
        if not grads:
            return None
        return torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g.float()).to(grads[0].device) for g in grads]))

    def _nonfinite_params(self, limit: int = 5) -> list[str]:
        """Names of (up to ``limit``) parameters whose gradient is not finite."""
        if self._model is None:
            return []
        return [name for name, p in self._model.named_parameters()
                if p.grad is not None and not torch.isfinite(p.grad).all()][:limit]

    def step(self, **kwargs) -> None:
        """Check the gradient norm, then clip and step as the parent, or skip.

        Args:
            kwargs: Arguments of ``optimizer.step``.
        """
        if self._skip_pending:  # a micro-batch of this window had a non-finite loss
            self._skip_pending = False
            return
        if self.check_grad:
            norm = self._grad_norm()
            bad = norm is not None and not bool(torch.isfinite(norm))
            device = norm.device if norm is not None else torch.device('cpu')
            if self._any_rank(bad, device):
                self._handle(f'non-finite gradient norm {norm.item() if bad else "(other rank)"}'
                             f' with a finite loss, e.g. in {self._nonfinite_params()}')
                return
        super().step(**kwargs)
        self._consecutive_skips = 0
