"""Evaluate a checkpoint on the test split and print the COCO box AP table.

Examples::

    python tools/test.py CONFIG work_dirs/run1/epoch_12.pth
    python tools/test.py CONFIG CKPT --out results.pkl --show-dir vis/
    python tools/test.py CONFIG MODEL.onnx --backend onnxruntime     # or openvino
    bash tools/dist_test.sh CONFIG CKPT 8

Besides mmengine's logs, the metrics are written to ``--metrics-out`` (default
``<work_dir>/test_metrics.json``).

Nothing is evaluated partly or quietly: the checkpoint must fit the config's model (missing,
unexpected or size-mismatched tensors stop the run before inference; ``--allow-partial-checkpoint``
loads what fits and records it in the metrics file), a checkpoint that cannot be read stops with
one line naming it, and every test image is read before inference (missing or undecodable ones
stop the run with their list; ``--skip-bad-images`` leaves them out of inference and evaluation
and lists them in the metrics file).
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so that `projects` and `tools.misc` import

from mmengine.config import DictAction  # noqa: E402

from tools.misc.tool_utils import (  # noqa: E402
    add_allow_partial_argument,
    add_backend_argument,
    check_backend_arguments,
)

_COCO_ORDER = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m',
               'bbox_mAP_l')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (an .onnx file with --backend)')
    add_backend_argument(parser)
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--out', help='dump raw predictions to this .pkl file')
    parser.add_argument('--metrics-out',
                        help='write the metrics JSON here (default: WORK_DIR/test_metrics.json)')
    parser.add_argument('--show-dir',
                        help='save images painted with predictions to this folder')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs, e.g. test_dataloader.batch_size=1')
    add_allow_partial_argument(parser, 'evaluate')
    parser.add_argument('--skip-bad-images', action='store_true',
                        help='leave missing or undecodable test images out of inference and '
                        'evaluation (listed in the metrics file) instead of stopping')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    check_backend_arguments(args)
    if args.allow_partial_checkpoint and args.backend != 'pytorch':
        parser.error('--allow-partial-checkpoint applies to PyTorch checkpoints, not to '
                     f'--backend {args.backend}')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def format_metrics(metrics: dict) -> str:
    """Format evaluation metrics as a two-column text table, COCO box AP first.

    Args:
        metrics: Mapping as returned by ``Runner.test()``.

    Returns:
        str: The table.
    """
    keys = [k for name in _COCO_ORDER for k in metrics if k.endswith('/' + name)]
    keys += [k for k in metrics if k not in keys]
    width = max([len(k) for k in keys] + [6])
    lines = [f'{"metric":<{width}}  value', f'{"-" * width}  -----']
    for key in keys:
        value = metrics[key]
        text = f'{value:.4f}' if isinstance(value, float) else str(value)
        lines.append(f'{key:<{width}}  {text}')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Build the runner, run the test loop and report the metrics.

    Returns:
        dict: The metrics returned by ``Runner.test()`` (the same on every rank).
    """
    args = parse_args(argv)

    from mmengine.dist import is_main_process
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from projects.codetr.utils import read_checkpoint
    from tools.misc.tool_utils import (
        check_dataset_paths,
        check_eval_images,
        check_exported_eval_module,
        load_config,
        setup_modules,
        use_cpu_distributed_if_needed,
    )

    setup_modules()
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    if args.backend == 'pytorch':
        read_checkpoint(args.checkpoint, mmap=True)  # a bad file stops here, in one line

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.backend != 'pytorch':
        # same dataset, pipeline, evaluator and dumps; the exported graph replaces the model
        check_exported_eval_module(cfg, args.backend)
        cfg.model = dict(type='ONNXBackendDetector', onnx_file=args.checkpoint,
                         backend=args.backend, precision=args.precision)
        cfg.load_from = None
        cfg.pop('model_wrapper_cfg', None)
    else:
        # the checkpoint must fit the model (mmengine would load what fits, quietly)
        match_hook = dict(type='CheckpointMatchHook', allow_partial=args.allow_partial_checkpoint,
                          checkpoint=args.checkpoint, config=args.config)
        cfg.custom_hooks = [*cfg.get('custom_hooks', []), match_hook]
        if not args.no_cpu_optim:  # conv + BN folding and channels-last, on CPU only
            cfg.custom_hooks.append(dict(type='CPUInferenceHook'))

    if args.show_dir:
        hooks = cfg.get('default_hooks') or {}
        if 'visualization' not in hooks:
            raise KeyError(f"--show-dir needs default_hooks.visualization in {args.config}, "
                           "e.g. visualization=dict(type='DetVisualizationHook')")
        hooks['visualization']['draw'] = True
        # Absolute, so the hook does not nest it under work_dir/timestamp as mmdet does.
        hooks['visualization']['test_out_dir'] = osp.abspath(args.show_dir)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out {args.out!r}: the dump file must end with .pkl or .pickle')

    check_dataset_paths(cfg, ('test_dataloader',))
    skipped = check_eval_images(cfg, 'test_dataloader', skip=args.skip_bad_images)
    use_cpu_distributed_if_needed(cfg, args.launcher)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))

    metrics = runner.test()
    if is_main_process():
        metrics_out = args.metrics_out or osp.join(cfg.work_dir, 'test_metrics.json')
        os.makedirs(osp.dirname(osp.abspath(metrics_out)), exist_ok=True)
        record = {k: float(v) if isinstance(v, int | float) else v for k, v in metrics.items()}
        partial = runner.message_hub.get_info('checkpoint_match')
        if partial is not None:  # --allow-partial-checkpoint and the checkpoint did not fit
            record['partial_checkpoint'] = dict(partial, checkpoint=args.checkpoint)
        if args.skip_bad_images:
            record['skipped_images'] = dict(count=len(skipped), images=skipped)
        with open(metrics_out, 'w') as f:
            json.dump(record, f, indent=2)
        print(format_metrics(metrics))
        if partial is not None:
            print(f'WARNING: evaluated a partly loaded checkpoint ({partial["num_loaded"]} of '
                  f'{partial["num_model"]} tensors); see "partial_checkpoint" in {metrics_out}')
        if skipped:
            print(f'WARNING: {len(skipped)} unusable test images were left out; see '
                  f'"skipped_images" in {metrics_out}')
        print(f'metrics written to {metrics_out}')
    return metrics


def cli(argv: Sequence[str] | None = None) -> int:
    """``main`` for the command line (refusals: one message, exit 1)."""
    from tools.misc.tool_utils import run_cli
    return run_cli(lambda: main(argv))


if __name__ == '__main__':
    sys.exit(cli())
