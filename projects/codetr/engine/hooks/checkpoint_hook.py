"""Checkpoint hook whose files are complete or absent, plus a report of what a load skipped.

mmengine's :class:`~mmengine.hooks.CheckpointHook` writes ``iter_N.pth`` in place, then the
``last_checkpoint`` pointer in place, and (with ``max_keep_ckpts``) deletes the oldest
checkpoint *before* writing the new one. A kill or a full disk at the wrong moment leaves a
truncated ``.pth``, an empty pointer, or (``max_keep_ckpts=1``) a pointer to a deleted file.
:class:`AtomicCheckpointHook` writes every file to a temporary name, fsyncs it and renames it
into place (``os.replace`` is atomic on POSIX and Windows), updates the pointer the same way,
and deletes old checkpoints only afterwards. When a run starts, a pointer to a missing or
truncated checkpoint (e.g. left by the stock hook) is moved back to the newest complete one.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
import re
import zipfile
from contextlib import suppress
from pathlib import Path
from typing import IO

import mmengine
from mmengine.dist import barrier, is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio.backends.registry_utils import backends
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

ATOMIC_BACKEND = 'atomic_local'
TMP_MARK = '.tmp-'


def _write_payload(f: IO[bytes], data: bytes) -> None:
    """Write ``data`` to an open file (a separate function so tests can fail it midway)."""
    f.write(data)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the complete new one.

    The bytes go to a hidden temporary file in the same folder, which is fsynced and then
    renamed over ``path``; the folder is fsynced too, so the rename survives a power loss.

    Args:
        data: File content.
        path: Destination (local file system).
    """
    path = str(path)
    directory = osp.dirname(path) or '.'
    mmengine.mkdir_or_exist(directory)
    tmp = osp.join(directory, f'.{osp.basename(path)}{TMP_MARK}{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            _write_payload(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.remove(tmp)
        raise
    if hasattr(os, 'O_DIRECTORY'):  # POSIX: persist the rename itself
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicLocalBackend(LocalBackend):
    """mmengine local file backend whose writes are atomic (see :func:`atomic_write_bytes`).

    Selected with ``backend_args=dict(backend='atomic_local')``; reading is unchanged.
    """

    def put(self, obj: bytes, filepath: str | Path) -> None:
        """Atomically write bytes to ``filepath``."""
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        """Atomically write text to ``filepath``."""
        atomic_write_bytes(obj.encode(encoding), filepath)


if ATOMIC_BACKEND not in backends:
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend)


