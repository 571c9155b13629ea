"""Latency / throughput / memory benchmark of a detector config, and A/B ratios.

Examples::

    # inference latency of the mission model at 800x1333 on CPU, JSON output
    python tools/analysis_tools/benchmark.py configs/co_deformable_detr_r50_1x_coco.py \
        --mode infer --device cpu --shape 800 1333 --repeat 5 --json work_dirs/bench.json
    # the aux heads cost nothing at inference: Co-DETR vs its aux-free baseline, one run
    python tools/analysis_tools/benchmark.py configs/co_deformable_detr_r50_1x_coco.py \
        --compare configs/deformable_detr_pp_r50_1x_coco.py --mode infer --shape 512 512
    # FLOPs of the inference path (mmengine's counter on CoDETR._forward)
    python tools/analysis_tools/benchmark.py configs/co_deformable_detr_r50_1x_coco.py --flops
    # the exported model in ONNX Runtime (or OpenVINO) against PyTorch predict, alternately
    python tools/analysis_tools/benchmark.py configs/co_deformable_detr_r50_1x_coco.py \
        --backend openvino --precision bf16 --shape 800 1333 --threads 2 --repeat 5
    # Co-DINO-Inst: the mask branch's share of predict and its peak memory at 100, 300 and
    # 1000 detections (chunks of 150), alternately with the query head
    python tools/analysis_tools/benchmark.py configs/co_dino_5scale_r50_1x_coco_instance.py \
        --mask-dets 100 300 1000 --shape 800 1333 --threads 2 --repeat 3
    # PyTorch CPU predict with optimize_for_cpu_inference against the model as loaded,
    # alternately, with the operator profile of both
    python tools/analysis_tools/benchmark.py configs/co_deformable_detr_r50_1x_coco.py \
        --cpu-optim --profile --shape 800 1333 --threads 2 --repeat 5

With ``--compare`` the two models run alternately in the same process, so the
reported ratio (median of per-round ratios) is robust to machine noise.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='optional checkpoint to load')
    parser.add_argument('--compare', help='second config, benchmarked alternately')
    parser.add_argument('--mode', choices=['infer', 'train'], default='infer')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--num-gts', type=int, default=10, help='GT boxes per image (train)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--flops', action='store_true', help='count FLOPs and exit')
    parser.add_argument('--msda-ab', action='store_true',
                        help='A/B the whole step with mmcv\'s CPU deformable attention '
                             '(CODETR_DISABLE_FAST_MSDA=1) against ours, alternately')
    parser.add_argument('--backend', choices=['pytorch', 'onnxruntime', 'openvino'],
                        help='onnxruntime/openvino: export the inference path to ONNX at '
                             '--shape and time this runtime against PyTorch predict, '
                             'alternately (--mode infer); pytorch: PyTorch alone (the default)')
    parser.add_argument('--onnx', help='with --backend: an exported file to use instead '
                        '(by default the graph is exported with export_onnx\'s --target)')
    parser.add_argument('--target', choices=['onnxruntime', 'openvino', 'native'],
                        help='with --backend: the export\'s arrangement of the deformable '
                        'attention (default: the backend\'s; native: the codetr::MSDeformAttn '
                        'operator, needs tools/misc/build_native_ops.py)')
    parser.add_argument('--precision', choices=['fp32', 'bf16', 'fp16', 'int8'],
                        default='fp32',
                        help='with --backend openvino: its compute precision; int8 (either '
                        'backend): the export quantised by tools/deployment/quantize.py\'s '
                        'functions, calibrated on 4 random images (latency only; --onnx: '
                        'an INT8 file)')
    parser.add_argument('--raw', action='store_true',
                        help='with --backend: export the raw outputs (last decoder layer\'s '
                             'class logits and boxes) and print their largest difference '
                             'from PyTorch before timing')
    parser.add_argument('--cpu-optim', action='store_true',
                        help='time PyTorch predict with optimize_for_cpu_inference (conv+BN '
                             'folding, channels-last, one-pass sampling locations) against the '
                             'model as loaded, alternately')
    parser.add_argument('--profile', action='store_true',
                        help='print the top operators (self CPU time) of one step of each '
                             'PyTorch variant')
    parser.add_argument('--profile-rows', type=int, default=12,
                        help='with --profile: number of operators listed')
    parser.add_argument('--mask-dets', type=int, nargs='+', metavar='N',
                        help='a config with a detector-level mask branch: time the query '
                             'head (backbone to soft-NMS) and the mask branch on N '
                             'detections, alternately, and measure the mask branch\'s peak '
                             'memory (CPU: resident-set high-water mark over the call)')
    parser.add_argument('--json', help='write the results here')
    return parser.parse_args(argv)


def build(config: str, checkpoint: Optional[str], device: str) -> torch.nn.Module:
    """Model of ``config`` on ``device``; no pretrained download without a checkpoint."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    register_all_modules()
    cfg = Config.fromfile(config)
    if cfg.get('custom_imports'):
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu')
    return model.to(device)


