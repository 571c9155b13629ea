"""Cost of building the auxiliary-query targets: per-image loop vs batched.

``loop`` re-states the official mmdet-2.x procedure (one Python iteration per
image: nonzero, randperm, index, concatenate). ``batched`` is
:func:`projects.codetr.build_aux_query_targets` (one sort over the batch).
Both run on the same candidates in the same process; the share of a full
training step is measured on the same model config in the same run::

    python tools/analysis_tools/bench_aux_targets.py \
        --config configs/co_deformable_detr_synthetic.py --shape 128 128 --batch-size 4
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List, Sequence

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.codetr.models.layers.aux_queries import (  # noqa: E402
    AuxPositives,
    build_aux_query_targets,
)
from tools.analysis_tools.benchmark import build, make_batch  # noqa: E402


def loop_aux_targets(pos: AuxPositives, img_shapes: Sequence, num_classes: int,
                     max_pos_coords: int = 300) -> List[torch.Tensor]:
    """Per-image loop in the style of the official code (reference for timing)."""
    from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
    bs = pos.labels.size(0)
    counts = [int(((pos.labels[i] >= 0) & (pos.labels[i] < num_classes)).sum())
              for i in range(bs)]
    n = max(min(max(counts), max_pos_coords), 9)
    out = []
    for i in range(bs):
        label = pos.labels[i]
        h, w = img_shapes[i][:2]
        factor = pos.coords.new_tensor([w, h, w, h])[None]
        pos_inds = ((label >= 0) & (label < num_classes)).nonzero().squeeze(1)
        neg_inds = (label == num_classes).nonzero().squeeze(1)
        if len(pos_inds) > n:
            pos_inds = pos_inds[torch.randperm(len(pos_inds))[:n].to(label.device)]
        pad = n - len(pos_inds)
        neg_inds = neg_inds[torch.randperm(len(neg_inds))[:pad].to(label.device)]
        inds = torch.cat([pos_inds, neg_inds])
        coord = bbox_xyxy_to_cxcywh(pos.coords[i, inds] / factor)
        target = bbox_xyxy_to_cxcywh(pos.targets[i, inds] / factor)
        weights = torch.zeros_like(coord)
        weights[:len(pos_inds)] = 1
        out.append(torch.cat([coord, target, weights, label[inds, None].float(),
                              pos.feats[i, inds]], 1))
    return out


def fake_positives(bs: int, num_cand: int, num_pos: int, dim: int, num_classes: int,
                   size: int) -> AuxPositives:
    """Candidates like a dense head's: many anchors, few positives."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(bs, num_cand, 2, generator=g) * size
    boxes = torch.cat([xy, xy + 16], -1)
    labels = torch.full((bs, num_cand), num_classes)
    for i in range(bs):
        labels[i, torch.randperm(num_cand, generator=g)[:num_pos]] = 1
    return AuxPositives(boxes, labels, boxes.clone(), torch.randn(bs, num_cand, dim))


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/co_deformable_detr_synthetic.py')
    parser.add_argument('--shape', type=int, nargs=2, default=[128, 128])
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--num-gts', type=int, default=4)
    parser.add_argument('--repeat', type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    model = build(args.config, None, 'cpu')
    model.train()
    bench_args = argparse.Namespace(shape=args.shape, batch_size=args.batch_size,
                                    num_gts=args.num_gts)
    inputs, samples = make_batch(model, bench_args)
    captured = []
    import projects.codetr.models.detectors.co_detr as co_detr_module
    original = co_detr_module.build_aux_query_targets

    def spy(*a, **kw):
        start = time.perf_counter()
        res = original(*a, **kw)
        captured.append((time.perf_counter() - start, a))
        return res

    co_detr_module.build_aux_query_targets = spy
    try:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def train_step():
            loss, _ = model.parse_losses(model.loss(inputs, samples))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_step()  # warm-up
        captured.clear()
        step_s = median_time(train_step, max(3, args.repeat // 5))
        per_step = len(captured) // max(3, args.repeat // 5)
    finally:
        co_detr_module.build_aux_query_targets = original
    shapes = [s.img_shape for s in samples]
    num_classes = model.query_head.num_classes
    calls = [a for _, a in captured[:per_step]]
    batched = sum(median_time(lambda p=p: build_aux_query_targets(p, shapes, num_classes),
                              args.repeat) for p, *_ in calls)
    looped = sum(median_time(lambda p=p: loop_aux_targets(p, shapes, num_classes),
                             args.repeat) for p, *_ in calls)
    print(f'train step ({args.config}, batch {args.batch_size} x {args.shape}): '
          f'{step_s * 1e3:.1f} ms, {per_step} aux heads')
    print(f'aux targets, per-image loop: {looped * 1e3:.2f} ms '
          f'({looped / step_s * 100:.2f}% of the step)')
    print(f'aux targets, batched:        {batched * 1e3:.2f} ms '
          f'({batched / step_s * 100:.2f}% of the step), speed-up {looped / batched:.1f}x')
    # the R50 scale: ~20k ATSS anchors per 800x1333 image, batch 2, 300-query cap
    big = fake_positives(2, 21000, 150, 256, 80, 800)
    big_shapes = [(800, 1333)] * 2
    t_loop = median_time(lambda: loop_aux_targets(big, big_shapes, 80), args.repeat)
    t_batch = median_time(lambda: build_aux_query_targets(big, big_shapes, 80), args.repeat)
    print(f'R50-scale ATSS candidates (2 x 21000): loop {t_loop * 1e3:.2f} ms, '
          f'batched {t_batch * 1e3:.2f} ms')


if __name__ == '__main__':
    main()
