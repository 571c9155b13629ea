"""Make mmengine 0.10 checkpoints loadable under ``torch.load(weights_only=True)``.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: it only unpickles tensors,
containers and primitives plus an explicit allow-list of globals. mmengine 0.10.7 calls
``torch.load(filename, map_location=...)`` without the argument, and its checkpoints carry more
than weights: the message hub (``HistoryBuffer`` objects holding numpy arrays and references to
``HistoryBuffer.min``/``max``/``current``/``mean``), numpy scalars (e.g. the ``eta``) and
dtypes, and sometimes a ``ConfigDict``. So ``--resume`` and ``load_from`` fail with
``UnpicklingError: Unsupported global``.

The fix here keeps ``weights_only=True`` and allow-lists exactly those globals with
``torch.serialization.add_safe_globals``. ``builtins.getattr`` (how pickle refers to the
``HistoryBuffer`` statistic methods) is *not* allow-listed: the name is bound to
:func:`_history_buffer_getattr`, which only resolves those four methods and rejects anything
else, so a checkpoint cannot use ``getattr`` to reach arbitrary attributes. Any other class or
function in a pickle is still refused by ``torch.load``.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Union

import numpy as np
import torch
from mmengine.config import ConfigDict
from mmengine.logging import HistoryBuffer, print_log

SafeGlobal = Union[Callable, tuple[Callable, str]]

#: Attributes of ``HistoryBuffer`` that mmengine checkpoints reference through ``getattr``.
HISTORY_BUFFER_METHODS: tuple[str, ...] = ('min', 'max', 'current', 'mean')

# Numeric, boolean and string dtypes whose dtype classes may appear in pickled numpy data.
# Object ('O') and void ('V') dtypes are deliberately absent.
_NUMPY_DTYPE_CODES = '?bBhHiIlLqQefdgFDGUSMm'

_registered = False


def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """Restricted stand-in for ``builtins.getattr`` while unpickling with ``weights_only``.

    Pickle stores ``HistoryBuffer.min`` as ``getattr(HistoryBuffer, 'min')``. Only those
    statistic methods are resolved; every other ``getattr`` call in a checkpoint is refused.

    Args:
        obj: Object the pickle asks an attribute of; must be ``HistoryBuffer``.
        name: Attribute name; must be one of :data:`HISTORY_BUFFER_METHODS`.

    Returns:
        Callable: The unbound ``HistoryBuffer`` method.

    Raises:
        pickle.UnpicklingError: For any other object or attribute.
    """
    if obj is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'weights_only load: getattr({obj!r}, {name!r}) is not allowed; only '
        f'HistoryBuffer.{{{", ".join(HISTORY_BUFFER_METHODS)}}} may be referenced '
        '(see projects/codetr/checkpoint_compat.py)')


def _numpy_globals() -> list[SafeGlobal]:
    """Return the numpy functions and classes needed to rebuild arrays, scalars and dtypes.

    Both module paths of the rebuild helpers are listed, so checkpoints pickled under numpy 1.x
    (``numpy.core``) and numpy 2.x (``numpy._core``) load with either installed version.
    """
    multiarray = getattr(np, '_core', None)
    multiarray = getattr(multiarray, 'multiarray', None) or np.core.multiarray
    entries: list[SafeGlobal] = [np.ndarray, np.dtype]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries.append((multiarray._reconstruct, f'{module}._reconstruct'))
        entries.append((multiarray.scalar, f'{module}.scalar'))
    # numpy >= 1.25: dtype instances have per-type classes (numpy.dtypes.Float64DType, ...);
    # torch's unpickler only BUILDs instances whose exact type is allow-listed.
    for code in _NUMPY_DTYPE_CODES:
        dtype_cls = type(np.dtype(code))
        if dtype_cls is not np.dtype:
            entries.append(dtype_cls)
    return entries


def checkpoint_safe_globals() -> list[SafeGlobal]:
    """List every global that :func:`register_checkpoint_safe_globals` allow-lists.

    Returns:
        list: Classes/functions, or ``(callable, 'module.qualname')`` pairs where the name in
        the pickle differs from the object's own path.
    """
    return [
        HistoryBuffer,
        (_history_buffer_getattr, 'builtins.getattr'),
        ConfigDict,
        *_numpy_globals(),
    ]


def register_checkpoint_safe_globals() -> None:
    """Allow-list the globals of mmengine checkpoints for ``torch.load(weights_only=True)``.

    Idempotent: later calls are no-ops. On torch versions without
    ``torch.serialization.add_safe_globals`` (< 2.4, where ``weights_only`` defaults to False)
    nothing is needed and nothing is done.
    """
    global _registered
    if _registered:
        return
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is None:
        print_log(f'torch {torch.__version__} has no add_safe_globals; checkpoint globals '
                  'not registered (not needed before torch 2.6)', logger='current')
    else:
        add_safe_globals(checkpoint_safe_globals())
    _registered = True
