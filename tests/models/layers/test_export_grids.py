"""While exporting to ONNX the encoder reference points and the two-stage proposals are
built from ``arange`` (shape-generic graph); they must equal mmdet's ``linspace`` versions
bit for bit."""
import pytest
import torch
from mmdet.models.detectors import DeformableDETR
from mmdet.models.layers import DeformableDetrTransformerEncoder

from projects.codetr.models.layers.co_transformer import (
    CoDeformableDetrTransformerEncoder,
    pixel_centres,
)

# non-square levels, a 1 x 1 level (linspace with one step), odd sizes; 60 columns put the
# outermost centres within 0.01 of the border (invalid proposals)
SHAPES = torch.tensor([[13, 60], [7, 30], [4, 5], [1, 1]])


def test_pixel_centres_are_linspace_centres():
    x, y = pixel_centres(torch.tensor(3), torch.tensor(5), 'cpu')
    assert x.tolist() == [0.5, 1.5, 2.5, 3.5, 4.5] * 3
    assert y.tolist() == [0.5] * 5 + [1.5] * 5 + [2.5] * 5


def test_export_reference_points_equal_mmdet(monkeypatch):
    valid_ratios = torch.rand(2, 4, 2, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    ref = DeformableDetrTransformerEncoder.get_encoder_reference_points(
        SHAPES, valid_ratios, 'cpu')
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    ours = CoDeformableDetrTransformerEncoder.get_encoder_reference_points(
        SHAPES, valid_ratios, 'cpu')
    assert torch.equal(ours, ref)


@pytest.fixture
def head():
    from conftest import build_model
    return build_model().query_head.eval()


def test_export_proposals_equal_mmdet(monkeypatch, head):
    num = int(SHAPES.prod(1).sum())
    memory = torch.randn(2, num, head.embed_dims, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = DeformableDETR.gen_encoder_output_proposals(head, memory, None, SHAPES)
        monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
        ours = head.gen_encoder_output_proposals(memory, None, SHAPES)
    assert torch.isinf(ref[1]).any()  # the invalid-proposal branch is exercised
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
