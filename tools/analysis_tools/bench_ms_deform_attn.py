"""Multi-scale deformable attention on CPU: mmcv's PyTorch fallback vs ours.

Times ``mmcv.ops.multi_scale_deform_attn.multi_scale_deformable_attn_pytorch``
(the CPU path of ``MultiScaleDeformableAttention``) and
``projects.codetr.ops.ms_deform_attn_cpu.multi_scale_deformable_attn_cpu`` in the
same process on the same inputs, interleaved repeat by repeat so that both see
the same machine load. Default shapes: R50 Deformable-DETR encoder
self-attention for a 512x512 input (strides 8..64), batch 2, 8 heads of 32
dims, 4 levels, 4 points, one query per value position::

    python tools/analysis_tools/bench_ms_deform_attn.py --repeats 10 --json msda.json
    python tools/analysis_tools/bench_ms_deform_attn.py --threads 1

Reports wall-clock and process CPU time (median and min-max) for the forward
(no grad) and forward+backward passes, the speed-ups, the max abs errors of
both float32 implementations against a float64 evaluation of mmcv's fallback
and against each other, and the bytes each keeps saved for backward.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
from mmcv.ops import multi_scale_deform_attn as mmcv_msda

ROOT = Path(__file__).resolve().parents[2]
Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_fast_module() -> ModuleType:
    """Loads projects/codetr/ops/ms_deform_attn_cpu.py by path (no package import needed)."""
    path = ROOT / "projects" / "codetr" / "ops" / "ms_deform_attn_cpu.py"
    spec = importlib.util.spec_from_file_location("_bench_ms_deform_attn_cpu", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mmcv_fallback() -> Callable:
    """mmcv's pure-PyTorch function, even when our dispatcher is installed over it."""
    fn = mmcv_msda.multi_scale_deformable_attn_pytorch
    return getattr(fn, "_codetr_fast_msda_original", fn)