def checkpoint_problem(path: str) -> str | None:
    """Return why ``path`` is not a loadable checkpoint file, or None if it looks complete.

    Cheap: for torch's zip format only the archive's central directory (at the end of the file,
    hence missing from a truncated file) is read. Directories (DeepSpeed) and the legacy
    non-zip format are not inspected.
    """
    if osp.isdir(path):
        return None
    if not osp.isfile(path):
        return 'missing'
    if osp.getsize(path) == 0:
        return 'empty (0 bytes)'
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic != b'PK\x03\x04':
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return f'truncated or corrupt ({exc})'
    if not any(name.endswith('data.pkl') for name in names):
        return 'not a torch checkpoint (no data.pkl in the archive)'
    return None


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """:class:`~mmengine.hooks.CheckpointHook` with crash-safe files and a load report.

    - ``.pth`` files (regular, best, last) are written through :class:`AtomicLocalBackend`
      when ``backend_args`` is not given and ``out_dir`` is local;
    - ``last_checkpoint`` is replaced atomically, after the checkpoint it names is complete;
    - checkpoints beyond ``max_keep_ckpts`` are deleted after the new one and the pointer are
      in place, never before;
    - ``before_run`` removes temporary files of interrupted writes and repairs a pointer to a
      missing/truncated checkpoint (resuming with no complete checkpoint left is an error);
    - ``after_load_checkpoint`` logs which tensors of the checkpoint were loaded, which were
      skipped for a shape mismatch (e.g. class-dependent layers when the number of classes
      differs; they keep their initialisation), which are missing and which are unused.

    Args:
        *args, **kwargs: Arguments of :class:`~mmengine.hooks.CheckpointHook`.
    """

    def __init__(self, *args, **kwargs) -> None:
        out_dir = kwargs.get('out_dir')
        if kwargs.get('backend_args') is None and kwargs.get('file_client_args') is None and (
                out_dir is None or '://' not in str(out_dir)):
            kwargs['backend_args'] = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ saving

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        """Save ``filename_tmpl.format(step)``, then the pointer, then delete old ones."""
        stale = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write_bytes(str(self.last_ckpt).encode(), osp.join(runner.work_dir,
                                                                 'last_checkpoint'))
        for old_step in stale:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if path == self.last_ckpt:
                continue
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed checkpoints are folders
                self.file_backend.rmtree(path)

    # ------------------------------------------------------------------ starting

    def before_run(self, runner) -> None:
        """Clean temporary files and repair ``last_checkpoint`` before a resume reads it."""
        if is_main_process():
            self._repair_pointer(runner)
        barrier()

    def _step_pattern(self) -> re.Pattern:
        """Regex matching file names of ``filename_tmpl`` and capturing the step."""
        head, _, tail = self.filename_tmpl.partition('{}')
        return re.compile(re.escape(head) + r'(\d+)' + re.escape(tail) + '$')

    def _repair_pointer(self, runner) -> None:
        """Point ``last_checkpoint`` at the newest complete checkpoint if it names a bad one."""
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        target = Path(pointer).read_text().strip() if osp.isfile(pointer) else ''
        folders = {runner.work_dir, osp.dirname(target) or runner.work_dir}
        for folder in folders:
            for tmp in Path(folder).glob(f'.*{TMP_MARK}*') if osp.isdir(folder) else []:
                print_log(f'removing {tmp}, left by an interrupted checkpoint write',
                          logger='current', level=logging.WARNING)
                tmp.unlink(missing_ok=True)
        if not osp.isfile(pointer) or '://' in target:
            return
        problem = checkpoint_problem(target) if target else 'empty'
        if problem is None:
            return
        pattern = self._step_pattern()
        folder = osp.dirname(target) or runner.work_dir
        candidates = sorted(
            ((int(m.group(1)), osp.join(folder, name)) for name in os.listdir(folder)
             if (m := pattern.match(name))), reverse=True)
        for _, path in candidates:
            if path != target and checkpoint_problem(path) is None:
                print_log(f'last_checkpoint points to {target!r}, which is {problem}; it now '
                          f'points to {path!r}, the newest complete checkpoint',
                          logger='current', level=logging.WARNING)
                atomic_write_bytes(path.encode(), pointer)
                return
        msg = (f'last_checkpoint in {runner.work_dir} points to {target!r}, which is '
               f'{problem}, and {folder} holds no other complete checkpoint')
        if getattr(runner, '_resume', False):
            raise RuntimeError(f'{msg}; cannot resume. Delete {pointer} to train from scratch.')
        print_log(f'{msg}; removing the pointer', logger='current', level=logging.WARNING)
        os.remove(pointer)

    # ------------------------------------------------------------------ loading

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Log which checkpoint tensors load, and which are skipped and why.

        mmengine only prints the size-mismatch list to stdout (not to the log file) and does
        not say what happens to those layers; they keep their initialisation.
        """
        state = checkpoint.get('state_dict', checkpoint)
        state = {re.sub(r'^module\.', '', k): v for k, v in state.items() if hasattr(v, 'shape')}
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        own = model.state_dict()
        matched = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
        mismatched = [f'{k} {tuple(v.shape)} -> {tuple(own[k].shape)}'
                      for k, v in state.items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if k not in state and 'num_batches_tracked' not in k]
        unused = [k for k in state if k not in own]
        print_log(f'checkpoint: {len(matched)} of the model\'s {len(own)} tensors loaded',
                  logger='current')
        for label, names in (
                ('have a different shape in the checkpoint and keep their initial values '
                 '(re-initialised, e.g. class-dependent layers)', mismatched),
                ('are not in the checkpoint and keep their initial values', missing),
                ('of the checkpoint are not in the model and are ignored', unused)):
            if names:
                shown = '\n  '.join(names[:40])
                more = f'\n  ... and {len(names) - 40} more' if len(names) > 40 else ''
                print_log(f'checkpoint: {len(names)} tensors {label}:\n  {shown}{more}',
                          logger='current', level=logging.WARNING)
