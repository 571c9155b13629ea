"""Plot the training loss and validation bbox mAP of an mmengine work dir against iteration.

Reads every ``WORK_DIR/<timestamp>/vis_data/scalars.json`` (one per run, so a resumed training
contributes its later part), in timestamp order::

    python tools/analysis_tools/plot_curves.py work_dirs/co_deformable_detr_r50_1x_coco \
        --out work_dirs/curves.png

Validation records are placed at the iteration of the last training record logged before them,
which works for both epoch- and iteration-based loops.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def find_scalar_files(work_dir: str | Path) -> list[Path]:
    """Return the ``scalars.json`` files of a work dir, a run dir or the file itself.

    Raises:
        FileNotFoundError: If none exists.
    """
    path = Path(work_dir)
    if path.is_file():
        return [path]
    files = sorted(path.glob('*/vis_data/scalars.json')) or sorted(
        path.glob('vis_data/scalars.json'))
    if not files:
        raise FileNotFoundError(
            f'no mmengine scalar logs under {str(path)!r}: expected '
            f'{str(path / "<timestamp>/vis_data/scalars.json")!r} (written by LocalVisBackend '
            'during tools/train.py)')
    return files


def _val_schedule(scalar_file: Path) -> tuple[int, int | None] | None:
    """Return ``(val_interval, max_iters)`` of an iteration-based run, from its saved config.

    LocalVisBackend saves the run's config next to ``scalars.json``. Epoch-based runs (and runs
    without a readable config) return None.
    """
    config_file = scalar_file.parent / 'config.py'
    if not config_file.is_file():
        return None
    from mmengine.config import Config

    try:
        train_cfg = Config.fromfile(str(config_file), import_custom_modules=False).get(
            'train_cfg') or {}
    except Exception:  # a config that no longer parses: fall back to the log order
        return None
    if 'IterBased' not in str(train_cfg.get('type', '')) and 'max_iters' not in train_cfg:
        return None
    return int(train_cfg.get('val_interval', 1000)), train_cfg.get('max_iters')


def load_curves(files: Sequence[Path], loss_key: str = 'loss',
                metric_key: str = 'coco/bbox_mAP') -> dict[str, dict[int, float]]:
    """Collect loss and metric values by iteration.

    mmengine logs validation scalars with ``step`` = epoch (0 for iteration-based loops), so
    the iteration of a validation record is derived: for iteration-based runs, the first
    multiple of ``val_interval`` (or ``max_iters``) at or after the last logged training
    iteration; for epoch-based runs, the last training iteration logged in that epoch
    (within one logging interval of the epoch end).

    Args:
        files: ``scalars.json`` files in chronological order.
        loss_key: Training scalar to plot (mmengine's total loss is ``'loss'``).
        metric_key: Validation scalar to plot.

    Returns:
        dict: ``{'loss': {iter: value}, 'metric': {iter: value}}``; later runs overwrite
        earlier values at the same iteration.
    """
    loss: dict[int, float] = {}
    metric: dict[int, float] = {}
    for file in files:
        schedule = _val_schedule(file)
        last_iter, last_val = 0, 0
        for line_no, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f'{file}:{line_no}: not a JSON record ({exc})') from exc
            if loss_key in record:
                last_iter = int(record.get('iter', record.get('step', last_iter)))
                loss[last_iter] = float(record[loss_key])
            if metric_key in record:
                at = max(last_iter, last_val + 1)
                if schedule is not None:
                    interval, max_iters = schedule
                    at = -(-at // interval) * interval  # round up to the next val iteration
                    at = min(at, max_iters) if max_iters else at
                metric[at] = float(record[metric_key])
                last_val = at
    return dict(loss=dict(sorted(loss.items())), metric=dict(sorted(metric.items())))


def plot_curves(curves: dict[str, dict[int, float]], out: str | Path, title: str = '',
                loss_key: str = 'loss', metric_key: str = 'coco/bbox_mAP') -> Path:
    """Draw loss (left axis) and metric (right panel) and save the figure.

    Args:
        curves: Output of :func:`load_curves`.
        out: PNG path.
        title: Figure title.
        loss_key: Label of the loss curve.
        metric_key: Label of the metric curve.

    Returns:
        Path: The written file.
    """
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    loss, metric = curves['loss'], curves['metric']
    ax_loss.plot(list(loss), list(loss.values()), lw=1, color='tab:blue')
    ax_loss.set_xlabel('iteration')
    ax_loss.set_ylabel(loss_key)
    ax_loss.set_title(f'training {loss_key}')
    ax_loss.grid(alpha=0.3)
    if metric:
        ax_map.plot(list(metric), list(metric.values()), marker='o', color='tab:orange')
    else:
        ax_map.text(0.5, 0.5, 'no validation results logged', ha='center', va='center',
                    transform=ax_map.transAxes)
    ax_map.set_xlabel('iteration')
    ax_map.set_ylabel(metric_key)
    ax_map.set_title(f'validation {metric_key}')
    ax_map.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='Plot training loss and val mAP curves')
    parser.add_argument('work_dir', help='work dir, run dir or scalars.json file')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--loss-key', default='loss', help='training scalar to plot')
    parser.add_argument('--metric-key', default='coco/bbox_mAP', help='val scalar to plot')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point."""
    args = parse_args(argv)
    files = find_scalar_files(args.work_dir)
    curves = load_curves(files, args.loss_key, args.metric_key)
    if not curves['loss']:
        raise ValueError(f'no {args.loss_key!r} records in {[str(f) for f in files]}')
    out = plot_curves(curves, args.out, title=str(args.work_dir), loss_key=args.loss_key,
                      metric_key=args.metric_key)
    last_metric = list(curves['metric'].values())[-1] if curves['metric'] else None
    print(f'{len(curves["loss"])} loss points, {len(curves["metric"])} {args.metric_key} '
          f'points (last: {last_metric}) -> {out}')
    return out


if __name__ == '__main__':
    main()
