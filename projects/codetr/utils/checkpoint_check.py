"""Checkpoints for evaluation and inference: readable, and fitting the model, or refused.

mmengine and mmdet load checkpoints with ``strict=False``: tensors whose name or shape does not
fit the model are skipped with a warning and keep their random initialisation, so a
checkpoint of another config (another class count, another ``num_query``, an unconverted
official file) evaluates to numbers that look real. This module gives the evaluation and
inference paths one policy:

- :func:`read_checkpoint` opens a file or stops with one line naming it and what is wrong
  (missing, empty, truncated, not a checkpoint, refused by ``weights_only``, no state dict);
- :func:`match_checkpoint` lists the missing, unexpected and size-mismatched tensors;
- :class:`CheckpointMismatchError` says how many of each, the first few with both shapes, and
  the likely cause;
- :func:`enforce_fit` refuses, or with ``allow_partial=True`` lets a partial load through
  deliberately (mmengine's partial loading, with the report).

Fine-tuning (``load_from`` in training) keeps its partial loading; see
:class:`~projects.codetr.engine.hooks.CheckpointMatchHook` for the runner side.
"""

from __future__ import annotations

import os.path as osp
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

#: Tensors that torch's BatchNorm fills in itself when a checkpoint lacks them.
_OPTIONAL_SUFFIXES = ('num_batches_tracked',)
#: Key prefixes that only the published (unconverted) layouts have.
_OFFICIAL_MARKERS = ('query_head.transformer.', 'query_head.label_embedding.',
                     'query_head.dn_generator.')
_AUX_PREFIXES = ('rpn_head.', 'roi_head.', 'bbox_head.')
CONVERTER = 'tools/model_converters/official_to_mmdet3.py'


class CheckpointFileError(RuntimeError):
    """A checkpoint file that cannot be read; the message is one line naming the file."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose tensors do not fit the model it is loaded into."""


