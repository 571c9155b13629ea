"""Peak memory of one training step with and without encoder activation checkpointing.

Each measurement runs in a fresh process (peak RSS cannot be reset inside one): build the
model, run one warm-up step, then one measured forward + backward; it reports the process
peak RSS and the step's increment over the RSS before it. Arms alternate (A B A B) in one
run and the saving is computed from the same run::

    python tools/analysis_tools/bench_with_cp_memory.py \\
        --config configs/co_dino_5scale_r50_1x_coco.py --shape 512 512 --with-cp 0 4

On a GPU the same flags give CUDA peak memory (``--device cuda``).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.analysis_tools.benchmark import build, make_batch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config',
                        default=str(ROOT / 'configs' / 'co_dino_5scale_r50_1x_coco.py'))
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--num-gts', type=int, default=10)
    parser.add_argument('--with-cp', type=int, nargs=2, default=[0, 4], metavar=('A', 'B'),
                        help='encoder layers checkpointed in arm A and arm B')
    parser.add_argument('--repeats', type=int, default=2, help='runs per arm (alternating)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--child', type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _rss_mib() -> float:
    """Current resident set size (Linux)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(args: argparse.Namespace) -> dict:
    """One process, one arm: warm-up step, then the measured step."""
    torch.set_num_threads(2)
    model = build(args.config, None, args.device)
    model.query_head.encoder.with_cp = args.child
    model.train()

    def step(seed):
        inputs, samples = make_batch(model, args, seed=seed)
        losses = model.loss(inputs, samples)
        total = sum(sum(v) if isinstance(v, list) else v
                    for k, v in losses.items() if 'loss' in k)
        total.backward()
        model.zero_grad(set_to_none=False)

    step(0)
    before = _rss_mib()
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    start = time.perf_counter()
    step(1)
    seconds = time.perf_counter() - start
    if args.device.startswith('cuda'):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(with_cp=args.child, peak_mib=peak, step_mib=peak - before, seconds=seconds)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    results = {a: [] for a in args.with_cp}
    for _ in range(args.repeats):
        for arm in args.with_cp:
            cmd = [sys.executable, __file__, '--child', str(arm), '--config', args.config,
                   '--shape', *map(str, args.shape), '--batch-size', str(args.batch_size),
                   '--num-gts', str(args.num_gts), '--device', args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            results[arm].append(record)
            print(f"with_cp={arm}: peak {record['peak_mib']:.0f} MiB, step +"
                  f"{record['step_mib']:.0f} MiB, {record['seconds']:.1f} s", flush=True)
    a, b = args.with_cp
    med = {arm: {k: statistics.median(r[k] for r in rs) for k in ('peak_mib', 'step_mib',
                                                                    'seconds')}
           for arm, rs in results.items()}
    print(f'{Path(args.config).name}, {args.batch_size} x {args.shape[0]}x{args.shape[1]}, '
          f'{args.device}, medians of {args.repeats}:')
    for arm in (a, b):
        print(f"  with_cp={arm}: peak {med[arm]['peak_mib']:.0f} MiB, step "
              f"+{med[arm]['step_mib']:.0f} MiB, {med[arm]['seconds']:.1f} s")
    print(f"  with_cp={b} vs {a}: peak x{med[b]['peak_mib'] / med[a]['peak_mib']:.2f}, "
          f"step memory x{med[b]['step_mib'] / med[a]['step_mib']:.2f}, "
          f"time x{med[b]['seconds'] / med[a]['seconds']:.2f}")


if __name__ == '__main__':
    main()
