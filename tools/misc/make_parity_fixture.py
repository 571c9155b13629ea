"""Copy the official tiny-model outputs that the parity tests need into tests/data.

The official Co-DETR code's own outputs on a tiny Co-Deformable-DETR live in
``../shared/reference/official_parity_a/`` (see its README). The tests must not depend on that
folder, so this script keeps the subset they read (inputs, the converted-weight checkpoint,
detections of the three evaluation paths, last-layer outputs, encoder maps, the RPN/RoI
intermediates and the training losses) in ``tests/data/official_parity_a/``::

    python tools/misc/make_parity_fixture.py [--src ../shared/reference/official_parity_a]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SRC = REPO_ROOT.parent / 'shared' / 'reference' / 'official_parity_a'
DEFAULT_DST = REPO_ROOT / 'tests' / 'data' / 'official_parity_a'

OUTPUT_KEYS = ('last_cls_scores', 'last_bbox_preds', 'det_bboxes', 'det_labels',
               'atss_det_bboxes', 'atss_det_labels', 'roi_det_bboxes', 'roi_det_labels',
               'top20_min_score_gap', 'train_losses_float', 'train_losses_seed1_float',
               'seed_independent_keys')
INTERMEDIATE_KEYS = ('encoder_maps', 'rpn_proposals', 'roi_rois', 'roi_cls_score',
                     'roi_det_bboxes', 'roi_det_labels', 'train_rpn_proposals',
                     'train_sampled_rois', 'train_roi_labels', 'loss_bbox0', 'acc0')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--src', type=Path, default=DEFAULT_SRC)
    parser.add_argument('--dst', type=Path, default=DEFAULT_DST)
    args = parser.parse_args()
    if not (args.src / 'official_outputs_a.pt').is_file():
        raise FileNotFoundError(f'{args.src}: no official_outputs_a.pt (the shared reference '
                                'folder official_parity_a is expected there)')
    load = lambda name: torch.load(args.src / name, weights_only=True)  # noqa: E731
    inputs = load('inputs_a.pt')
    outputs = load('official_outputs_a.pt')
    inter = load('official_intermediates_a.pt')
    fixture = dict(
        inputs={k: inputs[k] for k in ('img', 'img_metas', 'gt_bboxes', 'gt_labels')},
        outputs={k: outputs[k] for k in OUTPUT_KEYS},
        intermediates={k: inter[k] for k in INTERMEDIATE_KEYS},
        source='Sense-X/Co-DETR @2665352 (mmdet 2.25.3, mmcv-full 1.7.2, torch 2.13.0 CPU); '
               'copied from shared/reference/official_parity_a by ' + Path(__file__).name)
    args.dst.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.dst / 'official_outputs.pt')
    shutil.copyfile(args.src / 'official_tiny_perturbed.pth',
                    args.dst / 'official_tiny_perturbed.pth')
    for path in sorted(args.dst.iterdir()):
        print(f'{path.relative_to(REPO_ROOT)}: {path.stat().st_size / 2**20:.2f} MiB')


if __name__ == '__main__':
    main()