def read_checkpoint(path: str, map_location: str = 'cpu', mmap: bool = False) -> dict:
    """Load a checkpoint file with ``torch.load(weights_only=True)`` or fail with one line.

    mmengine's checkpoint globals (message hub, numpy scalars) are allow-listed first
    (:func:`~projects.codetr.utils.register_checkpoint_safe_globals`).

    Args:
        path: Local checkpoint file.
        map_location: Passed to ``torch.load``.
        mmap: Map the tensors instead of reading them (torch's zip format only): a cheap check
            of the file before a long run.

    Returns:
        dict: The checkpoint: a dict with ``state_dict`` (mmengine) or a bare state dict.

    Raises:
        CheckpointFileError: Naming ``path`` and the problem.
    """
    from ..engine.hooks.checkpoint_hook import checkpoint_problem
    from .checkpoint_compat import register_checkpoint_safe_globals

    def fail(problem: str) -> CheckpointFileError:
        return CheckpointFileError(f'checkpoint {path!r} {problem}')

    if osp.isdir(path):
        raise fail('is a folder, expected a .pth file')
    problem = checkpoint_problem(path)
    if problem == 'missing':
        raise fail('does not exist')
    if problem is not None:
        raise fail(f'is {problem}')
    register_checkpoint_safe_globals()
    is_zip = zipfile.is_zipfile(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True,
                          mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        text = ' '.join(str(exc).split())
        found = re.search(r'Unsupported global: GLOBAL (\S+)', text)
        if found:
            raise fail(f'was refused by torch.load(weights_only=True): it stores pickled Python '
                       f'objects besides tensors ({found.group(1)}); checkpoints of this '
                       f'project, of mmengine and of {CONVERTER} load safely, so re-save the '
                       'state_dict or convert the file') from None
        what = 'a plain pickle, not torch.save output' if not is_zip else text[-160:]
        raise fail(f'is not a torch checkpoint ({what})') from None
    except Exception as exc:  # torch raises many types on bytes that are not a checkpoint
        text = ' '.join(str(exc).split())[:200]
        kind = 'truncated or corrupt' if is_zip else 'not a torch checkpoint'
        raise fail(f'is {kind} ({type(exc).__name__}: {text})') from None
    state = _state_dict_of(ckpt)
    if state is None:
        what = (f'a dict with keys {sorted(map(str, ckpt))[:8]}' if isinstance(ckpt, Mapping)
                else f'a {type(ckpt).__name__}')
        raise fail(f'holds {what}, not a checkpoint: expected a dict with a "state_dict" of '
                   'tensors, or a state dict')
    return ckpt


def _state_dict_of(ckpt: Any) -> dict | None:
    """The tensors of a checkpoint (``state_dict`` or the dict itself), or None."""
    if not isinstance(ckpt, Mapping):
        return None
    state = ckpt.get('state_dict', ckpt)
    if not isinstance(state, Mapping):
        return None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors or None


def state_dict_of(ckpt: Mapping) -> dict:
    """The state dict of a checkpoint read by :func:`read_checkpoint`, ``module.`` stripped."""
    state = _state_dict_of(ckpt) or {}
    return {re.sub(r'^module\.', '', k): v for k, v in state.items()}


@dataclass
class CheckpointMatch:
    """How a checkpoint's tensors fit a model.

    Attributes:
        num_model: Tensors of the model.
        num_loaded: Model tensors with a same-name, same-shape tensor in the checkpoint.
        missing: Model keys absent from the checkpoint.
        unexpected: Checkpoint keys the model does not have.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys in both with other shapes.
    """
    num_model: int
    num_loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every model tensor loads and nothing is left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line: counts of each kind."""
        return (f'{self.num_loaded} of the model\'s {self.num_model} tensors load; '
                f'{len(self.missing)} missing, {len(self.unexpected)} unexpected, '
                f'{len(self.mismatched)} size-mismatched')

    def to_dict(self, limit: int = 20) -> dict:
        """JSON-friendly report (at most ``limit`` names of each kind)."""
        return dict(num_model=self.num_model, num_loaded=self.num_loaded,
                    num_missing=len(self.missing), num_unexpected=len(self.unexpected),
                    num_size_mismatched=len(self.mismatched),
                    missing=self.missing[:limit], unexpected=self.unexpected[:limit],
                    size_mismatched=[f'{k}: checkpoint {list(a)}, model {list(b)}'
                                     for k, a, b in self.mismatched[:limit]])


def match_checkpoint(model: nn.Module, state_dict: Mapping[str, torch.Tensor]
                     ) -> CheckpointMatch:
    """Compare a state dict with a model's own (names and shapes).

    Args:
        model: The model (a DDP wrapper is unwrapped).
        state_dict: Checkpoint tensors, without a ``module.`` prefix.

    Returns:
        CheckpointMatch: The comparison.
    """
    model = getattr(model, 'module', model)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    loaded = sum(1 for k, v in state_dict.items()
                 if k in own and tuple(v.shape) == tuple(own[k].shape))
    return CheckpointMatch(len(own), loaded, missing, unexpected, mismatched)


def likely_cause(match: CheckpointMatch) -> str:
    """A sentence on why a checkpoint and a config may disagree, from the key names."""
    if any(k.startswith(_OFFICIAL_MARKERS) for k in match.unexpected):
        return (f'the checkpoint has the official Co-DETR (mmdet 2.x) or mmdet 3.x port key '
                f'layout: convert it with `python {CONVERTER} SRC DST` and load DST')
    if match.missing and all(k.startswith(_AUX_PREFIXES) for k in match.missing):
        return ('the checkpoint has no auxiliary heads (an --inference-only conversion?): '
                'evaluate it with the aux-free config (configs/deformable_detr_pp_r50_1x_coco.py '
                'or configs/dino_5scale_r50_1x_coco.py), or pass the full checkpoint')
    class_layers = ('cls_branches', 'fc_cls', 'atss_cls', 'rpn_cls', 'label_embedding')
    if match.mismatched and all(any(c in k for c in class_layers) or 'fc_reg' in k
                                for k, _, _ in match.mismatched):
        return ('only class-dependent layers differ: the checkpoint was trained with another '
                'number of classes than the config\'s num_classes/classes (to fine-tune on new '
                'classes, use load_from in training, which loads the rest)')
    return ('the checkpoint was trained with another config (architecture, num_query, '
            'num_classes or layer sizes differ), or the config is mistyped')


#: The last line of a refusal in the evaluation tools.
EVAL_WAY_OUT = ('Evaluating anyway would use randomly initialised weights for these tensors; '
                '--allow-partial-checkpoint does that deliberately and records it.')


def mismatch_message(match: CheckpointMatch, checkpoint: str | None, config: str | None = None,
                     limit: int = 5, way_out: str = EVAL_WAY_OUT) -> str:
    """The refusal message: counts, the first ``limit`` of each kind, likely cause, way out.

    Args:
        match: The comparison.
        checkpoint: File name, or None for "the checkpoint last loaded".
        config: Config file of the model, if known.
        limit: Examples of each kind.
        way_out: Last line: what to do to proceed anyway.
    """
    name = repr(checkpoint) if checkpoint else 'last loaded into the model'
    target = f'the model of {config}' if config else 'the model'
    lines = [f'checkpoint {name} does not fit {target}: {match.summary()}.']
    for label, items in (
            ('size-mismatched', [f'{k}: checkpoint {list(a)}, model {list(b)}'
                                 for k, a, b in match.mismatched]),
            ('missing from the checkpoint', match.missing),
            ('unexpected (in the checkpoint, not in the model)', match.unexpected)):
        if items:
            more = f' (and {len(items) - limit} more)' if len(items) > limit else ''
            lines.append(f'  {len(items)} {label}{more}:')
            lines += [f'    {item}' for item in items[:limit]]
    lines.append(f'Likely cause: {likely_cause(match)}.')
    lines.append(way_out)
    return '\n'.join(lines)


def enforce_fit(model: nn.Module, match: CheckpointMatch, checkpoint: str | None,
                config: str | None = None, allow_partial: bool = False,
                way_out: str = EVAL_WAY_OUT) -> str | None:
    """Refuse a checkpoint that does not fit, or let it through deliberately.

    Args:
        model: The model it is loaded into (a DDP wrapper is unwrapped).
        match: :func:`match_checkpoint` of the checkpoint against ``model``.
        checkpoint, config: File names for the message.
        allow_partial: Let a partial load through: ``model.allow_partial_checkpoint`` is set,
            so that ``predict`` runs, and the message is returned for the caller to report.
        way_out: Last line of the message.

    Returns:
        str | None: None when the checkpoint fits, else the message (``allow_partial``).

    Raises:
        CheckpointMismatchError: When it does not fit and ``allow_partial`` is False.
    """
    if match.ok:
        return None
    message = mismatch_message(match, checkpoint, config, way_out=way_out)
    if not allow_partial:
        raise CheckpointMismatchError(message)
    getattr(model, 'module', model).allow_partial_checkpoint = True
    return message


class CheckpointFitMixin:
    """Detector mixin: predictions refuse to come from a checkpoint that did not fit.

    Every load of a whole state dict into the model (mmengine's ``load_checkpoint``, the
    runner, ``init_detector``, ``DetInferencer``, ``nn.Module.load_state_dict``) records how it
    fit in :attr:`checkpoint_match`. :meth:`check_checkpoint_fit`, called by ``predict``,
    raises :class:`CheckpointMismatchError` while the last load did not fit, unless
    :attr:`allow_partial_checkpoint` is set. A training step (``loss``) clears the record: a
    fine-tuned model (``load_from`` with new classes) is no longer the partly random one.
    """

    #: Let ``predict`` run after a load that did not fit (``--allow-partial-checkpoint``).
    allow_partial_checkpoint: bool = False
    #: How the last whole-model load fit; None when nothing was loaded since the last step.
    checkpoint_match: CheckpointMatch | None = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Record the fit of the whole incoming state dict, then load as usual."""
        own = {k[len(prefix):]: v for k, v in state_dict.items()
               if k.startswith(prefix) and isinstance(v, torch.Tensor)}
        self.checkpoint_match = match_checkpoint(self, own)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def check_checkpoint_fit(self) -> None:
        """Raise if the last loaded checkpoint did not fit and partial loads are not allowed.

        Raises:
            CheckpointMismatchError: With the counts, examples and likely cause.
        """
        match = self.checkpoint_match
        if match is None or match.ok or self.allow_partial_checkpoint:
            return
        raise CheckpointMismatchError(mismatch_message(
            match, None, way_out='Predicting anyway would use randomly initialised weights for '
            'these tensors; set `model.allow_partial_checkpoint = True` to do that deliberately, '
            'or train first (fine-tuning clears this check).'))

    def forget_checkpoint_fit(self) -> None:
        """Called by a training step: the weights are no longer the loaded ones."""
        self.checkpoint_match = None
