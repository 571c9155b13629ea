"""INT8 (tools/deployment/quantize.py, --precision int8): ONNX Runtime static quantisation
and NNCF for OpenVINO, calibrated on the config's images; the layers kept in fp32; the
precision recorded and enforced by the tools. The AP delta on the demo model is measured by
tools/analysis_tools/bench_int8.py (numbers in docs/benchmarks.md)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import load_cfg, perturbed_model

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / 'tests' / 'tools'))
from test_tools import _run  # noqa: E402

SYNTHETIC = REPO_ROOT / 'configs' / 'co_deformable_detr_synthetic.py'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    from tools.misc.generate_synthetic_coco import generate_split
    root = tmp_path_factory.mktemp('int8_data')
    generate_split(root, 'train', 6, img_size=64, seed=1)
    generate_split(root, 'val', 4, img_size=64, seed=2)
    return root


def _data_options(root):
    return [f'train_dataloader.dataset.data_root={root}/',
            f'test_dataloader.dataset.data_root={root}/',
            f'test_evaluator.ann_file={root}/annotations/instances_val.json',
            'test_dataloader.num_workers=0']


@pytest.fixture(scope='module')
def fp32_graph(tmp_path_factory):
    """The synthetic-config model (perturbed weights), its checkpoint and default export."""
    from projects.codetr.deploy import CoDETRDeployModel, export_onnx
    tmp = tmp_path_factory.mktemp('int8')
    model = perturbed_model(load_cfg(SYNTHETIC))
    torch.save(dict(state_dict=model.state_dict(), meta={}), tmp / 'model.pth')
    path = export_onnx(CoDETRDeployModel(model), torch.zeros(1, 3, 128, 128),
                       tmp / 'model.onnx', dynamic=True)
    return model, path


@pytest.fixture(scope='module')
def ort_int8(fp32_graph, data_root):
    _, path = fp32_graph
    out = path.with_name('model_int8.onnx')
    proc = _run([sys.executable, 'tools/deployment/quantize.py', SYNTHETIC, path,
                 '--calib-images', '4', '--out', out, '--cfg-options',
                 *_data_options(data_root)], timeout=300)
    return out, proc.stdout


def _weight_is_quantized(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Whether the node's weight input comes from a DequantizeLinear."""
    producers = {o: n for n in model.graph.node for o in n.output}
    return any(producers.get(i) is not None and producers[i].op_type == 'DequantizeLinear'
               for i in node.input[1:2])


def test_onnxruntime_int8_graph(fp32_graph, ort_int8):
    """QDQ around the convolutions and matrix products except those kept in fp32; the
    metadata keeps the export's target and records int8."""
    from projects.codetr.deploy.quantize import KEEP_FP32, nodes_kept_fp32
    _, path = fp32_graph
    out, stdout = ort_int8
    assert 'calibration: 4 train images (128x128)' in stdout
    kept = nodes_kept_fp32(path)
    assert f'kept in fp32 ({len(kept)} convolutions/matrix products)' in stdout
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == {'codetr_target': 'onnxruntime', 'codetr_precision': 'int8'}
    compute = [n for n in model.graph.node if n.op_type in ('Conv', 'MatMul', 'Gemm')]
    quantized = {n.name for n in compute if _weight_is_quantized(model, n)}
    assert {n.name for n in compute} - quantized == set(kept)
    assert len(quantized) > 30  # backbone, neck, encoder/decoder projections and FFNs
    for pattern in KEEP_FP32:  # each rule keeps something in this model
        assert any(re.search(pattern, name) for name in kept), pattern


