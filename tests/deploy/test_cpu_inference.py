"""optimize_for_cpu_inference / CPUInferenceHook: BN folded into the convolutions and a
channels-last backbone and neck give the detections of the model as loaded."""
import copy
from types import SimpleNamespace

import torch
from conftest import build_model, make_batch
from torch.nn.modules.batchnorm import _BatchNorm

from projects.codetr.deploy import CPUInferenceHook, optimize_for_cpu_inference


def _trained_like(seed=0):
    """Tiny model with non-trivial BN statistics and affine parameters."""
    model = build_model(seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
    return model.eval()


def test_same_detections_bn_folded_channels_last():
    model = _trained_like()
    fast = optimize_for_cpu_inference(copy.deepcopy(model))
    assert not any(isinstance(m, _BatchNorm) for m in fast.backbone.modules())
    assert any(isinstance(m, _BatchNorm) for m in model.backbone.modules())
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # two images of different sizes: the padded-batch (masked) path as well
    inputs, samples = make_batch(model, [[(4, 4, 40, 30, 1)], [(8, 8, 30, 50, 2)]],
                                 [(64, 80), (48, 96)])
    with torch.no_grad():
        ref = model.predict(inputs, copy.deepcopy(samples))
        ours = fast.predict(inputs, copy.deepcopy(samples))
    for a, b in zip(ref, ours):
        a, b = a.pred_instances, b.pred_instances
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(b.bboxes, a.bboxes, rtol=0, atol=1e-3)


def test_hook_applies_on_cpu_only():
    model = _trained_like()
    CPUInferenceHook().before_test(SimpleNamespace(model=model))
    assert not any(isinstance(m, _BatchNorm) for m in model.backbone.modules())

    class OnGPU(torch.nn.Module):  # reports a CUDA parameter without needing a GPU
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1),
                                                torch.nn.BatchNorm2d(4))

        def parameters(self, recurse=True):
            yield torch.empty(0, device='meta')

    gpu = OnGPU().eval()
    CPUInferenceHook().before_test(SimpleNamespace(model=gpu))
    assert isinstance(gpu.backbone[1], _BatchNorm)
