"""Accuracy per training budget: Co-DETR against its aux-free baseline over several seeds.

Trains every arm with every seed on the synthetic dataset (same data, schedule and
hyper-parameters; only the seed and the arm's own model change), then writes

- ``aux_budget.md``: mean +- sample standard deviation of val box mAP (and mAP@50) at each
  evaluation, the training seconds behind it, and the final AP per training second;
- ``aux_budget.json``: every run's curve and the aggregates;
- ``aux_budget.png``: mAP against iteration and against training wall-clock, with error bars.

::

    python tools/analysis_tools/compare_aux_budget.py --seeds 0 1 2 --out-dir work_dirs/aux_budget
    python tools/analysis_tools/compare_aux_budget.py --seeds 0 1 2 --skip-train  # tabulate only
    # seed 0 of Co-DETR is make demo's run (same config, data and seed): take it as it is
    python tools/analysis_tools/compare_aux_budget.py --take-run co_detr 0 work_dirs/demo
    # the paper's ablations: aux heads without aux queries, K=1 (ATSS only)
    python tools/analysis_tools/compare_aux_budget.py --arms no_pos_coord atss_only --seeds 0 1

Training seconds are the logged iteration times summed over the iterations (validation and
checkpointing excluded), so the two arms' costs compare on the same footing. The paper's claim
is that the auxiliary heads make the DETR learn faster; the table reports whichever way it goes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[2]

SYNTHETIC = 'configs/co_deformable_detr_synthetic.py'

#: arm key -> (label, config, override). Every arm shares data, schedule and optimiser settings;
#: an override (config text appended to ``_base_ = config``) changes only the model. The
#: variants are the paper's ablations that this CPU can afford (see the README).
ARMS = {
    'co_detr': ('Co-DETR (K=2: Faster R-CNN + ATSS)', SYNTHETIC, ''),
    'baseline': ('Deformable-DETR++ (no aux)', 'configs/deformable_detr_pp_synthetic.py', ''),
    'no_pos_coord': ('Co-DETR, aux heads without aux queries', SYNTHETIC,
                     'model = dict(with_pos_coord=False)\n'),
    'atss_only': ('Co-DETR (K=1: ATSS)', SYNTHETIC,
                  'model = dict(rpn_head=None, roi_head=None, query_head=dict(num_co_heads=1),\n'
                  '             train_cfg=[_base_.model.train_cfg[0],\n'
                  '                        _base_.model.train_cfg[2]],\n'
                  '             test_cfg=[_base_.model.test_cfg[0], _base_.model.test_cfg[2]])\n'),
}
DEFAULT_ARMS = ['co_detr', 'baseline']


def arm_config(arm: str, out_dir: Path) -> Path:
    """The config file that trains ``arm``: the shipped config itself, or, for a variant, a
    two-line config inheriting it written to ``out_dir/<arm>/<arm>.py``."""
    _, config, override = ARMS[arm]
    if not override:
        return ROOT / config
    path = out_dir / arm / f'{arm}.py'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"_base_ = '{ROOT / config}'\n{override}")
    return path


def val_curve(work_dir: Path) -> List[Dict[str, float]]:
    """Every validation of a run: ``iter``, ``mAP``, ``mAP_50`` and ``train_s``.

    ``train_s`` sums the logged (window-averaged) iteration times over the iterations trained
    before that validation. Reads every ``<timestamp>/vis_data/scalars.json`` of the work dir
    (a resumed run has several), in time order.

    Raises:
        FileNotFoundError: If the work dir has no logged scalars.
    """
    files = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    if not files:
        raise FileNotFoundError(f'{work_dir}: no */vis_data/scalars.json (did the run train?)')
    points: List[Dict[str, float]] = []
    last_iter, train_s = 0, 0.0
    for scalars in files:
        for line in scalars.read_text().splitlines():
            rec = json.loads(line)
            if 'coco/bbox_mAP' in rec:
                points.append(dict(iter=last_iter, mAP=rec['coco/bbox_mAP'],
                                   mAP_50=rec['coco/bbox_mAP_50'], train_s=round(train_s, 1)))
            elif 'iter' in rec and 'time' in rec:
                if rec['iter'] > last_iter:
                    train_s += rec['time'] * (rec['iter'] - last_iter)
                last_iter = rec['iter']
    return points


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(runs: Dict[int, List[Dict[str, float]]]) -> List[Dict[str, float]]:
    """Per evaluation iteration reached by every seed: mean/std of mAP, mAP@50 and train_s."""
    common = set.intersection(*(set(p['iter'] for p in pts) for pts in runs.values()))
    rows = []
    for it in sorted(common):
        at = [next(p for p in pts if p['iter'] == it) for pts in runs.values()]
        row = dict(iter=it, n=len(at))
        for key in ('mAP', 'mAP_50', 'train_s'):
            row[key], row[f'{key}_std'] = mean_std([p[key] for p in at])
        rows.append(row)
    return rows


def markdown_table(agg: Dict[str, List[Dict[str, float]]], labels: Dict[str, str]) -> str:
    """Table with one row per evaluation and, per arm, mAP / mAP@50 (mean +- std) and seconds."""
    arms = list(agg)
    head = ['iteration'] + [f'{labels[a]}: mAP / mAP@50 (train s)' for a in arms]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    iters = sorted({row['iter'] for rows in agg.values() for row in rows})
    for it in iters:
        cells = [str(it)]
        for a in arms:
            row = next((r for r in agg[a] if r['iter'] == it), None)
            cells.append('-' if row is None else
                         f'{row["mAP"]:.3f} ± {row["mAP_std"]:.3f} / {row["mAP_50"]:.3f} ± '
                         f'{row["mAP_50_std"]:.3f} ({row["train_s"]:.0f} s)')
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', '| arm | seeds | final mAP | final mAP@50 | train s | mAP per 1000 train s |',
              '|---|---|---|---|---|---|']
    for a in arms:
        if not agg[a]:
            continue
        last = agg[a][-1]
        lines.append(f'| {labels[a]} | {last["n"]} | {last["mAP"]:.3f} ± {last["mAP_std"]:.3f} '
                     f'| {last["mAP_50"]:.3f} ± {last["mAP_50_std"]:.3f} '
                     f'| {last["train_s"]:.0f} | {1000 * last["mAP"] / last["train_s"]:.3f} |')
    return '\n'.join(lines)


def plot(agg: Dict[str, List[Dict[str, float]]], labels: Dict[str, str], out_file: Path,
         title: str) -> None:
    """Two panels: mAP against iteration and against training seconds, +- 1 std bars."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, rows in agg.items():
        if not rows:
            continue
        maps = [r['mAP'] for r in rows]
        stds = [r['mAP_std'] for r in rows]
        n = rows[-1]['n']
        axes[0].errorbar([r['iter'] for r in rows], maps, yerr=stds, marker='o', capsize=3,
                         label=f'{labels[arm]} (n={n})')
        axes[1].errorbar([r['train_s'] for r in rows], maps, yerr=stds,
                         xerr=[r['train_s_std'] for r in rows], marker='o', capsize=3,
                         label=f'{labels[arm]} (n={n})')
    for ax, xlabel in zip(axes, ('iteration', 'training seconds (2 CPU cores)')):
        ax.set_xlabel(xlabel)
        ax.set_ylabel('val box mAP (mean ± std over seeds)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=120)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', default='work_dirs/aux_budget')
    parser.add_argument('--data-root', default='data/synthetic',
                        help='synthetic dataset; generated as make demo does if missing')
    parser.add_argument('--arms', nargs='+', default=DEFAULT_ARMS, choices=list(ARMS),
                        help='arms to train and tabulate (default: %(default)s)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=None,
                        help='override max_epochs of every arm (default: the configs\')')
    parser.add_argument('--skip-train', action='store_true',
                        help='only tabulate and plot finished runs (seeds without one are '
                        'left out)')
    parser.add_argument('--take-run', nargs=3, action='append', default=[],
                        metavar=('ARM', 'SEED', 'WORK_DIR'),
                        help='use this finished run (same config, data and seed) for ARM/SEED '
                             'instead of training it, e.g. co_detr 0 work_dirs/demo')
    args = parser.parse_args(argv)
    taken = {}
    for arm, seed, work_dir in args.take_run:
        if arm not in ARMS or not seed.isdigit() or int(seed) not in args.seeds:
            parser.error(f'--take-run {arm} {seed} {work_dir}: expected an arm of '
                         f'{list(ARMS)} and one of --seeds {args.seeds}')
        taken[arm, int(seed)] = ROOT / work_dir
    args.taken = taken
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds {args.seeds}: seeds must differ')
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Train (unless ``--skip-train``), aggregate, write the table, JSON and plot."""
    args = parse_args(argv)
    out_dir = ROOT / args.out_dir
    data = Path(args.data_root)
    py = sys.executable
    if not args.skip_train and not (data / 'annotations' / 'instances_val.json').is_file():
        subprocess.run(['bash', 'tools/demo.sh', '--data-only'], cwd=ROOT, check=True,
                       env=dict(os.environ, DATA=str(data)))
    runs: Dict[str, Dict[int, List[Dict[str, float]]]] = {}
    for arm in args.arms:
        runs[arm] = {}
        for seed in args.seeds:
            work_dir = args.taken.get((arm, seed), out_dir / arm / f'seed{seed}')
            logged = any(Path(work_dir).glob('*/vis_data/scalars.json'))
            if args.skip_train and not logged:
                print(f'{arm} seed {seed}: no run in {work_dir}, left out')
                continue
            if not args.skip_train and (arm, seed) not in args.taken:
                if logged:
                    raise SystemExit(f'{work_dir} already holds a run: remove it to train '
                                     f'{arm} seed {seed} again, or tabulate with --skip-train')
                options = [f'randomness.seed={seed}',
                           f'train_dataloader.dataset.data_root={data}/',
                           f'val_dataloader.dataset.data_root={data}/',
                           f'test_dataloader.dataset.data_root={data}/',
                           f'val_evaluator.ann_file={data}/annotations/instances_val.json',
                           f'test_evaluator.ann_file={data}/annotations/instances_val.json']
                if args.epochs:
                    options.append(f'train_cfg.max_epochs={args.epochs}')
                subprocess.run([py, 'tools/train.py', str(arm_config(arm, out_dir)),
                                '--work-dir', str(work_dir),
                                '--cfg-options', *options],
                               cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            runs[arm][seed] = val_curve(work_dir)
        if not runs[arm]:
            raise SystemExit(f'{arm}: no finished run for seeds {args.seeds} under '
                             f'{out_dir / arm}')
    labels = {arm: ARMS[arm][0] for arm in args.arms}
    agg = {arm: aggregate(per_seed) for arm, per_seed in runs.items()}
    table = markdown_table(agg, labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'aux_budget.md').write_text(table + '\n')
    taken = {f'{arm}/{seed}': str(work_dir) for (arm, seed), work_dir in args.taken.items()}
    result = dict(seeds=args.seeds, taken=taken, runs={a: {str(s): c for s, c in r.items()}
                                          for a, r in runs.items()}, aggregate=agg)
    (out_dir / 'aux_budget.json').write_text(json.dumps(result, indent=1))
    plot(agg, labels, out_dir / 'aux_budget.png',
         'Synthetic shapes, mean ± std over seeds (n per arm): accuracy per training budget')
    print(table)
    print(f'wrote {out_dir / "aux_budget.md"}, .json and .png')
    return result


if __name__ == '__main__':
    main()