def make_inputs(args: argparse.Namespace, dtype: torch.dtype = torch.float32) -> Inputs:
    """Encoder-like inputs: local offsets (sigma 2 px) around a reference point per query."""
    gen = torch.Generator().manual_seed(args.seed)
    shapes = [(-(-args.img // s), -(-args.img // s)) for s in args.strides]  # ceil division
    num_keys = sum(h * w for h, w in shapes)
    num_queries = args.queries or num_keys
    num_levels, bs, heads = len(shapes), args.batch, args.heads
    value = torch.randn(bs, num_keys, heads, args.head_dims, generator=gen)
    ref = torch.rand(bs, num_queries, 1, 1, 1, 2, generator=gen)
    offsets = 2.0 * torch.randn(bs, num_queries, heads, num_levels, args.points, 2, generator=gen)
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)  # (L, 2)
    locations = ref + offsets / wh[:, None, :]  # (bs, Lq, H, L, P, 2)
    logits = torch.randn(bs, num_queries, heads, num_levels * args.points, generator=gen)
    weights = logits.softmax(-1).view(bs, num_queries, heads, num_levels, args.points)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    return value.to(dtype), spatial_shapes, locations.to(dtype), weights.to(dtype)


def forward_backward(fn: Callable, inputs: Inputs, grad: torch.Tensor) -> list[torch.Tensor]:
    """Runs ``fn`` and its backward; returns the output and the three input gradients."""
    value, shapes, locations, weights = (t.detach().clone() for t in inputs)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    out = fn(leaves[0], shapes, leaves[1], leaves[2])
    out.backward(grad.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def saved_bytes(fn: Callable, inputs: Inputs) -> int:
    """Bytes of the tensors autograd keeps for backward, excluding the inputs' own storage."""
    value, shapes, locations, weights = (t.detach().clone() for t in inputs)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    input_ptrs = {t.untyped_storage().data_ptr() for t in leaves}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in input_ptrs:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(leaves[0], shapes, leaves[1], leaves[2])
    del out
    return sum(storages.values())


def summarize(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": 1e3 * statistics.median(samples),
        "min_ms": 1e3 * min(samples),
        "max_ms": 1e3 * max(samples),
    }


def bench(args: argparse.Namespace) -> dict:
    fast = load_fast_module().multi_scale_deformable_attn_cpu
    impls = {"mmcv": mmcv_fallback(), "ours": fast}
    inputs = make_inputs(args)
    out_shape = (inputs[0].shape[0], inputs[2].shape[1], inputs[0].shape[2] * inputs[0].shape[3])
    grad = torch.randn(out_shape, generator=torch.Generator().manual_seed(args.seed + 1))

    # accuracy: both float32 implementations vs a float64 evaluation of mmcv's fallback
    truth = forward_backward(impls["mmcv"], make_inputs(args, torch.float64), grad.double())
    results = {name: forward_backward(fn, inputs, grad) for name, fn in impls.items()}
    names = ("output", "grad_value", "grad_locations", "grad_weights")
    errors = {
        "ours_vs_mmcv": {
            n: (a - b).abs().max().item()
            for n, a, b in zip(names, results["ours"], results["mmcv"])
        },
        "mmcv_vs_fp64": {
            n: (a.double() - t).abs().max().item()
            for n, a, t in zip(names, results["mmcv"], truth)
        },
        "ours_vs_fp64": {
            n: (a.double() - t).abs().max().item()
            for n, a, t in zip(names, results["ours"], truth)
        },
        "max_abs": {n: t.abs().max().item() for n, t in zip(names, truth)},
    }
    del truth, results

    def run_forward(fn: Callable) -> None:
        with torch.no_grad():
            fn(*inputs)

    def run_forward_backward(fn: Callable) -> None:
        forward_backward(fn, inputs, grad)

    passes = {"forward": run_forward, "forward+backward": run_forward_backward}
    wall = {(p, n): [] for p in passes for n in impls}
    cpu = {(p, n): [] for p in passes for n in impls}
    for i in range(args.warmup + args.repeats):
        order = list(impls.items()) if i % 2 == 0 else list(impls.items())[::-1]
        for pass_name, run in passes.items():
            for name, fn in order:
                w0, c0 = time.perf_counter(), time.process_time()
                run(fn)
                w1, c1 = time.perf_counter(), time.process_time()
                if i >= args.warmup:
                    wall[pass_name, name].append(w1 - w0)
                    cpu[pass_name, name].append(c1 - c0)

    timings = {
        p: {n: {"wall": summarize(wall[p, n]), "cpu": summarize(cpu[p, n])} for n in impls}
        for p in passes
    }
    # ratio of the medians, and the median of the per-repeat ratios (robust to load drifts)
    speedup = {
        p: {
            **{
                kind: timings[p]["mmcv"][kind]["median_ms"] / timings[p]["ours"][kind]["median_ms"]
                for kind in ("wall", "cpu")
            },
            "wall_paired": statistics.median(
                a / b for a, b in zip(wall[p, "mmcv"], wall[p, "ours"])
            ),
        }
        for p in passes
    }
    memory = {name: saved_bytes(fn, inputs) for name, fn in impls.items()}
    return {
        "config": {
            **{k: v for k, v in vars(args).items() if k != "json"},
            "spatial_shapes": inputs[1].tolist(),
            "num_keys": inputs[0].shape[1],
            "num_queries": inputs[2].shape[1],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
        "loadavg_before": list(os.getloadavg()),
        "timings": timings,
        "speedup": speedup,
        "errors": errors,
        "saved_for_backward_bytes": memory,
        "raw_wall_s": {f"{p}/{n}": wall[p, n] for p in passes for n in impls},
    }


def print_report(res: dict) -> None:
    cfg = res["config"]
    print(
        f"MSDA CPU benchmark: batch {cfg['batch']}, img {cfg['img']}, strides {cfg['strides']}, "
        f"shapes {cfg['spatial_shapes']}, keys {cfg['num_keys']}, queries {cfg['num_queries']}, "
        f"heads {cfg['heads']}x{cfg['head_dims']}, points {cfg['points']}"
    )
    print(
        f"torch {cfg['torch']}, {cfg['threads']} thread(s), {cfg['cpu_count']} CPUs, "
        f"{cfg['repeats']} repeats after {cfg['warmup']} warm-up, load average before "
        f"{res['loadavg_before'][0]:.2f}, after {res['loadavg_after'][0]:.2f}"
    )
    header = f"{'pass':<17}{'impl':<6}{'wall median [min, max] ms':>32}{'cpu median ms':>15}"
    print(header)
    print("-" * len(header))
    for p, per_impl in res["timings"].items():
        for name, t in per_impl.items():
            w, c = t["wall"], t["cpu"]
            span = f"{w['median_ms']:9.1f} [{w['min_ms']:8.1f}, {w['max_ms']:8.1f}]"
            print(f"{p:<17}{name:<6}{span:>32}{c['median_ms']:>15.1f}")
        s = res["speedup"][p]
        print(
            f"{p:<17}{'x':<6}{'speed-up wall ' + format(s['wall'], '.2f'):>32}"
            f"{'cpu ' + format(s['cpu'], '.2f'):>15}"
            f"   (median of per-repeat wall ratios {s['wall_paired']:.2f})"
        )
    print("max abs errors (float32):")
    for key, errs in res["errors"].items():
        print(f"  {key:<13}" + "  ".join(f"{n} {v:.2e}" for n, v in errs.items()))
    mem = res["saved_for_backward_bytes"]
    print(
        "saved for backward (excluding inputs): "
        + ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in mem.items())
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--img", type=int, default=512, help="square input size")
    parser.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dims", type=int, default=32)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--queries", type=int, default=0, help="0: one per key (encoder)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="0: torch default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = bench(args)
    res["loadavg_after"] = list(os.getloadavg())
    print_report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
