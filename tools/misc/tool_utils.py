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
    parser.add_argument('--precision', choices=['fp32', 'bf16', 'fp16', 'int8'],
                        default='fp32',
                        help='bf16/fp16: compute precision of --backend openvino (its CPU '
                        'plugin runs them on CPUs with AMX/AVX512 support; detections then '
                        'differ from PyTorch\'s by more than rounding); int8: the model is an '
                        'INT8 one from tools/deployment/quantize.py (either runtime)')
    parser.add_argument('--no-cpu-optim', action='store_true',
                        help='PyTorch on CPU: run the modules as loaded (by default the '
                        'backbone/neck BatchNorms are folded into their convolutions, stored '
                        'channels-last, and the sampling locations computed in one pass: same '
                        'detections, faster)')


def check_backend_arguments(args: argparse.Namespace) -> None:
    """Reject ``--precision bf16|fp16`` outside OpenVINO and ``int8`` with PyTorch."""
    if args.precision in ('bf16', 'fp16') and args.backend != 'openvino':
        raise ValueError(f'--precision {args.precision} is an option of --backend openvino; '
                         f'--backend {args.backend} computes in fp32')
    if args.precision == 'int8' and args.backend == 'pytorch':
        raise ValueError('--precision int8 runs a model quantised by '
                         'tools/deployment/quantize.py with --backend onnxruntime|openvino')


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


class BadImagesError(RuntimeError):
    """Images of an evaluation dataset that are missing or cannot be decoded."""


class ExportedPathError(ValueError):
    """An exported model asked to evaluate a path that is not in its graph."""


def check_exported_eval_module(cfg: Config, backend: str | None = None) -> None:
    """Refuse ``model.eval_module`` other than 'detr' for an exported model.

    The ONNX graph is the query head (what ``eval_module='detr'`` predicts with); an auxiliary
    head ('one-stage' ATSS, 'two-stage' RPN + RoI) is not in it, so evaluating the graph under
    that setting would silently report the query head.

    Raises:
        ExportedPathError: Naming the setting and what to do instead.
    """
    eval_module = cfg.model.get('eval_module', 'detr')
    if eval_module == 'detr':
        return
    what = f'--backend {backend}' if backend else 'the ONNX export'
    raise ExportedPathError(
        f'model.eval_module={eval_module!r}: {what} covers the query head only (the exported '
        "graph is what eval_module='detr' predicts with); the auxiliary heads are not in the "
        f"graph. Evaluate eval_module={eval_module!r} with the PyTorch checkpoint, or drop the "
        'setting to use the exported model')


def test_pipeline_size(cfg: Config) -> tuple[int, int]:
    """(H, W) that the test pipeline's ``Resize`` (``scale=(w, h)``) targets; 800x1333 if none.

    With ``keep_ratio`` an image is resized to fit inside it; a dynamic graph runs every size,
    this is the size it is traced and checked at.
    """
    for step in cfg.test_dataloader.dataset.get('pipeline', []):
        if 'Resize' in str(step.get('type')) and step.get('scale'):
            w, h = step['scale']
            return int(h), int(w)
    return 800, 1333


