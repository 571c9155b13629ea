"""Copy the official tiny-model outputs that the parity tests need into tests/data.

The official Co-DETR code's own outputs on a tiny Co-Deformable-DETR live in
``../shared/reference/official_parity_a/`` (see its README). The tests must not depend on that
folder, so this script keeps the subset they read (inputs, the converted-weight checkpoint,
detections of the three evaluation paths, last-layer outputs, encoder maps, the RPN/RoI
intermediates and the training losses) in ``tests/data/official_parity_a/``; and, from
``official_masks_a/``, what the mask-variant-A test compares (the FCN mask head's weights, the
ground-truth masks, the two-stage detections with their masks cropped to their extent, the
28x28 mask logits and the training losses) in ``tests/data/official_masks_a/`` (about 1 MB: the
non-mask weights and the images are those of official_parity_a, checked here), plus Co-DINO-Inst's
training stage logits and targets with its official BAR ``loss_mask`` (0.9 MB), and Co-DINO-Inst's
official tiny checkpoint (10 MB) with its detections, masks, mask scores, stage and refined
logits, training proposals and losses (``official_codino_inst.pt``); from ``official_vit_a/``, the
tiny Co-DINO ViT's checkpoint (10 MB) and what its test compares (``tests/data/official_vit_a/``)::

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
DEFAULT_MASKS_DST = REPO_ROOT / 'tests' / 'data' / 'official_masks_a'
DEFAULT_VIT_DST = REPO_ROOT / 'tests' / 'data' / 'official_vit_a'

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
    masks_src = args.src.parent / 'official_masks_a'
    if masks_src.is_dir():
        for out in (make_mask_fixture(masks_src, inputs, DEFAULT_MASKS_DST),
                    make_bar_loss_fixture(masks_src, DEFAULT_MASKS_DST),
                    make_codino_inst_fixture(masks_src, inputs, DEFAULT_MASKS_DST),
                    DEFAULT_MASKS_DST / 'official_codino_inst_tiny.pth'):
            print(f'{out.relative_to(REPO_ROOT)}: {out.stat().st_size / 2**20:.2f} MiB')
    vit_src = args.src.parent / 'official_vit_a'
    if vit_src.is_dir():
        for out in (make_vit_fixture(vit_src, DEFAULT_VIT_DST),
                    DEFAULT_VIT_DST / 'official_codino_vit_tiny.pth'):
            print(f'{out.relative_to(REPO_ROOT)}: {out.stat().st_size / 2**20:.2f} MiB')


def _pack(masks) -> torch.Tensor:
    """(N, H, W) bool/uint8 -> (N, ceil(H*W/8)) uint8 bits."""
    import numpy as np
    flat = np.asarray(masks, dtype=bool).reshape(len(masks), -1)
    return torch.from_numpy(np.packbits(flat, axis=1))


def make_bar_loss_fixture(src: Path, dst: Path) -> Path:
    """Write ``official_codino_inst_bar.pt``: Co-DINO-Inst's training stage logits and targets
    (seed 0) and the official ``loss_mask``. The 63 positives hold 13 distinct (RoI, target)
    rows; those are stored once (``stage_preds``, bit-packed ``stage_targets``) with the
    ``inverse`` index that rebuilds the 63."""
    inter = torch.load(src / 'official_codino_inst_train_intermediates_a.pt', weights_only=True)
    sizes = [p.shape[-1] for p in inter['stage_preds']]
    flat = torch.cat([p.flatten(1) for p in inter['stage_preds']]
                     + [m.flatten(1) for m in inter['stage_mask_targets']], 1)
    unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
    preds, targets, start = [], [], 0
    for size in sizes:
        preds.append(unique[:, start:start + size * size].reshape(-1, 1, size, size).clone())
        start += size * size
    for size in sizes:
        targets.append(_pack(unique[:, start:start + size * size].reshape(-1, size, size) > 0.5))
        start += size * size
    fixture = dict(stage_preds=preds, stage_targets=targets, sizes=sizes, inverse=inverse,
                   loss_mask=float(inter['loss_mask']), loss_weight=1.33 * 4,
                   source='official Co-DINO-Inst tiny, seed 0; copied from '
                          'shared/reference/official_masks_a by ' + Path(__file__).name)
    dst.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, dst / 'official_codino_inst_bar.pt')
    return dst / 'official_codino_inst_bar.pt'


def _mask_extents(out: dict) -> dict:
    """An image's packed official masks as ``masks_shape``, ``mask_extents`` (y0, x0, y1, x1;
    all zero for an empty mask) and ``mask_crops`` (the bits inside each extent)."""
    import numpy as np
    n, h, w = out['masks_shape']
    masks = np.unpackbits(out['masks_packed'].numpy(), axis=1, count=h * w)
    masks = masks.reshape(n, h, w).astype(bool)
    extents, crops = [], []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            extents.append([0, 0, 0, 0])
            crops.append(torch.zeros(0, dtype=torch.uint8))
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        extents.append([y0, x0, y1, x1])
        crops.append(_pack(mask[None, y0:y1, x0:x1])[0])
    return dict(masks_shape=(h, w), mask_extents=torch.tensor(extents), mask_crops=crops)


def make_codino_inst_fixture(src: Path, parity_inputs: dict, dst: Path) -> Path:
    """Write ``official_codino_inst.pt`` and copy ``official_codino_inst_tiny.pth``: variant B.

    The fixture holds, per image, the official detections with their masks (as extents), mask
    scores and mask-IoU predictions; for image 0, the stage and refined logits of 10 RoIs (the
    5 with the largest logits and the first 5); the query head's training proposals with the
    mask losses they give, and the training losses. The images and ground-truth masks are
    official_parity_a's and official_codeform_mask.pt's (checked here).
    """
    load = lambda name: torch.load(src / name, weights_only=True)  # noqa: E731
    inputs = load('inputs_masks_a.pt')
    if not torch.equal(inputs['img'], parity_inputs['img']):
        raise ValueError(f'{src}: the images differ from official_parity_a\'s')
    gt_masks = torch.load(dst / 'official_codeform_mask.pt', weights_only=True)['gt_masks']
    for gt, mask in zip(gt_masks, inputs['gt_masks']):
        if not torch.equal(gt['packed'], _pack(mask.numpy())):
            raise ValueError(f'{src}: the ground-truth masks differ from variant A\'s')
    outputs = load('official_codino_inst_outputs_a.pt')
    inter = load('official_codino_inst_train_intermediates_a.pt')
    per_image = []
    for out in outputs['per_image']:
        per_image.append(dict(det_bboxes=out['det_bboxes'], det_labels=out['det_labels'],
                              **_mask_extents(out), mask_areas=out['mask_areas'],
                              mask_scores=out['mask_scores'],
                              mask_iou_pred=out['mask_iou_pred']))
    first = outputs['per_image'][0]
    refined = first['refined_logits_chunk0']
    largest = refined.flatten(1).abs().amax(1).argsort(descending=True)[:5]
    rows = torch.cat([largest, torch.arange(5)]).unique()
    fixture = dict(
        per_image=per_image,
        logit_rows=rows,
        logit_rois=first['mask_rois'][rows],
        logit_labels=first['det_labels'][rows],
        stage_logits=[t[rows] for t in first['stage_logits_chunk0']],
        refined_logits=refined[rows],
        train_proposals=inter['results_list'],
        mask_iou_targets=inter['mask_iou_targets'],
        loss_mask=float(inter['loss_mask']),
        loss_mask_iou=float(inter['loss_mask_iou']),
        train_losses_float=outputs['train_losses_float'][0],
        seed_independent_keys=outputs['identical_across_seeds_0_1_keys'],
        source='Sense-X/Co-DETR @2665352 (mmdet 2.25.3, mmcv-full 1.7.2, torch 2.13.0 CPU); '
               'copied from shared/reference/official_masks_a by ' + Path(__file__).name)
    dst.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, dst / 'official_codino_inst.pt')
    shutil.copyfile(src / 'official_codino_inst_tiny.pth', dst / 'official_codino_inst_tiny.pth')
    return dst / 'official_codino_inst.pt'


def make_vit_fixture(src: Path, dst: Path) -> Path:
    """Write ``official_codino_vit.pt`` and copy ``official_codino_vit_tiny.pth``: the tiny Co-DINO
    ViT's inputs, backbone / neck maps, rotary tables, last decoder layer, detections of the
    three evaluation paths, training losses and layer-decay parameter groups."""
    load = lambda name: torch.load(src / name, weights_only=True)  # noqa: E731
    inputs = load('inputs_vit_a.pt')
    out = load('official_codino_vit_outputs_a.pt')
    paths = {}
    for name in ('detr', 'one_stage', 'two_stage'):
        res = out[f'simple_test_{name}']
        paths[name] = dict(det_bboxes=res['det_bboxes'], det_labels=res['det_labels'])
    fixture = dict(
        inputs={k: inputs[k] for k in ('img', 'img_metas', 'gt_bboxes', 'gt_labels')},
        backbone_out=out['backbone_out'], neck_outs=out['neck_outs'], rope=out['rope'],
        last_cls_scores=out['last_cls_scores'], last_bbox_preds=out['last_bbox_preds'],
        detections=paths,
        train_losses_float=out['train_losses_float_seed0'],
        seed_independent_keys=out['identical_across_seeds_keys'],
        layer_decay=out['layer_decay'],
        source='Sense-X/Co-DETR @2665352 (mmdet 2.25.3, mmcv-full 1.7.2, torch 2.13.0 CPU); '
               'copied from shared/reference/official_vit_a by ' + Path(__file__).name)
    dst.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, dst / 'official_codino_vit.pt')
    shutil.copyfile(src / 'official_codino_vit_tiny.pth', dst / 'official_codino_vit_tiny.pth')
    return dst / 'official_codino_vit.pt'


def make_mask_fixture(src: Path, parity_inputs: dict, dst: Path) -> Path:
    """Write ``official_codeform_mask.pt``: variant A's weights, inputs and outputs.

    Each detection's pasted mask is kept as its bounding extent (``mask_extents``: y0, x0, y1,
    x1; all zero for an empty mask) and the bits inside it (``mask_crops``).
    """
    load = lambda name: torch.load(src / name, weights_only=True)  # noqa: E731
    ckpt = load('official_codeform_mask_tiny.pth')['state_dict']
    box_ckpt = torch.load(DEFAULT_DST / 'official_tiny_perturbed.pth', weights_only=True)
    box_state = box_ckpt.get('state_dict', box_ckpt)
    for key, value in box_state.items():  # the non-mask weights are official_parity_a's
        if not torch.equal(ckpt[key], value):
            raise ValueError(f'{src}: {key} differs from official_parity_a\'s weights')
    inputs = load('inputs_masks_a.pt')
    if not torch.equal(inputs['img'], parity_inputs['img']):
        raise ValueError(f'{src}: the images differ from official_parity_a\'s')
    outputs = load('official_codeform_mask_outputs_a.pt')
    per_image = []
    for out in outputs['per_image']:
        per_image.append(dict(det_bboxes=out['det_bboxes'], det_labels=out['det_labels'],
                              **_mask_extents(out), mask_areas=out['mask_areas'],
                              mask_logits_28_label=out['mask_logits_28_label']))
    fixture = dict(
        mask_state={k: v for k, v in ckpt.items() if '.mask_head.' in k},
        gt_masks=[dict(packed=_pack(m.numpy()), shape=tuple(m.shape))
                  for m in inputs['gt_masks']],
        per_image=per_image,
        train_losses_float=outputs['train_losses_float'][0],
        seed_independent_keys=outputs['identical_across_seeds_0_1_keys'],
        source='Sense-X/Co-DETR @2665352 (mmdet 2.25.3, mmcv-full 1.7.2, torch 2.13.0 CPU); '
               'copied from shared/reference/official_masks_a by ' + Path(__file__).name)
    dst.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, dst / 'official_codeform_mask.pt')
    return dst / 'official_codeform_mask.pt'


if __name__ == '__main__':
    main()
