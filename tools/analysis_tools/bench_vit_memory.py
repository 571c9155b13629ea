"""Peak memory of one ViT-L Co-DINO training step: activation checkpointing and fused attention.

Arms: the ViT's per-block activation checkpointing off/on x attention with explicit logits
(the official ``xattn=False``: every global block materialises heads x tokens^2 logits and
their softmax) or ``scaled_dot_product_attention`` (no materialised logits). Each arm runs in
a fresh process (peak RSS cannot be reset inside one): build the model of ``--config``
(random weights), then one forward + backward at ``--shape``; it reports the process peak
RSS and the step's increment over the RSS before it. The arms alternate in one run::

    python tools/analysis_tools/bench_vit_memory.py --shape 512 512

On a GPU the same flags give CUDA peak memory (``--device cuda``).
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.analysis_tools.bench_with_cp_memory import _rss_mib  # noqa: E402
from tools.analysis_tools.benchmark import build, make_batch  # noqa: E402

ARMS = {'no checkpointing, explicit logits': (False, False),
        'no checkpointing, fused attention': (False, True),
        'checkpointing, explicit logits': (True, False),
        'checkpointing, fused attention': (True, True)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config',
                        default=str(ROOT / 'configs' / 'co_dino_5scale_vit_large_coco.py'))
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--num-gts', type=int, default=10)
    parser.add_argument('--arms', nargs='+', default=list(ARMS), choices=list(ARMS))
    parser.add_argument('--repeats', type=int, default=1, help='runs per arm (alternating)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child(args: argparse.Namespace) -> dict:
    """One process, one arm: one measured forward + backward."""
    torch.set_num_threads(2)
    checkpointing, fused = ARMS[args.child]
    model = build(args.config, None, args.device)
    model.backbone.use_act_checkpoint = checkpointing
    for block in model.backbone.blocks:
        block.attn.use_sdpa = fused
    model.train()
    inputs, samples = make_batch(model, args, seed=1)
    before = _rss_mib()
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    start = time.perf_counter()
    losses = model.loss(inputs, samples)
    total = sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if 'loss' in k)
    total.backward()
    seconds = time.perf_counter() - start
    if args.device.startswith('cuda'):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    h, w = args.shape
    tokens = (h // 16) * (w // 16)
    logits_mib = 16 * tokens * tokens * 4 / 2**20  # one global block's fp32 logits, 16 heads
    return dict(arm=args.child, peak_mib=peak, step_mib=peak - before, seconds=seconds,
                tokens=tokens, global_logits_mib=logits_mib)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)))
        return {}
    results = {arm: [] for arm in args.arms}
    for _ in range(args.repeats):
        for arm in args.arms:
            cmd = [sys.executable, __file__, '--child', arm, '--config', args.config,
                   '--shape', *map(str, args.shape), '--batch-size', str(args.batch_size),
                   '--num-gts', str(args.num_gts), '--device', args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            results[arm].append(record)
            print(f"{arm}: peak {record['peak_mib']:.0f} MiB, step +{record['step_mib']:.0f} "
                  f"MiB, {record['seconds']:.1f} s", flush=True)
    first = results[args.arms[0]][0]
    print(f'{Path(args.config).name}, {args.batch_size} x {args.shape[0]}x{args.shape[1]} '
          f'({first["tokens"]} tokens; one global block\'s logits {first["global_logits_mib"]:.0f}'
          f' MiB), {args.device}:')
    base = min(r['step_mib'] for r in results[args.arms[0]])
    summary = {}
    for arm in args.arms:
        step = min(r['step_mib'] for r in results[arm])
        peak = min(r['peak_mib'] for r in results[arm])
        summary[arm] = dict(step_mib=step, peak_mib=peak, seconds=min(
            r['seconds'] for r in results[arm]))
        print(f'  {arm:36s} step +{step:6.0f} MiB (x{step / base:.2f}), peak {peak:.0f} MiB, '
              f'{summary[arm]["seconds"]:.1f} s')
    if args.json:
        Path(args.json).write_text(json.dumps(dict(shape=args.shape, arms=summary), indent=2))
    return summary


if __name__ == '__main__':
    main()
