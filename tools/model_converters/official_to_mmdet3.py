"""Convert a published Co-DETR checkpoint to this project's mmdet 3.x layout.

Sources, detected from the keys: official Co-Deformable-DETR and Co-DINO (Sense-X/Co-DETR,
mmdet 2.x; ResNet or Swin-V1 backbones) and the Co-DINO checkpoints of mmdet 3.x's
``projects/CO-DETR`` port (ResNet or mmdet Swin backbones).

Examples::

    # full model (query head + auxiliary heads), checked against the R50 Co-DETR config
    python tools/model_converters/official_to_mmdet3.py co_deformable_detr_r50_1x_coco.pth \\
        work_dirs/co_deformable_detr_r50_1x_coco_mmdet3.pth
    # with the FCN mask head in the RoI head: checked against the mask config
    python tools/model_converters/official_to_mmdet3.py co_deformable_detr_mask_r50_1x_coco.pth \\
        work_dirs/co_deformable_detr_mask_r50_1x_coco_mmdet3.pth
    # query head only, loadable by configs/deformable_detr_pp_r50_1x_coco.py
    python tools/model_converters/official_to_mmdet3.py SRC.pth DST.pth --inference-only
    # Co-DINO Swin-L (official or mmdet 3.x port), checked against its config
    python tools/model_converters/official_to_mmdet3.py co_dino_5scale_swin_large_1x_coco.pth \\
        DST.pth --config configs/co_dino_5scale_swin_l_1x_coco.py

The key tables and the checks live in :mod:`projects.codetr.converters`.
Every official key is renamed or dropped with a reason; an unknown key, a shape/dtype
mismatch against the model built from ``--config`` or a missing key stops the conversion with
the full list of offenders (exit status 1). DST is
``{'state_dict': ..., 'meta': {...provenance...}}`` and loads with mmengine's
``load_checkpoint`` / the config's ``load_from``.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so that `projects` imports

from projects.codetr.converters.co_deformable_detr import (  # noqa: E402
    ConversionError,
    TensorSpec,
    UntrustedCheckpointError,
    build_meta,
    convert_state_dict,
    expected_spec,
    load_official_checkpoint,
)
from projects.codetr.converters.co_dino import LAYOUTS, detect_layout  # noqa: E402

FULL_CONFIG = REPO_ROOT / 'configs' / 'co_deformable_detr_r50_1x_coco.py'
BASELINE_CONFIG = REPO_ROOT / 'configs' / 'deformable_detr_pp_r50_1x_coco.py'
CO_DINO_CONFIG = REPO_ROOT / 'configs' / 'co_dino_5scale_r50_1x_coco.py'
DINO_BASELINE_CONFIG = REPO_ROOT / 'configs' / 'dino_5scale_r50_1x_coco.py'
CO_DINO_SWIN_L_CONFIG = REPO_ROOT / 'configs' / 'co_dino_5scale_swin_l_1x_coco.py'
MASK_CONFIG = REPO_ROOT / 'configs' / 'co_deformable_detr_mask_r50_1x_coco.py'
CO_DINO_INST_CONFIG = REPO_ROOT / 'configs' / 'co_dino_5scale_r50_1x_coco_instance.py'
VIT_CONFIGS = {  # (LVIS, with the mask branch) -> the ViT-L config
    (False, False): REPO_ROOT / 'configs' / 'co_dino_5scale_vit_large_coco.py',
    (False, True): REPO_ROOT / 'configs' / 'co_dino_5scale_vit_large_coco_instance.py',
    (True, False): REPO_ROOT / 'configs' / 'co_dino_5scale_vit_large_lvis.py',
    (True, True): REPO_ROOT / 'configs' / 'co_dino_5scale_vit_large_lvis_instance.py',
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Convert an official Co-DETR (mmdet 2.x) checkpoint to mmdet 3.x keys')
    parser.add_argument('src', help='official checkpoint (.pth), {"state_dict", "meta"} or '
                        'a bare state dict')
    parser.add_argument('dst', help='output checkpoint path')
    parser.add_argument(
        '--inference-only', action='store_true',
        help='drop the auxiliary heads (rpn_head, roi_head, bbox_head) and the aux-query '
        'projections; the result loads into the Deformable-DETR++ baseline config')
    parser.add_argument(
        '--config', default=None,
        help='config whose model the result must load into strictly; with --inference-only '
        'its auxiliary heads are removed first. Default by the detected source: '
        f'{FULL_CONFIG.relative_to(REPO_ROOT)} (--inference-only: '
        f'{BASELINE_CONFIG.relative_to(REPO_ROOT)}) for Co-Deformable-DETR, '
        f'{CO_DINO_CONFIG.relative_to(REPO_ROOT)} (--inference-only: '
        f'{DINO_BASELINE_CONFIG.relative_to(REPO_ROOT)}) or, with a Swin backbone, '
        f'{CO_DINO_SWIN_L_CONFIG.relative_to(REPO_ROOT)} for Co-DINO; with mask keys '
        f'{CO_DINO_INST_CONFIG.relative_to(REPO_ROOT)}; for ViT-L the COCO / LVIS (1203 '
        'classes) detection or instance config (configs/co_dino_5scale_vit_large_*.py); '
        'Objects365 files need the config of their use')
    parser.add_argument(
        '--num-classes', type=int, default=None,
        help='check against the model of --config with this many classes in every head '
        '(model.num_classes), e.g. 365 for an Objects365 detector to be fine-tuned with '
        'load_from (whose class layers then stay at their initialisation). Default: the '
        "config's; for an official ViT-L file of another class count than COCO (80) or LVIS "
        '(1203), that count')
    parser.add_argument(
        '--trust-checkpoint', action='store_true',
        help='load SRC with torch.load(weights_only=False). Unpickling can execute code '
        'stored in the file: use only for checkpoints from a source you trust')
    parser.add_argument('--verbose', action='store_true',
                        help='print every mapped key (dropped keys are always printed)')
    return parser.parse_args(argv)


def model_spec(config: Path, strip_aux: bool = False,
               num_classes: Optional[int] = None) -> Dict[str, TensorSpec]:
    """Shapes and dtypes of the state dict of the model built from ``config``.

    The model is built on the meta device (no memory, no initialisation, no pretrained
    download); a model that cannot be built there is built on the CPU. ``strip_aux``
    removes the auxiliary heads first (the aux-free baseline of the config's model);
    ``num_classes`` sets ``model.num_classes`` (every head).
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules(init_default_scope=True)
    import projects.codetr  # noqa: F401  (registers the Co-DETR modules)

    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    if num_classes is not None:
        cfg.model.num_classes = num_classes
    if strip_aux and cfg.model.get('type') == 'CoDETR':
        cfg.model.update(rpn_head=None, roi_head=None, bbox_head=None)
        cfg.model.query_head.num_co_heads = 0
        for key in ('train_cfg', 'test_cfg'):
            if isinstance(cfg.model.get(key), (list, tuple)):
                cfg.model[key] = [cfg.model[key][0]]
    try:
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
    except (RuntimeError, NotImplementedError):
        model = MODELS.build(cfg.model)
    return expected_spec(model)


def default_config(layout: str, keys: Sequence[str], inference_only: bool,
                   num_classes: Optional[int] = None) -> Path:
    """The config a checkpoint of ``layout`` is checked against without ``--config``
    (``num_classes``: the query head's, 1203 for LVIS)."""
    if layout == 'co_dino_vit':  # Objects365 files (365 classes) need --config
        has_mask = any(k.startswith('mask_head.') for k in keys)
        return VIT_CONFIGS[(num_classes == 1203, has_mask)]
    if layout == 'co_deformable_detr':
        if inference_only:
            return BASELINE_CONFIG
        has_mask = any('.mask_head.' in k for k in keys)  # the FCN mask variant
        return MASK_CONFIG if has_mask else FULL_CONFIG
    if any(k.split('.', 2)[1] in ('patch_embed', 'stages', 'layers')
           for k in keys if k.startswith('backbone.')):
        return CO_DINO_SWIN_L_CONFIG  # aux heads stripped with --inference-only
    if any(k.startswith('mask_head.') for k in keys):  # Co-DINO-Inst (detector-level masks)
        return CO_DINO_INST_CONFIG
    return DINO_BASELINE_CONFIG if inference_only else CO_DINO_CONFIG


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the conversion; returns the process exit status."""
    args = parse_args(argv)
    try:
        state, meta = load_official_checkpoint(args.src, args.trust_checkpoint)
    except (UntrustedCheckpointError, ValueError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    layout = detect_layout(state)
    rules, source = LAYOUTS[layout]
    print(f'loaded {len(state)} tensors from {args.src}: {source} layout')
    cls = state.get('query_head.cls_branches.0.weight')
    found_classes = None if cls is None else int(cls.shape[0])
    config = Path(args.config) if args.config else default_config(
        layout, list(state), args.inference_only, found_classes)
    num_classes = args.num_classes
    if num_classes is None and not args.config and layout == 'co_dino_vit' \
            and found_classes not in (80, 1203):
        num_classes = found_classes  # e.g. the Objects365 detector (365)
    try:
        result = convert_state_dict(state, model_spec(config, args.inference_only, num_classes),
                                    args.inference_only, rules)
    except ConversionError as err:
        print(f'error: {args.src} does not convert to the model of {config}: {err}',
              file=sys.stderr)
        return 1

    for key, reason in result.dropped:
        print(f'dropped {key}: {reason}')
    for note in result.notes:
        print(f'note: {note}')
    if args.verbose:
        for src_key, dst_key in result.mapped:
            print(f'mapped {src_key} -> {dst_key}')
    shown = config.resolve()
    shown = shown.relative_to(REPO_ROOT) if shown.is_relative_to(REPO_ROOT) else shown
    out = dict(state_dict=result.state_dict,
               meta=build_meta(result, args.src, meta, args.inference_only, str(shown)))
    out['meta']['source_layout'] = layout
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, args.dst)
    print(f'{result.summary()}; checked against {config}')
    print(f'saved {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
