"""Accuracy per training budget: Co-DETR vs its aux-free baseline, same seed and schedule.

Trains both configs on the synthetic dataset with the config's validation interval,
then writes a markdown table and a PNG of val box mAP against iteration::

    python tools/analysis_tools/compare_aux_budget.py --out-dir work_dirs/aux_budget
    python tools/analysis_tools/compare_aux_budget.py --skip-train --out-dir work_dirs/aux_budget

The paper's claim is that the auxiliary heads make the DETR learn faster; at
this scale the result is reported whichever way it goes.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
RUNS = {
    'Co-DETR (K=2)': 'configs/co_deformable_detr_synthetic.py',
    'Deformable-DETR++ (no aux)': 'configs/deformable_detr_pp_synthetic.py',
}


def val_curve(work_dir: Path) -> List[Tuple[int, float, float]]:
    """(iteration, mAP, mAP@50) of every validation in a work dir, by iteration."""
    points = []
    for scalars in sorted(work_dir.glob('*/vis_data/scalars.json')):
        last_iter = 0
        for line in scalars.read_text().splitlines():
            rec = json.loads(line)
            if 'coco/bbox_mAP' in rec:
                points.append((last_iter, rec['coco/bbox_mAP'], rec['coco/bbox_mAP_50']))
            elif 'iter' in rec:
                last_iter = rec['iter']
    return points


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', default='work_dirs/aux_budget')
    parser.add_argument('--data-root', default='data/synthetic')
    parser.add_argument('--epochs', type=int, default=12)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--skip-train', action='store_true', help='only tabulate and plot')
    parser.add_argument('--reuse-co-detr', metavar='WORK_DIR',
                        help='take the Co-DETR curve from this finished run (e.g. the demo\'s '
                             'work_dirs/demo, same config and seed) instead of training it')
    args = parser.parse_args(argv)
    out_dir = ROOT / args.out_dir
    data = Path(args.data_root)
    py = sys.executable
    if not (data / 'annotations' / 'instances_val.json').is_file():
        subprocess.run([py, 'tools/misc/generate_synthetic_coco.py', '--out-dir', str(data),
                        '--num-train', '400', '--num-val', '100', '--img-size', '128'],
                       cwd=ROOT, check=True)
    curves: Dict[str, List[Tuple[int, float, float]]] = {}
    for name, config in RUNS.items():
        work_dir = out_dir / Path(config).stem
        if args.reuse_co_detr and name.startswith('Co-DETR'):
            work_dir = ROOT / args.reuse_co_detr
        elif not args.skip_train:
            subprocess.run(
                [py, 'tools/train.py', config, '--work-dir', str(work_dir), '--cfg-options',
                 f'randomness.seed={args.seed}', f'train_cfg.max_epochs={args.epochs}',
                 f'train_dataloader.dataset.data_root={data}/',
                 f'val_dataloader.dataset.data_root={data}/',
                 f'val_evaluator.ann_file={data}/annotations/instances_val.json'],
                cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        curves[name] = val_curve(work_dir)

    names = list(curves)
    iters = sorted({it for pts in curves.values() for it, *_ in pts})
    lines = ['| iteration | ' + ' | '.join(f'{n} mAP / mAP@50' for n in names) + ' |',
             '|---' * (len(names) + 1) + '|']
    for it in iters:
        cells = []
        for n in names:
            match = [p for p in curves[n] if p[0] == it]
            cells.append(f'{match[0][1]:.3f} / {match[0][2]:.3f}' if match else '-')
        lines.append(f'| {it} | ' + ' | '.join(cells) + ' |')
    table = '\n'.join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'aux_budget.md').write_text(table + '\n')
    (out_dir / 'aux_budget.json').write_text(json.dumps(curves, indent=2))
    print(table)

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        if curves[n]:
            its, maps, maps50 = zip(*curves[n])
            line, = ax.plot(its, maps, marker='o', label=f'{n} mAP')
            ax.plot(its, maps50, ls='--', color=line.get_color(), label=f'{n} mAP@50')
    ax.set_xlabel('iteration')
    ax.set_ylabel('val box AP')
    ax.set_title('Synthetic shapes: accuracy per training budget')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / 'aux_budget.png', dpi=120)
    print(f'wrote {out_dir / "aux_budget.md"} and {out_dir / "aux_budget.png"}')


if __name__ == '__main__':
    main()
