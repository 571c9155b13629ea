"""Train a detector with mmengine's Runner (mmdetection 3.x conventions).

Examples::

    python tools/train.py configs/co_deformable_detr_r50_1x_coco.py
    python tools/train.py CONFIG --work-dir work_dirs/run1 --amp --resume
    bash tools/dist_train.sh CONFIG 8            # torchrun; gloo on CPU-only machines
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so that `projects` and `tools.misc` import

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the LR by the actual / base batch size (auto_scale_lr)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or (without a value) from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs, e.g. train_cfg.max_epochs=2 '
        'or key="[a,b]" for lists (quotes needed, no spaces)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch (deprecated) passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Build the runner from the config and train."""
    args = parse_args(argv)

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from tools.misc.tool_utils import (
        check_dataset_paths,
        load_config,
        setup_modules,
        use_cpu_distributed_if_needed,
    )

    setup_modules()
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher

    # work_dir priority: CLI > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError('--amp needs a CUDA device (mmengine AmpOptimWrapper supports '
                               'gpu/npu/mlu/musa only); drop --amp on this CPU-only machine')
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP is already enabled in the config.')
        else:
            if cfg.optim_wrapper.get('type') == 'FiniteCheckOptimWrapper':
                print('--amp replaces FiniteCheckOptimWrapper: AMP\'s loss scaler skips steps '
                      'with inf/NaN gradients itself, without naming the loss term.')
                cfg.optim_wrapper.pop('on_nonfinite', None)
                cfg.optim_wrapper.pop('max_consecutive_skips', None)
                cfg.optim_wrapper.pop('check_grad', None)
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        scale_cfg = cfg.get('auto_scale_lr') or {}
        if 'base_batch_size' not in scale_cfg:
            raise KeyError(f'--auto-scale-lr needs `auto_scale_lr = dict(enable=False, '
                           f'base_batch_size=N)` in {args.config}; found '
                           f'auto_scale_lr={scale_cfg!r}')
        cfg.auto_scale_lr.enable = True

    # resume priority: explicit checkpoint > latest checkpoint in work_dir
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint {args.resume!r} does not exist')
        cfg.resume = True
        cfg.load_from = args.resume
    if cfg.get('load_from') and not cfg.get('resume') and not osp.isfile(cfg.load_from):
        if '://' not in cfg.load_from:
            raise FileNotFoundError(
                f'load_from={cfg.load_from!r} in {args.config} does not exist; convert the '
                'official checkpoint with tools/model_converters/official_to_mmdet3.py to '
                'that path (docs/checkpoints.md), or start from the config\'s initialisation '
                'with --cfg-options load_from=None')
    backbone = cfg.model.get('backbone', {})
    if (backbone.get('type') == 'ViT' and not backbone.get('init_cfg')
            and not cfg.get('load_from')):
        print(f'WARNING: {args.config}: the ViT backbone starts from random weights (no '
              'load_from, no backbone init_cfg); the official ViT-L numbers fine-tune the '
              'Objects365 detector', file=sys.stderr)

    if cfg.get('resume'):
        add_resume_check(cfg, args.config)

    loaders = ('train_dataloader',) + (('val_dataloader',) if cfg.get('val_cfg') else ())
    check_dataset_paths(cfg, loaders)
    use_cpu_distributed_if_needed(cfg, args.launcher)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()


def add_resume_check(cfg, config_path: str) -> None:
    """Refuse, before any training step, a resume checkpoint that does not fit the model.

    mmengine resumes with ``strict=False``: a changed model would continue with the tensors
    that do not fit reset to their initialisation. An explicit ``--resume CKPT`` is read
    first, so a corrupt file is reported in one line (``--resume`` alone takes the work dir's
    last complete checkpoint, after ``AtomicCheckpointHook`` has repaired the pointer).
    Fine-tuning with ``load_from`` keeps its partial loading.
    """
    from projects.codetr.utils import read_checkpoint

    checkpoint = cfg.get('load_from')  # None: the work dir's last checkpoint, found later
    if checkpoint and '://' not in checkpoint:
        read_checkpoint(checkpoint, mmap=True)
    cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(
        type='CheckpointMatchHook', checkpoint=checkpoint, config=config_path,
        way_out='A resumed run continues the same model: resume with the config the '
        'checkpoint was trained with, or start a new run from these weights with '
        'load_from=CHECKPOINT (fine-tuning, which loads what fits).')]


def cli(argv: Sequence[str] | None = None) -> int:
    """``main`` for the command line (refusals: one message, exit 1)."""
    from tools.misc.tool_utils import run_cli
    return run_cli(lambda: main(argv))


if __name__ == '__main__':
    sys.exit(cli())
