"""Co-DINO conversion: the key tables of both sources, the Swin-V1 backbone and the CLI."""
import importlib.util
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / 'tests' / 'data'
TOOL = ROOT / 'tools' / 'model_converters' / 'official_to_mmdet3.py'
TINY_CFG = ROOT / 'tests' / 'configs' / 'co_dino_tiny.py'


def read_listing(name):
    rows = [line.split('\t') for line in (DATA / name).read_text().splitlines()]
    return OrderedDict((k, (tuple(eval(shape)), getattr(torch, dtype)))
                       for k, shape, dtype in rows)


def fake_state(listing, seed=0):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((k, torch.rand(shape, generator=g) if dtype.is_floating_point
                        else torch.zeros(shape, dtype=dtype))
                       for k, (shape, dtype) in listing.items())


def load_tool():
    spec = importlib.util.spec_from_file_location('official_to_mmdet3_codino', TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('name,layout', [
    ('official_keys_co_dino_r50.txt', 'co_dino'),
    ('official_keys_co_dino_tiny.txt', 'co_dino'),
    ('mmdet3_port_keys_co_dino_r50.txt', 'co_dino_mmdet3_port'),
    ('mmdet3_port_keys_co_dino_swin_l.txt', 'co_dino_mmdet3_port'),
    ('official_keys_co_deformable_detr_r50.txt', 'co_deformable_detr'),
])
def test_layout_detection_and_one_rule_per_key(name, layout):
    from projects.codetr.converters import detect_layout, rules_for_layout
    from projects.codetr.converters.co_deformable_detr import match_key
    keys = list(read_listing(name))
    assert detect_layout(keys) == layout
    assert detect_layout([f'module.{k}' for k in keys]) == layout
    rules = rules_for_layout(layout)
    for key in keys:
        assert match_key(key, rules) is not None, key  # exactly one (ambiguity raises)


def swin_v1_names(port_keys):
    """Official Swin-V1 names of mmdet SwinTransformer keys (the inverse renaming)."""
    out = {}
    for key in port_keys:
        v1 = key
        if key.startswith('backbone.'):
            v1 = (key.replace('backbone.stages.', 'backbone.layers.')
                  .replace('.attn.w_msa.', '.attn.').replace('.ffn.layers.0.0.', '.mlp.fc1.')
                  .replace('.ffn.layers.1.', '.mlp.fc2.')
                  .replace('patch_embed.projection', 'patch_embed.proj'))
        out[v1] = key
    return out


def test_official_swin_v1_backbone_converts_like_mmdet():
    """V1 names map to mmdet's; patch-merging weights are reordered as mmdet's own
    swin_converter does (and nothing else changes)."""
    from mmdet.models.backbones.swin import swin_converter

    from projects.codetr.converters import convert_state_dict, rules_for_layout
    port = read_listing('mmdet3_port_keys_co_dino_swin_l.txt')
    v1_to_port = swin_v1_names(port)
    state = fake_state(port)
    official = OrderedDict((v1, state[p]) for v1, p in v1_to_port.items())
    official['query_head.label_embedding.weight'] = official.pop(
        'query_head.dn_generator.label_embedding.weight')
    result = convert_state_dict(official, None, rules=rules_for_layout('co_dino'))
    backbone_v1 = OrderedDict((k[len('backbone.'):], v) for k, v in official.items()
                              if k.startswith('backbone.'))
    expected = swin_converter(backbone_v1)
    for key, value in expected.items():
        assert torch.equal(result.state_dict[key], value), key  # mmdet adds 'backbone.'
    reduction = 'backbone.stages.0.downsample.reduction.weight'
    assert not torch.equal(result.state_dict[reduction], state[reduction])  # reordered
    out, c4 = state[reduction].shape
    c = c4 // 4
    torch.testing.assert_close(  # blocks (0,0),(1,0),(0,1),(1,1) -> 0,2,1,3, channel-major
        result.state_dict[reduction].view(out, c, 4),
        state[reduction].view(out, 4, c)[:, [0, 2, 1, 3]].transpose(1, 2))


def test_cli_converts_official_and_port_tiny_checkpoints(tmp_path, capsys):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    main = load_tool().main
    official = fake_state(read_listing('official_keys_co_dino_tiny.txt'))
    port = OrderedDict((('query_head.dn_generator.label_embedding.weight'
                         if k == 'query_head.label_embedding.weight' else k), v)
                       for k, v in official.items())
    cfg = Config.fromfile(str(TINY_CFG))
    cfg.model.backbone.init_cfg = None
    for name, state in (('official', official), ('port', port)):
        src, dst = tmp_path / f'{name}.pth', tmp_path / f'{name}_ours.pth'
        torch.save(dict(state_dict=state, meta=dict(CLASSES=['a'] * 80)), src)
        assert main([str(src), str(dst), '--config', str(TINY_CFG)]) == 0
        printed = capsys.readouterr().out
        assert ('official Co-DINO' if name == 'official' else 'mmdet 3.x') in printed
        model = MODELS.build(cfg.model)
        load_checkpoint(model, str(dst), strict=True, logger='silent')
        assert torch.equal(model.query_head.dn_query_generator.label_embedding.weight,
                           official['query_head.label_embedding.weight'])
        meta = torch.load(dst, weights_only=True)['meta']
        assert meta['source_layout'] == ('co_dino' if name == 'official'
                                         else 'co_dino_mmdet3_port')
    # --inference-only: the aux heads of the given config are removed before the check
    dst = tmp_path / 'inference.pth'
    assert main([str(tmp_path / 'official.pth'), str(dst), '--config', str(TINY_CFG),
                 '--inference-only']) == 0
    keys = set(torch.load(dst, weights_only=True)['state_dict'])
    assert not any(k.startswith(('rpn_head', 'roi_head', 'bbox_head')) or 'aux_pos' in k
                   for k in keys)
    assert 'query_head.dn_query_generator.label_embedding.weight' in keys


def test_swin_l_config_backbone_matches_the_port_listing():
    """The Swin-L config's backbone at full depth ([2, 2, 18, 2]) has exactly the port's
    backbone keys and shapes (the config matrix trains it with a shortened third stage)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    cfg = Config.fromfile(str(ROOT / 'configs' / 'co_dino_5scale_swin_l_1x_coco.py'))
    backbone_cfg = dict(cfg.model.backbone, init_cfg=None)
    assert list(backbone_cfg['depths']) == [2, 2, 18, 2]
    backbone = MODELS.build(backbone_cfg)
    listing = {k[len('backbone.'):]: shape for k, (shape, _) in
               read_listing('mmdet3_port_keys_co_dino_swin_l.txt').items()
               if k.startswith('backbone.')}
    built = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert built == listing