def run_cli(main: Any) -> int:
    """Run a tool's ``main()`` for the command line and return its exit status.

    The refusals of the loading policy (an unreadable checkpoint, a checkpoint that does not
    fit the config, unusable test images, an aux-head path asked of an exported model, a
    native-operator graph without its library) end in
    their message on stderr and status 1, without a traceback; otherwise ``main``'s own int
    result is the status (anything else: 0).
    """
    import sys

    from projects.codetr.ops.native import NativeOpsMissingError
    from projects.codetr.utils import CheckpointFileError, CheckpointMismatchError
    try:
        result = main()
    except (CheckpointFileError, CheckpointMismatchError, BadImagesError,
            ExportedPathError, NativeOpsMissingError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


def add_allow_partial_argument(parser: argparse.ArgumentParser, action: str) -> None:
    """``--allow-partial-checkpoint``: ``action`` (e.g. 'evaluate') a checkpoint that does not
    fit the model anyway."""
    parser.add_argument('--allow-partial-checkpoint', action='store_true',
                        help=f'{action} even if the checkpoint does not fit the model (tensors '
                        'that do not fit keep their random initialisation); recorded in the '
                        'outputs')


def _image_problem(path: str, backend_args: dict | None, flag: str, decoder: str) -> str | None:
    """Why ``path`` cannot be loaded as the test pipeline loads it, or None."""
    import mmcv
    from mmengine.fileio import get
    try:
        data = get(path, backend_args=backend_args)
    except FileNotFoundError:
        return 'does not exist'
    except Exception as exc:  # remote storage or permission errors of any type
        return f'cannot be read ({type(exc).__name__}: {exc})'
    if not data:
        return 'is empty (0 bytes)'
    try:
        img = mmcv.imfrombytes(data, flag=flag, backend=decoder)
    except Exception as exc:  # decoder errors of any type
        return f'cannot be decoded ({type(exc).__name__}: {exc})'
    if img is None or img.size == 0:
        return 'cannot be decoded (truncated or not an image)'
    return None


def check_eval_images(cfg: Config, key: str = 'test_dataloader', skip: bool = False,
                      option: str = '--skip-bad-images', workers: int = 4) -> list[dict]:
    """Read every image of an evaluation dataset before inference; refuse or drop bad ones.

    Each image is read and decoded as the first step of the test pipeline would
    (``LoadImageFromFile``'s ``color_type``, ``imdecode_backend`` and ``backend_args``), so an
    image that passes cannot fail during the run.

    Args:
        cfg: Config; with ``skip``, ``cfg[key].dataset`` gets ``indices`` of the good images and
            the COCO evaluators get ``exclude_img_ids`` of the bad ones.
        key: Dataloader key.
        skip: Drop bad images instead of raising.
        option: The command-line option that sets ``skip``, for the message.
        workers: Decoding threads.

    Returns:
        list[dict]: ``{'file', 'img_id', 'problem'}`` per bad image (empty if none).

    Raises:
        BadImagesError: If an image is bad and ``skip`` is False, listing them.
        ValueError: If ``skip`` is set and the dataset or evaluator cannot leave images out.
    """
    import copy
    import time
    from concurrent.futures import ThreadPoolExecutor

    from mmdet.registry import DATASETS
    from mmengine.registry import DefaultScope

    ds_cfg = copy.deepcopy(cfg[key]['dataset'])
    if ds_cfg.get('type') in ('CheckedCocoDataset', 'mmdet.CheckedCocoDataset'):
        ds_cfg['check_image_files'] = False  # listed below with the undecodable ones
    ds_cfg['lazy_init'] = False
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope') or 'mmdet'):
        dataset = DATASETS.build(ds_cfg)
    if not hasattr(dataset, 'get_data_info'):
        return []
    load_cfg = next((t for t in ds_cfg.get('pipeline', []) if 'LoadImage' in t.get('type', '')),
                    {})
    flag = load_cfg.get('color_type', 'color')
    decoder = load_cfg.get('imdecode_backend', 'cv2')
    backend_args = load_cfg.get('backend_args', None)
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(
            lambda info: _image_problem(info['img_path'], backend_args, flag, decoder), infos))
    bad_positions = {i for i, problem in enumerate(problems) if problem is not None}
    bad = [dict(file=infos[i]['img_path'], img_id=infos[i].get('img_id'), problem=problems[i])
           for i in sorted(bad_positions)]
    print_log(f'{key}: read and decoded {len(infos)} images in '
              f'{time.perf_counter() - start:.1f} s; {len(bad)} cannot be used',
              logger='current', level=logging.WARNING if bad else logging.INFO)
    if not bad:
        return bad
    listed = '\n'.join(f'  {b["file"]} (img_id={b["img_id"]}): {b["problem"]}' for b in bad[:20])
    more = f'\n  ... and {len(bad) - 20} more' if len(bad) > 20 else ''
    summary = f'{key}.dataset: {len(bad)} of {len(infos)} images cannot be used:\n{listed}{more}'
    if not skip or len(bad) == len(infos):
        if skip:
            raise BadImagesError(f'{summary}\nNo image is left to evaluate.')
        raise BadImagesError(f'{summary}\nFix or remove them (and their annotations), or pass '
                             f'{option} to evaluate without them; the metrics file then lists '
                             'them.')
    _leave_out_images(cfg, key, bad, bad_positions, len(infos))
    print_log(f'{summary}\n{option}: these images are left out of inference and evaluation',
              logger='current', level=logging.WARNING)
    return bad


