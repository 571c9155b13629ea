"""``torchvision://resnet50`` resolves without torchvision, from the hub cache."""
import importlib.util

import pytest
import torch
from mmengine.runner.checkpoint import CheckpointLoader

from projects.codetr.utils.pretrained import register_torchvision_fallback, torchvision_model_urls


def test_resnet50_url_is_known():
    assert torchvision_model_urls()['resnet50'].endswith('/resnet50-0676ba61.pth')


@pytest.mark.skipif(importlib.util.find_spec('torchvision') is not None,
                    reason='torchvision is installed: mmengine resolves torchvision:// itself')
def test_torchvision_prefix_loads_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    cache = tmp_path / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    weights = {'conv1.weight': torch.arange(6.).reshape(1, 1, 2, 3)}
    torch.save(weights, cache / 'resnet50-0676ba61.pth')
    assert register_torchvision_fallback()
    loaded = CheckpointLoader.load_checkpoint('torchvision://resnet50', map_location='cpu')
    assert torch.equal(loaded['conv1.weight'], weights['conv1.weight'])
    with pytest.raises(KeyError, match='unknown torchvision model'):
        CheckpointLoader.load_checkpoint('torchvision://resnet5000')
