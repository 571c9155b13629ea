"""Shared set-up for the command-line tools (train, test, infer, browse_dataset).

The tools put the repository root on ``sys.path`` and then import this module as
``tools.misc.tool_utils``. It registers mmdet's modules, imports ``projects.codetr`` when it is
importable, allow-lists the mmengine checkpoint globals for ``torch.load(weights_only=True)``,
loads configs with clear errors, checks dataset folders before a long build, and makes
``--launcher pytorch|slurm`` work on machines without CUDA (gloo process group, CPU DDP).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATOR = 'tools/misc/generate_synthetic_coco.py'
_DDP_WRAPPERS = ('MMDistributedDataParallel', 'DistributedDataParallel')


def setup_modules() -> None:
    """Register mmdet modules, import ``projects.codetr`` and allow-list checkpoint globals.

    ``projects.codetr`` is imported when present; configs normally pull it in through
    ``custom_imports`` too. If it fails to import, a warning is logged and stock mmdet configs
    still work (a config that names Co-DETR modules then fails with its own error).
    """
    from mmdet.utils import register_all_modules, setup_cache_size_limit_of_dynamo

    setup_cache_size_limit_of_dynamo()  # honours DYNAMO_CACHE_SIZE_LIMIT, as mmdet's tools
    register_all_modules(init_default_scope=False)
    try:
        import projects.codetr  # noqa: F401  (registers the Co-DETR modules)
    except ImportError as exc:
        print_log(f'projects.codetr is not importable ({exc!r}); only stock mmdet modules '
                  'are registered', logger='current', level=logging.WARNING)
    _load_checkpoint_compat().register_checkpoint_safe_globals()


def _load_checkpoint_compat() -> Any:
    """Import ``projects.codetr.utils.checkpoint_compat`` (by path if the package is broken)."""
    try:
        from projects.codetr.utils import checkpoint_compat
        return checkpoint_compat
    except ImportError:
        path = REPO_ROOT / 'projects' / 'codetr' / 'utils' / 'checkpoint_compat.py'
        spec = importlib.util.spec_from_file_location('_codetr_checkpoint_compat', path)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def load_config(path: str, cfg_options: dict | None = None) -> Config:
    """Load a config file and merge ``--cfg-options`` into it.

    Args:
        path: Config file path.
        cfg_options: Key-value overrides from ``DictAction``.

    Returns:
        Config: The merged config.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f'config file {path!r} does not exist (cwd: {os.getcwd()})')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    drop_persistent_workers_without_workers(cfg)
    return cfg


