"""Official mmdet 2.x checkpoint -> mmdet 3.x layout (converters/co_deformable_detr.py, CLI)."""
import fractions
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BASELINE_CFG, R50_CFG, ROOT, TINY_CFG, build_model, load_cfg, make_batch

from projects.codetr.converters.co_deformable_detr import (
    KEY_RULES,
    ConversionError,
    convert_state_dict,
    expected_spec,
    invert_state_dict,
    load_official_checkpoint,
    match_key,
)

torch.set_num_threads(2)
# copy of ../shared/reference/official_keys_co_deformable_detr_r50.txt (official R50 state dict)
LISTING = ROOT / 'tests' / 'data' / 'official_keys_co_deformable_detr_r50.txt'
TOOL = ROOT / 'tools' / 'model_converters' / 'official_to_mmdet3.py'
TINY_BASELINE_CFG = ROOT / 'tests' / 'configs' / 'deformable_detr_pp_tiny.py'
AUX_PREFIXES = ('rpn_head.', 'roi_head.', 'bbox_head.', 'query_head.transformer.aux_pos_trans',
                'query_head.transformer.pos_feats_', 'query_head.transformer.head_pos_embed')


# copy of ../shared/reference/official_masks_a/official_codeform_mask_tiny_keys.txt (the
# official tiny Co-Deformable-DETR with the FCN mask head in its RoI head)
MASK_LISTING = ROOT / 'tests' / 'data' / 'official_keys_co_deformable_detr_mask_tiny.txt'


def read_listing(listing=LISTING):
    """[(key, shape, dtype)] of an official state dict (default R50), in state-dict order."""
    rows = []
    for line in listing.read_text().splitlines():
        key, shape, dtype = line.split('\t')
        rows.append((key, tuple(eval(shape)), getattr(torch, dtype)))
    return rows