def make_batch(model: torch.nn.Module, args: argparse.Namespace, seed: int = 0,
               raw: bool = False):
    """Random images with random GT boxes, run through the data preprocessor (``raw``: the
    uint8 images as loaded, before it)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    h, w = args.shape
    inputs, samples = [], []
    num_classes = getattr(getattr(model, 'query_head', None), 'num_classes', 80)
    for _ in range(args.batch_size):
        inputs.append(torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8))
        xy = torch.rand(args.num_gts, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(args.num_gts, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 8
        gt = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                          labels=torch.randint(0, num_classes, (args.num_gts, ), generator=g))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             scale_factor=(1.0, 1.0)))
        sample.gt_instances = gt
        samples.append(sample)
    if raw:
        return inputs
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
    return data['inputs'], data['data_samples']


def make_step(model: torch.nn.Module, args: argparse.Namespace) -> Callable[[], None]:
    """One inference or training iteration as a closure."""
    import copy
    inputs, samples = make_batch(model, args)
    if args.mode == 'infer':
        model.eval()

        def step():
            with torch.no_grad():
                model.predict(inputs, copy.deepcopy(samples))
        return step
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        losses = model.loss(inputs, samples)
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def make_backend_step(model: torch.nn.Module, args: argparse.Namespace) -> Callable[[], None]:
    """The exported model on ``args.backend`` with the same pixels as :func:`make_step`
    (with ``args.raw`` the raw-output graph, compared with PyTorch once first)."""
    import tempfile

    from projects.codetr.deploy import CoDETRDeployModel, export_onnx
    from projects.codetr.deploy.backend_model import _Runner
    images = torch.stack(make_batch(model, args, raw=True)).float()  # BGR pixels
    deploy = CoDETRDeployModel(model.eval(), raw=args.raw)
    onnx_file = args.onnx
    if onnx_file is None:
        onnx_file = str(Path(tempfile.mkdtemp()) / 'model.onnx')
        start = time.perf_counter()
        target = args.target or args.backend
        if target == 'native':
            from projects.codetr.ops.native import native_library
            native_library(args.backend, required=True)
        export_onnx(deploy, images, onnx_file, target=target)
        print(f'exported {onnx_file} (arranged for {target}) in '
              f'{time.perf_counter() - start:.0f} s')
        if args.precision == 'int8':
            from projects.codetr.deploy.quantize import QUANTIZERS, quantize
            g = torch.Generator().manual_seed(1)
            calib = [images[:1].numpy()] + [
                (torch.rand(1, *images.shape[1:], generator=g) * 255).numpy()
                for _ in range(3)]
            fp32_file = onnx_file
            onnx_file = str(Path(fp32_file).with_name('model_int8')) + QUANTIZERS[args.backend][1]
            start = time.perf_counter()
            kept = quantize(args.backend, fp32_file, calib, onnx_file)
            print(f'quantised to INT8 ({len(kept)} layers kept fp32) in '
                  f'{time.perf_counter() - start:.0f} s')
    runner = _Runner(onnx_file, args.backend, threads=torch.get_num_threads(),
                     precision=args.precision)
    batch = images.numpy()
    if args.raw:
        with torch.no_grad():
            ref = [t.numpy() for t in deploy(images)]
        ours = runner(batch)
        for name, a, b in zip(deploy.output_names, ref, ours):
            print(f'{args.backend} ({args.precision}) vs PyTorch, {name} {tuple(a.shape)}: '
                  f'max |diff| {abs(a - b).max():.2e}')
    return lambda: runner(batch)


def print_profile(step: Callable[[], None], name: str, rows: int = 12) -> None:
    """Top operators by self CPU time of one call of ``step``."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f'profile of {name}:')
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows))


def timed(step: Callable[[], None], device: str) -> float:
    """Wall time of one call, synchronised on CUDA."""
    if device == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def summary(times: List[float], batch_size: int) -> Dict[str, float]:
    """Median, spread and throughput of a list of step times (s)."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    median = statistics.median(times)
    return dict(median_s=median, p25_s=q[0], p75_s=q[2], min_s=min(times), max_s=max(times),
                rel_spread=(q[2] - q[0]) / median, images_per_s=batch_size / median,
                repeats=len(times))


def peak_memory_mb(device: str) -> float:
    """Peak CUDA allocation, or peak resident memory of this process on CPU."""
    if device == 'cuda':
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb(field: str = 'VmRSS') -> float:
    """This process's resident set (``VmRSS``) or its high-water mark (``VmHWM``), MB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'{field} not in /proc/self/status')