def test_int8_detections_close_to_fp32(fp32_graph, ort_int8, tmp_path, data_root):
    """ONNX Runtime INT8 (and NNCF's OpenVINO IR) keep most of fp32's top detections:
    agreement measured, not equality (INT8 differs by design; its AP on the trained demo
    model: bench_int8.py)."""
    from projects.codetr.deploy.backend_model import _Runner
    from projects.codetr.deploy.quantize import calibration_images, quantize_openvino
    from tools.misc.tool_utils import load_config
    _, path = fp32_graph
    out, _ = ort_int8
    cfg = load_config(str(SYNTHETIC), {'train_dataloader.dataset.data_root': f'{data_root}/'})
    xml = tmp_path / 'model_int8.xml'
    quantize_openvino(path, calibration_images(cfg, 4), xml)
    images = np.random.RandomState(0).rand(2, 3, 128, 128).astype(np.float32) * 255
    fp32 = _Runner(str(path), 'onnxruntime')(images)
    for runner in (_Runner(str(out), 'onnxruntime', precision='int8'),
                   _Runner(str(xml), 'openvino', precision='int8')):
        int8 = runner(images)
        assert np.abs(int8[1] - fp32[1]).max() < 0.02  # scores (measured: 0.003)
        for b in range(2):  # most fp32 top-10 boxes are found again (measured: 8-10)
            top = np.argsort(-fp32[1][b])[:10]
            near = [np.abs(int8[0][b] - fp32[0][b][i]).max(-1).min() < 4.0 for i in top]
            assert sum(near) >= 7
        assert np.abs(int8[1] - fp32[1]).max() > 0  # it is another computation


def test_precision_is_enforced(fp32_graph, ort_int8):
    from projects.codetr.deploy.backend_model import _Runner
    from tools.test import parse_args
    _, path = fp32_graph
    out, _ = ort_int8
    with pytest.raises(ValueError, match='is an INT8 model .* --precision int8'):
        _Runner(str(out), 'onnxruntime')
    with pytest.raises(ValueError, match='is not one: quantise it first'):
        _Runner(str(path), 'openvino', precision='int8')
    from tools.misc.tool_utils import check_backend_arguments
    with pytest.raises(ValueError, match='--precision int8 runs a model quantised'):
        check_backend_arguments(parse_args([str(SYNTHETIC), 'x.pth', '--precision', 'int8']))


def test_quantize_tool_refusals(fp32_graph, tmp_path, capsys):
    from tools.deployment import quantize
    _, path = fp32_graph
    with pytest.raises(ValueError, match='--backend openvino writes a .xml file'):
        quantize.main([str(SYNTHETIC), str(path), '--backend', 'openvino', '--out',
                       str(tmp_path / 'x.onnx')])
    with pytest.raises(ValueError, match='would overwrite the fp32 model'):
        quantize.main([str(SYNTHETIC), str(path), '--out', str(path)])
    with pytest.raises(FileNotFoundError, match='expected an exported .onnx file'):
        quantize.main([str(SYNTHETIC), str(tmp_path / 'missing.onnx'), '--out',
                       str(tmp_path / 'x.onnx')])


def test_native_graph_quantizes_for_onnxruntime(fp32_graph, tmp_path):
    """The calibrator's sessions get the native library while calibrating, then
    onnxruntime.SessionOptions is ONNX Runtime's own again."""
    import onnxruntime

    from projects.codetr.deploy import CoDETRDeployModel, export_onnx
    from projects.codetr.deploy.backend_model import _Runner
    from projects.codetr.deploy.quantize import quantize_onnxruntime
    model, _ = fp32_graph
    native = export_onnx(CoDETRDeployModel(model), torch.zeros(1, 3, 96, 96),
                         tmp_path / 'native.onnx', dynamic=True, target='native')
    original = onnxruntime.SessionOptions
    images = [np.random.RandomState(i).rand(1, 3, 96, 96).astype(np.float32) * 255
              for i in range(2)]
    quantize_onnxruntime(native, images, tmp_path / 'native_int8.onnx')
    assert onnxruntime.SessionOptions is original
    boxes, scores, _ = _Runner(str(tmp_path / 'native_int8.onnx'), 'onnxruntime',
                               precision='int8')(images[0])
    assert boxes.shape == (1, 100, 4) and np.isfinite(scores).all()


def test_test_tool_runs_int8(ort_int8, data_root, tmp_path):
    out, _ = ort_int8
    _run([sys.executable, 'tools/test.py', SYNTHETIC, out, '--backend', 'onnxruntime',
          '--precision', 'int8', '--work-dir', tmp_path, '--metrics-out',
          tmp_path / 'metrics.json', '--cfg-options', *_data_options(data_root)], timeout=300)
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert 0 <= metrics['coco/bbox_mAP'] <= 1