def _leave_out_images(cfg: Config, key: str, bad: list[dict], bad_positions: set[int],
                      num_images: int) -> None:
    """Restrict ``cfg[key].dataset`` to the good images and the COCO evaluators to their ids.

    ``bad_positions`` index the dataset as built (after any ``indices`` of the config).
    """
    ds = cfg[key]['dataset']
    if 'dataset' in ds or 'datasets' in ds:
        raise ValueError(f'{key}.dataset is a wrapper ({ds.get("type")}); leaving images out '
                         'works on a plain dataset only')
    old = ds.get('indices')
    base = list(range(old)) if isinstance(old, int) else list(old or range(num_images))
    ds['indices'] = [base[i] for i in range(num_images) if i not in bad_positions]
    if ds.get('type') in ('CheckedCocoDataset', 'mmdet.CheckedCocoDataset'):
        ds['check_image_files'] = False
    evaluator_key = key.replace('_dataloader', '_evaluator')
    evaluators = cfg.get(evaluator_key)
    evaluators = evaluators if isinstance(evaluators, list) else [evaluators]
    for metric in evaluators:
        if not metric:
            continue
        kind = str(metric.get('type', '')).split('.')[-1]
        if kind in ('CocoMetric', 'CheckedCocoMetric'):
            metric['type'] = 'CheckedCocoMetric'
            metric['exclude_img_ids'] = [b['img_id'] for b in bad]
        elif metric.get('ann_file'):
            raise ValueError(f'{evaluator_key} {metric.get("type")} reads ground truth from '
                             f'{metric["ann_file"]} and cannot leave images out; their objects '
                             'would count as missed')


def init_detector_checked(cfg: Config, checkpoint: str, device: str, config_path: str,
                          allow_partial: bool = False) -> tuple[Any, Any]:
    """mmdet's ``init_detector`` with the checkpoint read safely and checked against the model.

    A file that cannot be read stops in one line (:class:`CheckpointFileError`); a checkpoint
    whose tensors do not fit stops with the list (:class:`CheckpointMismatchError`) unless
    ``allow_partial``, which loads what fits and returns the comparison. mmengine's own printed
    list of tensors that did not load is not shown (the refusal says it).

    Returns:
        tuple: The model (eval mode, on ``device``) and the ``CheckpointMatch`` of a partial load
        (None when the checkpoint fits).
    """
    import contextlib
    import io
    import sys

    from mmdet.apis import init_detector

    from projects.codetr.utils import enforce_fit, read_checkpoint
    from projects.codetr.utils.checkpoint_check import match_checkpoint, state_dict_of

    ckpt = read_checkpoint(checkpoint, mmap=True)  # a bad file stops here, in one line
    with contextlib.redirect_stdout(io.StringIO()):
        model = init_detector(cfg, checkpoint, device=device)
    match = match_checkpoint(model, state_dict_of(ckpt))
    message = enforce_fit(model, match, checkpoint, config_path, allow_partial)
    if message is None:
        return model, None
    print(f'WARNING: {message}\n--allow-partial-checkpoint is set: running anyway',
          file=sys.stderr)
    return model, match
