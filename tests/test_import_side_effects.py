"""``import projects.codetr`` registers modules and changes nothing else in mmcv/mmdet/mmengine.

Run in a fresh interpreter: snapshot every module-level attribute of the loaded mmcv, mmdet
and mmengine modules, every registry's contents and mmengine's checkpoint schemes, import the
package, compare. Also runs mmcv's deformable attention on CPU before and after the import
(other models' kernels must not change).
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import mmcv.ops, mmdet.models, mmdet.evaluation, mmdet.datasets, mmengine.runner
    from mmcv.ops import MultiScaleDeformableAttention
    from mmengine.registry import Registry
    from mmengine.runner.checkpoint import CheckpointLoader

    PREFIXES = ('mmcv', 'mmdet', 'mmengine')

    def module_globals():
        for name, mod in list(sys.modules.items()):
            if mod is not None and name.split('.')[0] in PREFIXES:
                for attr, value in list(vars(mod).items()):
                    yield f'{name}.{attr}', value

    def attributes():
        return {key: id(value) for key, value in module_globals()}

    def registries():
        return {f'{value.scope}:{value.name}': {k: id(v) for k, v in value.module_dict.items()}
                for _, value in module_globals() if isinstance(value, Registry)}

    def msda_output():
        torch.manual_seed(0)
        attn = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=2,
                                             num_points=2, batch_first=True)
        shapes = torch.tensor([[6, 5], [3, 3]])
        start = torch.tensor([0, 30])
        query = torch.randn(2, 7, 32, requires_grad=True)
        out = attn(query, value=torch.randn(2, 39, 32), reference_points=torch.rand(2, 7, 2, 2),
                   spatial_shapes=shapes, level_start_index=start)
        out.sum().backward()
        return out.detach(), query.grad

    before_attrs, before_regs = attributes(), registries()
    before_schemes = dict(CheckpointLoader._schemes)
    out_before, grad_before = msda_output()

    import projects.codetr  # noqa: F401

    after_attrs, after_regs = attributes(), registries()
    out_after, grad_after = msda_output()
    changed_attrs = sorted(k for k, v in before_attrs.items()
                           if k in after_attrs and after_attrs[k] != v)
    changed_regs = sorted(f'{reg}.{k}' for reg, entries in before_regs.items()
                          for k, v in entries.items() if after_regs.get(reg, {}).get(k) != v)
    added = sorted(f'{reg}.{k}' for reg, entries in after_regs.items()
                   for k in entries if k not in before_regs.get(reg, {}))
    schemes = sorted(k for k, v in CheckpointLoader._schemes.items()
                     if before_schemes.get(k) is not v)
    print(json.dumps(dict(
        changed_attrs=changed_attrs, changed_regs=changed_regs, added=added, schemes=schemes,
        msda_equal=bool(torch.equal(out_before, out_after)
                        and torch.equal(grad_before, grad_after)))))
''')


def test_import_changes_no_third_party_global():
    proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['msda_equal'], 'mmcv deformable attention changed after the import'
    assert report['changed_regs'] == [], report['changed_regs']
    # no module-level name of mmcv, mmdet or mmengine is rebound (e.g. mmcv's
    # multi_scale_deformable_attn_pytorch, which an earlier version replaced)
    assert report['changed_attrs'] == [], report['changed_attrs']
    # our modules are registered
    for name in ('CoDETR', 'CoDeformDETRHead', 'CoATSSHead', 'CoStandardRoIHead',
                 'CoMultiScaleDeformableAttention', 'CheckedCocoDataset',
                 'CheckedCocoMetric', 'CheckedLoadImageFromFile', 'RandomStateHook',
                 'AtomicCheckpointHook', 'FiniteCheckOptimWrapper', 'SimpleRefineMaskHead',
                 'CoMaskIoUHead', 'LN2d', 'ViT', 'SFP', 'CappedLVISMetric',
                 'ViTLayerDecayOptimizerConstructor'):
        assert any(entry.endswith('.' + name) for entry in report['added']), name
    # the torchvision:// fallback is the only scheme touched, and only without torchvision
    try:
        import torchvision  # noqa: F401
        expected = []
    except ImportError:
        expected = ['torchvision://']
    assert report['schemes'] == expected


def test_public_names_stay_importable_from_the_package():
    """Names importable from ``projects.codetr`` before the package was split into
    models/, ops/, datasets/, ... (scripts and notebooks use them)."""
    import projects.codetr as pkg
    before_layout = [
        'AuxPositives', 'AuxQueryTargets', 'build_aux_query_targets', 'CoATSSHead',
        'CoDeformDETRHead', 'CoDETR', 'CoStandardRoIHead', 'CoDeformableDetrTransformerDecoder',
        'register_torchvision_fallback', 'KEY_RULES', 'ConversionError', 'convert_state_dict',
        'invert_state_dict', 'register_checkpoint_safe_globals',
        'multi_scale_deformable_attn_cpu', 'use_fast_cpu_ms_deform_attn',
        'AtomicCheckpointHook', 'CheckedCocoDataset', 'CheckedLoadImageFromFile',
        'FiniteCheckOptimWrapper', 'RandomStateHook']
    missing = [name for name in before_layout if not hasattr(pkg, name)]
    assert missing == []
    assert set(before_layout) <= set(pkg.__all__)
    from projects.codetr.models.detectors import CoDETR
    assert pkg.CoDETR is CoDETR