def drop_persistent_workers_without_workers(cfg: Config) -> list[str]:
    """Set ``persistent_workers=False`` in dataloaders that have ``num_workers=0``.

    PyTorch refuses ``persistent_workers=True`` without worker processes, so the usual way to
    debug a data problem in the main process (``--cfg-options
    train_dataloader.num_workers=0``) would otherwise fail on configs that keep workers alive.

    Returns:
        list[str]: The dataloader keys that were changed.
    """
    changed = []
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if loader and loader.get('num_workers', 0) == 0 and loader.get('persistent_workers'):
            loader['persistent_workers'] = False
            changed.append(key)
    if changed:
        print_log(f'{", ".join(changed)}: num_workers=0, so persistent_workers is set to False',
                  logger='current')
    return changed


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend pytorch|onnxruntime|openvino`` (an exported model for the runtimes),
    ``--precision`` (OpenVINO) and ``--no-cpu-optim`` (PyTorch on CPU)."""
    parser.add_argument('--backend', choices=['pytorch', 'onnxruntime', 'openvino'],
                        default='pytorch',
                        help='run an exported .onnx model (tools/deployment/export_onnx.py) '
                        'with this runtime instead of the PyTorch checkpoint')
    parser.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default='fp32',
                        help='compute precision of --backend openvino (its CPU plugin runs '
                        'bf16/fp16 on CPUs with AMX/AVX512 support; detections then differ '
                        'from PyTorch\'s by more than rounding)')
    parser.add_argument('--no-cpu-optim', action='store_true',
                        help='PyTorch on CPU: run the modules as loaded (by default the '
                        'backbone/neck BatchNorms are folded into their convolutions, stored '
                        'channels-last, and the sampling locations computed in one pass: same '
                        'detections, faster)')


def check_backend_arguments(args: argparse.Namespace) -> None:
    """Reject ``--precision`` other than fp32 outside OpenVINO."""
    if args.precision != 'fp32' and args.backend != 'openvino':
        raise ValueError(f'--precision {args.precision} is an option of --backend openvino; '
                         f'--backend {args.backend} computes in fp32')


def _leaf_datasets(dataset_cfg: Any) -> Iterator[dict]:
    """Yield the innermost dataset configs of wrappers (RepeatDataset, ConcatDataset, ...)."""
    if not isinstance(dataset_cfg, dict):
        return
    if 'dataset' in dataset_cfg:
        yield from _leaf_datasets(dataset_cfg['dataset'])
    elif 'datasets' in dataset_cfg:
        for sub in dataset_cfg['datasets']:
            yield from _leaf_datasets(sub)
    else:
        yield dataset_cfg


def check_dataset_paths(cfg: Config, loaders: tuple[str, ...]) -> None:
    """Fail early, naming the config key, if an annotation file or image folder is missing.

    Args:
        cfg: Config with ``*_dataloader`` entries.
        loaders: Dataloader keys to check, e.g. ``('train_dataloader', 'val_dataloader')``.

    Raises:
        FileNotFoundError: With the missing path, the config key and how to generate the
            synthetic dataset.
    """
    for key in loaders:
        loader = cfg.get(key)
        if not loader:
            continue
        for ds in _leaf_datasets(loader.get('dataset')):
            root = ds.get('data_root') or ''
            checks = []
            if ds.get('ann_file'):
                checks.append(('ann_file', ds['ann_file']))
            prefix = ds.get('data_prefix') or {}
            if isinstance(prefix, dict) and prefix.get('img'):
                checks.append(('data_prefix.img', prefix['img']))
            for field, rel in checks:
                if '://' in f'{root}{rel}':  # remote storage (backend_args): not checkable here
                    continue
                path = Path(root) / rel
                if not path.exists():
                    hint = (f'generate the synthetic dataset with `python {GENERATOR} '
                            f'--out-dir {root or "<data_root>"}`')
                    raise FileNotFoundError(
                        f'{key}.dataset.{field}: {str(path)!r} does not exist '
                        f'(data_root={root!r}); {hint}, or point data_root at your data with '
                        f"--cfg-options {key}.dataset.data_root=DIR/")


def use_cpu_distributed_if_needed(cfg: Config, launcher: str) -> None:
    """Adapt a config for distributed runs on a machine without CUDA.

    Sets ``env_cfg.dist_cfg.backend='gloo'``, creates the process group (mmengine's
    ``init_dist`` calls ``torch.cuda.set_device``, which fails on CPU builds of torch) and makes
    the DDP wrapper use ``device_ids=None`` as CPU modules require.

    Args:
        cfg: Config to modify in place.
        launcher: ``'none'``, ``'pytorch'`` or ``'slurm'``.
    """
    if torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    dist_cfg['backend'] = 'gloo'
    if launcher == 'none':
        return
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if wrapper.get('type', 'MMDistributedDataParallel') in _DDP_WRAPPERS:
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    init_cpu_process_group(launcher, timeout=dist_cfg.get('timeout'))


def init_cpu_process_group(launcher: str, timeout: float | None = None) -> None:
    """Create a gloo process group from torchrun or slurm environment variables.

    Args:
        launcher: ``'pytorch'`` (torchrun sets RANK/WORLD_SIZE/MASTER_*) or ``'slurm'``.
        timeout: Optional timeout in seconds.

    Raises:
        ValueError: For another launcher.
    """
    if torch.distributed.is_initialized():
        return
    if launcher == 'slurm':
        node_list = os.environ['SLURM_NODELIST']
        os.environ.setdefault('MASTER_ADDR', subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1'))
        os.environ.setdefault('MASTER_PORT', '29500')
        os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
        os.environ['RANK'] = os.environ['SLURM_PROCID']
        os.environ['LOCAL_RANK'] = os.environ['SLURM_LOCALID']
    elif launcher != 'pytorch':
        raise ValueError(f'--launcher {launcher!r}: CPU runs support pytorch and slurm')
    kwargs = {} if timeout is None else dict(timeout=datetime.timedelta(seconds=timeout))
    torch.distributed.init_process_group(backend='gloo', **kwargs)