def peak_memory_of(call: Callable[[], object]) -> float:
    """Peak memory (MB) that ``call`` adds on top of what is allocated before it.

    CPU: freed heap is returned to the system (``malloc_trim``), the resident-set
    high-water mark is reset (``/proc/self/clear_refs``) and read after the call. CUDA:
    ``torch.cuda.max_memory_allocated`` over the call.
    """
    if torch.cuda.is_available() and torch.cuda.memory_allocated() > 0:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    import ctypes
    import gc
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    before = _rss_mb()
    call()
    return _rss_mb('VmHWM') - before


def synthetic_detections(num: int, shape: List[int], num_classes: int, device: str,
                         seed: int = 0):
    """``num`` detections of random boxes (sides 2-50 % of the image), labels and scores."""
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    size = torch.rand(num, 2, generator=g) * 0.48 + 0.02
    wh = size * torch.tensor([w, h])
    xy = torch.rand(num, 2, generator=g) * (torch.tensor([w, h]) - wh)
    return InstanceData(bboxes=torch.cat([xy, xy + wh], 1).to(device),
                        labels=torch.randint(0, num_classes, (num, ), generator=g).to(device),
                        scores=torch.rand(num, generator=g).sort(descending=True)[0].to(device))


def mask_branch_cost(model: torch.nn.Module, args: argparse.Namespace) -> Dict:
    """Latency share and peak memory of the detector-level mask branch (``--mask-dets``).

    The query head (backbone, encoder, decoder, soft-NMS) runs on a random image; the mask
    branch then runs on ``N`` synthetic detections of that image for each ``N`` (the count is
    exact; a trained model's soft-NMS output would vary), alternately with the query head.
    Reports, per ``N``: the mask branch's median time and its share of the whole predict,
    its peak memory, the size of its output (bool masks at the image size, which grows with
    ``N`` whatever the chunking) and the rest (the working memory, which chunking keeps
    flat), the number of chunks and how often the semantic branch ran.
    """
    if getattr(model, 'mask_head', None) is None:
        raise SystemExit(f'--mask-dets: {args.config} has no detector-level mask_head')
    model.eval()
    inputs, samples = make_batch(model, args)
    num_classes = model.query_head.num_classes
    calls = {'semantic': 0}
    semantic = model.mask_head.forward_semantic

    def counted(feat):
        calls['semantic'] += 1
        return semantic(feat)
    model.mask_head.forward_semantic = counted

    def query_head():
        return model.query_head.predict(model.extract_feat(inputs), samples, rescale=True,
                                        return_maps=True)

    with torch.no_grad():
        _, maps = query_head()

        def mask_step(num):
            dets = synthetic_detections(num, args.shape, num_classes, args.device)
            return lambda: model.predict_masks(maps, [dets], samples, rescale=True)

        steps = {'query head': query_head}
        steps.update({num: mask_step(num) for num in args.mask_dets})
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times = {name: [] for name in steps}
        for _ in range(args.repeat):  # alternately
            for name, step in steps.items():
                times[name].append(timed(step, args.device))
        chunk = model.mask_test_cfg.get('mask_chunk_size', 150)
        h, w = args.shape
        query_s = statistics.median(times['query head'])
        rows = []
        for num in args.mask_dets:
            calls['semantic'] = 0
            peak = peak_memory_of(mask_step(num))
            mask_s = statistics.median(times[num])
            output_mb = num * h * w / 2**20  # bool masks
            rows.append(dict(detections=num, mask_branch_s=mask_s,
                             share_of_predict=mask_s / (mask_s + query_s),
                             peak_memory_mb=peak, output_masks_mb=output_mb,
                             working_memory_mb=peak - output_mb,
                             chunks=-(-num // chunk), semantic_branch_calls=calls['semantic']))
    model.mask_head.forward_semantic = semantic
    print(f'mask branch of {Path(args.config).stem} on {args.device}, '
          f'{h}x{w}, {torch.get_num_threads()} threads; query head (backbone to soft-NMS): '
          f'median {query_s:.2f} s')
    print(f'  {"dets":>5} {"mask s":>7} {"share":>6} {"peak MB":>8} {"output MB":>9} '
          f'{"working MB":>10} {"chunks":>6} {"semantic":>8}')
    for r in rows:
        print(f'  {r["detections"]:5d} {r["mask_branch_s"]:7.2f} {r["share_of_predict"]:6.1%} '
              f'{r["peak_memory_mb"]:8.0f} {r["output_masks_mb"]:9.0f} '
              f'{r["working_memory_mb"]:10.0f} {r["chunks"]:6d} '
              f'{r["semantic_branch_calls"]:8d}')
    return dict(config=args.config, shape=list(args.shape), device=args.device,
                threads=torch.get_num_threads(), query_head_s=query_s, mask_branch=rows)


def count_flops(model: torch.nn.Module, args: argparse.Namespace) -> Dict[str, str]:
    """FLOPs / params of the inference path via mmengine's counter (needs _forward)."""
    from mmengine.analysis import get_model_complexity_info
    model.eval()
    inputs, _ = make_batch(model, args)
    with torch.no_grad():
        info = get_model_complexity_info(model, inputs=(inputs, ), show_table=False,
                                         show_arch=False)
    return dict(flops=info['flops_str'], params=info['params_str'], shape=list(args.shape))


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: CUDA is not available on this machine')
    model = build(args.config, args.checkpoint, args.device)
    if args.mask_dets:
        result = mask_branch_cost(model, args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2))
        return result
    if args.flops:
        result = dict(config=args.config, **count_flops(model, args))
        print(json.dumps(result, indent=2))
        return result
    steps = {args.config: make_step(model, args)}
    if args.backend == 'pytorch':
        args.backend = None
    if args.precision in ('bf16', 'fp16') and args.backend != 'openvino':
        raise SystemExit(f'--precision {args.precision} is an option of --backend openvino')
    if args.precision == 'int8' and not args.backend:
        raise SystemExit('--precision int8 is an option of --backend onnxruntime|openvino')
    if (args.backend or args.cpu_optim) and (args.mode != 'infer' or args.compare
                                             or args.msda_ab):
        raise SystemExit('--backend/--cpu-optim time inference alone, without '
                         '--compare/--msda-ab')
    if args.backend and args.cpu_optim:
        raise SystemExit('--backend and --cpu-optim are exclusive (both compare against '
                         'the PyTorch model as loaded)')
    if args.target and not args.backend:
        raise SystemExit('--target is an option of --backend onnxruntime|openvino')
    if args.backend:
        args.compare = f'{args.backend} ({args.precision})'
        steps[args.compare] = make_backend_step(model, args)
    elif args.cpu_optim:
        import copy

        from projects.codetr.deploy import optimize_for_cpu_inference
        args.compare = 'optimize_for_cpu_inference'
        steps[args.compare] = make_step(optimize_for_cpu_inference(copy.deepcopy(model)), args)
    elif args.msda_ab:
        if args.compare:
            raise SystemExit('--msda-ab and --compare are exclusive')
        fast = steps[args.config]

        def mmcv_fallback():
            os.environ['CODETR_DISABLE_FAST_MSDA'] = '1'
            try:
                fast()
            finally:
                os.environ.pop('CODETR_DISABLE_FAST_MSDA')
        args.compare = 'mmcv CPU deformable attention'
        steps[args.compare] = mmcv_fallback
    elif args.compare:
        other = build(args.compare, args.checkpoint if args.mode == 'infer' else None,
                      args.device)
        if args.checkpoint is None:  # same weights where names agree
            other.load_state_dict(model.state_dict(), strict=False)
        steps[args.compare] = make_step(other, args)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    if args.profile:
        for name, step in steps.items():
            if name != args.compare or args.cpu_optim:
                print_profile(step, name, args.profile_rows)
    times = {name: [] for name in steps}
    for _ in range(args.repeat):  # alternate: both see the same machine state
        for name, step in steps.items():
            times[name].append(timed(step, args.device))
    result = dict(mode=args.mode, device=args.device, shape=args.shape,
                  batch_size=args.batch_size, threads=torch.get_num_threads(),
                  gpu=torch.cuda.get_device_name() if args.device == 'cuda' else None,
                  peak_memory_mb=peak_memory_mb(args.device),
                  results={name: summary(t, args.batch_size) for name, t in times.items()})
    if args.compare:
        ratios = [a / b for a, b in zip(times[args.config], times[args.compare])]
        result['ratio'] = summary(ratios, 1)
        result['ratio'].pop('images_per_s')
    print(f"{args.mode} on {args.device}, batch {args.batch_size} x {args.shape}, "
          f"{result['threads']} threads")
    for name, res in result['results'].items():
        print(f"  {name}: median {res['median_s'] * 1e3:.1f} ms "
              f"(IQR {res['p25_s'] * 1e3:.1f}-{res['p75_s'] * 1e3:.1f}), "
              f"{res['images_per_s']:.2f} img/s")
    if args.compare:
        r = result['ratio']
        print(f"  ratio {Path(args.config).stem} / {Path(args.compare).stem}: "
              f"median {r['median_s']:.3f} (IQR {r['p25_s']:.3f}-{r['p75_s']:.3f})")
    print(f"  peak memory {result['peak_memory_mb']:.0f} MB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