def fake_official(rows, seed=0):
    """Random tensors with the listed shapes and dtypes (int64 BatchNorm counters)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, dtype in rows:
        if dtype.is_floating_point:
            sd[key] = torch.randn(shape, generator=g, dtype=dtype)
        else:
            sd[key] = torch.randint(1, 10_000, shape, generator=g, dtype=dtype)
    return sd


def build_uninitialised(cfg_path):
    """The model of a config without init_weights (we only load weights into it)."""
    from mmdet.registry import MODELS
    cfg = load_cfg(cfg_path)
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


def load_tool():
    """The converter CLI as a module, to call ``main(argv)`` in-process."""
    spec = importlib.util.spec_from_file_location('official_to_mmdet3', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(*args):
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore')
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def rows():
    return read_listing()


@pytest.fixture(scope='module')
def official(rows):
    return fake_official(rows)


@pytest.fixture(scope='module')
def r50():
    return build_uninitialised(R50_CFG)


@pytest.fixture(scope='module')
def tiny():
    return build_model(TINY_CFG).eval()


def test_every_official_key_matches_exactly_one_rule(rows):
    """Every key of the official R50 and mask-variant listings has one rule; every rule is
    used (the FCN mask head's only by the mask listing)."""
    used = {}
    for name, listing in (('r50', rows), ('mask', read_listing(MASK_LISTING))):
        used[name] = set()
        for key, _, _ in listing:
            found = match_key(key)  # raises if ambiguous
            assert found is not None, key
            used[name].add(found[0].official)
    assert used['r50'] | used['mask'] == {r.official for r in KEY_RULES}, 'unused rules'
    assert {r for r in used['mask'] - used['r50']} == {
        r.official for r in KEY_RULES if '.mask_head.' in r.official}
    assert all(r.reason for r in KEY_RULES if r.aux or r.ours is None)


def test_convert_loads_strict_into_r50(official, r50):
    result = convert_state_dict(official, expected_spec(r50))
    assert (len(result.mapped), len(result.dropped), result.notes) == (676, 0, [])
    r50.load_state_dict(result.state_dict, strict=True)
    state = r50.state_dict()
    for src, dst in result.mapped:
        assert torch.equal(state[dst], official[src]), (src, dst)
    assert state['backbone.bn1.num_batches_tracked'].dtype == torch.int64
    assert torch.equal(state['query_head.level_embed'],
                       official['query_head.transformer.level_embeds'])
    assert torch.equal(state['query_head.decoder.layers.3.cross_attn.sampling_offsets.weight'],
                       official['query_head.transformer.decoder.layers.3.attentions.1.'
                                'sampling_offsets.weight'])


def test_inverse_mapping_round_trips(official):
    converted = convert_state_dict(official).state_dict
    back = invert_state_dict(converted)
    assert list(back) == list(official)


def test_unknown_keys_are_all_named(official, r50):
    bad = dict(official)
    bad['query_head.transformer.reference_points.weight'] = torch.zeros(2, 256)
    bad['backbone.layer1.0.conv1x.weight'] = torch.zeros(1)
    with pytest.raises(ConversionError) as info:
        convert_state_dict(bad, expected_spec(r50))
    msg = str(info.value)
    assert 'query_head.transformer.reference_points.weight' in msg
    assert 'backbone.layer1.0.conv1x.weight' in msg
    assert len(info.value.problems) == 2


def test_shape_mismatch_and_missing_key_are_named(official, r50):
    bad = dict(official)
    bad['query_head.cls_branches.2.weight'] = torch.zeros(81, 256)  # 81 classes, not 80
    del bad['query_head.transformer.pos_trans_norm.bias']
    with pytest.raises(ConversionError) as info:
        convert_state_dict(bad, expected_spec(r50))
    problems = info.value.problems
    assert len(problems) == 2
    assert any('query_head.cls_branches.2.weight' in p and '[81, 256]' in p
               and '[80, 256]' in p for p in problems)
    assert any(p.startswith('query_head.pos_trans_norm.bias') for p in problems)


def test_batchnorm_counters(official, r50):
    spec = expected_spec(r50)
    bad = dict(official)
    bad['backbone.bn1.num_batches_tracked'] = torch.tensor(3.0)  # float counter
    with pytest.raises(ConversionError, match='backbone.bn1.num_batches_tracked.*dtype'):
        convert_state_dict(bad, spec)
    counters = [k for k in official if k.endswith('num_batches_tracked')]
    assert len(counters) == 53
    old_style = {k: v for k, v in official.items() if not k.endswith('num_batches_tracked')}
    result = convert_state_dict(old_style, spec)  # pre-counter checkpoints: filled with 0
    assert len(result.notes) == 53
    assert result.state_dict['backbone.layer4.2.bn3.num_batches_tracked'].dtype == torch.int64
    r50.load_state_dict(result.state_dict, strict=True)


def test_inference_only_loads_strict_into_baseline(official):
    baseline = build_uninitialised(BASELINE_CFG)
    result = convert_state_dict(official, expected_spec(baseline), inference_only=True)
    assert len(result.mapped) == 628 and len(result.dropped) == 48
    assert all(key.startswith(AUX_PREFIXES) and reason for key, reason in result.dropped)
    assert not any(k.startswith(AUX_PREFIXES) for k, _ in result.mapped)
    baseline.load_state_dict(result.state_dict, strict=True)


def test_cli_full_conversion_loads_with_mmengine(official, r50, tmp_path):
    from mmengine.runner import load_checkpoint
    src, dst = tmp_path / 'official.pth', tmp_path / 'out' / 'converted.pth'
    meta = dict(CLASSES=('person', 'bicycle'), mmdet_version='2.25.3', epoch=12)
    torch.save(dict(state_dict=official, meta=meta), src)
    proc = run_tool(src, dst)
    assert proc.returncode == 0, proc.stderr
    assert '676 keys mapped, 0 dropped' in proc.stdout
    ckpt = torch.load(dst, map_location='cpu', weights_only=True)  # plain types only
    assert ckpt['meta']['dataset_meta'] == dict(classes=('person', 'bicycle'))
    assert ckpt['meta']['source_mmdet_version'] == '2.25.3'
    assert len(ckpt['meta']['source_sha256']) == 64 and ckpt['meta']['inference_only'] is False
    del ckpt
    with torch.no_grad():
        for p in r50.parameters():
            p.zero_()
    load_checkpoint(r50, str(dst), map_location='cpu', strict=True)
    state = r50.state_dict()
    for src_key, dst_key in convert_state_dict(official).mapped:
        assert torch.equal(state[dst_key], official[src_key]), dst_key


def tiny_official(model):
    """The tiny model's weights in the official (mmdet 2.x) key layout."""
    return invert_state_dict({k: v.clone() for k, v in model.state_dict().items()})


def test_cli_errors_and_trust_flag(tiny, tmp_path, capsys):
    main = load_tool().main
    official = tiny_official(tiny)
    src, dst = tmp_path / 'tiny.pth', tmp_path / 'tiny_mmdet3.pth'
    bad = dict(official, **{'query_head.transformer.not_a_module.weight': torch.zeros(3)})
    bad['query_head.cls_branches.0.bias'] = torch.zeros(7)
    torch.save(dict(state_dict=bad, meta={}), src)
    assert main([str(src), str(dst), '--config', str(TINY_CFG)]) == 1 and not dst.exists()
    err = capsys.readouterr().err
    assert 'query_head.transformer.not_a_module.weight' in err
    assert 'query_head.cls_branches.0.bias' in err and '[7]' in err

    # a pickled object that weights_only refuses: explained, --trust-checkpoint loads it
    torch.save(dict(state_dict=official, meta=dict(ratio=fractions.Fraction(1, 3))), src)
    assert main([str(src), str(dst), '--config', str(TINY_CFG)]) == 1
    err = capsys.readouterr().err
    assert '--trust-checkpoint' in err and 'fractions.Fraction' in err
    assert main([str(src), str(dst), '--config', str(TINY_CFG), '--trust-checkpoint']) == 0
    assert torch.load(dst, weights_only=True)['meta']['checked_against_config'] == str(
        Path('tests/configs/co_deformable_detr_tiny.py'))


def test_bare_and_ddp_state_dicts(tiny, tmp_path):
    official = tiny_official(tiny)
    path = tmp_path / 'bare.pth'
    torch.save({f'module.{k}': v for k, v in official.items()}, path)
    state, meta = load_official_checkpoint(path)
    assert meta == {} and len(state) == len(official)
    result = convert_state_dict(state, expected_spec(tiny))
    assert len(result.state_dict) == len(official)


def test_inference_only_predictions_match_full_model(tiny):
    """Tiny Co-DETR -> official layout -> --inference-only -> tiny baseline: same outputs."""
    baseline = build_model(TINY_BASELINE_CFG, seed=1).eval()
    result = convert_state_dict(tiny_official(tiny), expected_spec(baseline),
                                inference_only=True)
    assert {k.split('.')[0] for k, _ in result.dropped} == {'rpn_head', 'roi_head', 'bbox_head',
                                                          'query_head'}
    baseline.load_state_dict(result.state_dict, strict=True)
    inputs, samples = make_batch(tiny, [[], []], [(96, 128), (80, 112)])
    with torch.no_grad():
        ref = tiny.predict(inputs, [s.clone() for s in samples])
        out = baseline.predict(inputs, [s.clone() for s in samples])
        ref_raw, out_raw = tiny._forward(inputs, samples), baseline._forward(inputs, samples)
    for a, b in zip(ref_raw, out_raw):
        assert torch.equal(a, b)
    for a, b in zip(ref, out):
        for name in ('bboxes', 'scores', 'labels'):
            assert torch.equal(a.pred_instances[name], b.pred_instances[name]), name
