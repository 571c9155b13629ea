"""The native deformable-attention operator (``codetr::MSDeformAttn``, projects/codetr/ops/csrc)
in ONNX Runtime and OpenVINO: values against mmcv's reference, errors, the ``--target native``
graph end to end (detection twins with PyTorch), the fallback without the libraries and the
build script (tools/misc/build_native_ops.py, run by make install)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_cfg, perturbed_model
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

from projects.codetr.ops import native

REPO_ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = REPO_ROOT / 'configs' / 'co_deformable_detr_synthetic.py'
INPUTS = ['value', 'spatial_shapes', 'level_start_index', 'sampling_locations',
          'attention_weights']
BACKENDS = ('onnxruntime', 'openvino')


class _Op(torch.nn.Module):
    def forward(self, *inputs):
        return native.MSDeformAttnNative.apply(*inputs)


def _inputs(shapes, queries, batch, heads, dims, points, seed=0):
    """mmcv's argument layout; locations reach 0.1 past each border (zero padding there)."""
    g = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.long)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    levels = len(shapes)
    value = torch.rand(batch, int(spatial.prod(1).sum()), heads, dims, generator=g)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=g) * 1.2 - 0.1
    weights = torch.rand(batch, queries, heads, levels, points, generator=g)
    weights = weights.flatten(-2).softmax(-1).view_as(weights)
    return value, spatial, start, locations, weights


@pytest.fixture(scope='module')
def op_graph(tmp_path_factory):
    """One-node graph with all axes but the last ones dynamic."""
    path = tmp_path_factory.mktemp('msda') / 'op.onnx'
    dynamic = {'value': [0, 1, 2, 3], 'spatial_shapes': [0], 'level_start_index': [0],
               'sampling_locations': [0, 1, 2, 3, 4], 'attention_weights': [0, 1, 2, 3, 4]}
    torch.onnx.export(_Op(), _inputs([(3, 4), (2, 2)], 5, 1, 2, 4, 2), str(path),
                      input_names=INPUTS, output_names=['output'], opset_version=17,
                      dynamic_axes={k: {i: f'{k}_{i}' for i in v} for k, v in dynamic.items()},
                      custom_opsets={native.DOMAIN: 1}, dynamo=False)
    return path


def _runners(path):
    """{backend: callable(list of arrays) -> output} with the native libraries loaded."""
    import onnxruntime as ort
    import openvino as ov
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.register_custom_ops_library(str(native.native_library('onnxruntime', True)))
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    core = ov.Core()
    core.add_extension(str(native.native_library('openvino', True)))
    compiled = core.compile_model(core.read_model(str(path)), 'CPU',
                                  {'INFERENCE_PRECISION_HINT': 'f32'})
    return {'onnxruntime': lambda a: session.run(None, dict(zip(INPUTS, a)))[0],
            'openvino': lambda a: compiled(a)[0]}


CASES = {
    # odd sizes: 1x1 and 1-wide levels, 3 heads of 5 dims, 3 points, batch 2
    'tiny': ([(6, 7), (3, 1), (1, 4), (1, 1)], 11, 2, 3, 5, 3),
    # one R50 encoder layer at 800x1333: 22223 values and queries, 8 heads of 32, 4 points
    'r50_800x1333': ([(100, 167), (50, 84), (25, 42), (13, 21)], 22223, 1, 8, 32, 4),
}


@pytest.mark.parametrize('case', CASES)
def test_values_match_mmcv_reference(op_graph, case):
    """Both runtimes within 1e-5 of mmcv's reference (computed in float64), at R50 shapes and
    tiny ones."""
    inputs = _inputs(*CASES[case])
    ref = multi_scale_deformable_attn_pytorch(
        inputs[0].double(), inputs[1], inputs[3].double(), inputs[4].double()).numpy()
    arrays = [t.numpy() for t in inputs]
    for backend, run in _runners(op_graph).items():
        out = run(arrays)
        assert out.shape == ref.shape, backend
        assert np.abs(out - ref).max() <= 1e-5, backend
    # the tolerance tells formulas apart: locations off by 1% differ by far more
    shifted = multi_scale_deformable_attn_pytorch(
        inputs[0].double(), inputs[1], inputs[3].double() * 1.01, inputs[4].double())
    assert np.abs(shifted.numpy() - ref).max() > 1e-3


def test_all_out_of_map_points_give_zero(op_graph):
    value, spatial, start, locations, weights = _inputs([(4, 4)], 3, 1, 1, 2, 2)
    locations[..., 0] = -0.5  # 2 pixels left of a 4-wide map: no corner inside
    for backend, run in _runners(op_graph).items():
        out = run([t.numpy() for t in (value, spatial, start, locations, weights)])
        assert np.array_equal(out, np.zeros((1, 3, 2), np.float32)), backend


def test_bad_shapes_are_errors_naming_the_input(op_graph):
    inputs = [t.numpy() for t in _inputs([(3, 4), (2, 2)], 5, 1, 2, 4, 2)]
    inputs[4] = inputs[4][:, :, :, :1]  # attention_weights with 1 level of 2
    for run in _runners(op_graph).values():
        with pytest.raises(Exception, match=r'attention_weights must be \(1, 5, 2, 2, 2\)'):
            run(inputs)
    inputs = [t.numpy() for t in _inputs([(3, 4), (2, 2)], 5, 1, 2, 4, 2)]
    inputs[2] = np.array([0, 13])  # level 1 would read past the 16 value rows
    for run in _runners(op_graph).values():
        with pytest.raises(Exception, match='level 1 of size 2x2 starting at value row 13'):
            run(inputs)


@pytest.fixture(scope='module')
def native_export(tmp_path_factory):
    """The synthetic-config model (perturbed weights), exported with --target native."""
    from projects.codetr.deploy import CoDETRDeployModel, export_onnx
    model = perturbed_model(load_cfg(SYNTHETIC))
    path = export_onnx(CoDETRDeployModel(model), torch.zeros(1, 3, 128, 128),
                       tmp_path_factory.mktemp('native') / 'model.onnx', dynamic=True,
                       target='native')
    return model, path


def test_native_graph_contents(native_export):
    import onnx

    from projects.codetr.deploy import check_onnx_graph
    _, path = native_export
    ops = check_onnx_graph(path)
    assert ops['MSDeformAttn'] == 4 and 'GridSample' not in ops  # 2 encoder + 2 decoder
    model = onnx.load(str(path))
    assert {p.key: p.value for p in model.metadata_props} == {'codetr_target': 'native'}
    assert {o.domain: o.version for o in model.opset_import}[native.DOMAIN] == 1
    # a custom operator of another domain is still refused
    with pytest.raises(ValueError, match='non-standard operators'):
        check_onnx_graph(path, allowed_custom=())


@pytest.mark.parametrize('backend', BACKENDS)
def test_native_graph_reproduces_pytorch(native_export, backend):
    """Every top-20 PyTorch detection has a twin (and back), through one dynamic graph."""
    sys.path.insert(0, str(REPO_ROOT / 'tests' / 'tools'))
    from test_export_onnx import _predict

    from projects.codetr.deploy.backend_model import _Runner
    from tools.deployment.export_onnx import missing_twins
    model, path = native_export
    runner = _Runner(str(path), backend)
    assert runner.target == 'native'
    g = torch.Generator().manual_seed(4)
    for n, h, w in ((2, 128, 128), (1, 200, 72)):
        raw = [torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)
               for _ in range(n)]
        boxes, scores, labels = runner(torch.stack(raw).float().numpy())
        for i, ref in enumerate(_predict(model, raw)):
            assert not missing_twins(ref, (boxes[i], scores[i], labels[i])), (h, w, i)


def test_without_the_libraries(native_export, tmp_path, monkeypatch, capsys):
    """No library: the native graph is refused by both runtimes and by the export tool, each
    naming how to build it; the standard-operator graph still runs."""
    from projects.codetr.deploy import CoDETRDeployModel, export_onnx
    from projects.codetr.deploy.backend_model import _Runner
    from tools.deployment import export_onnx as export_tool
    model, path = native_export
    monkeypatch.setenv(native.ENV_DIR, str(tmp_path / 'empty'))
    assert native.native_library('openvino') is None
    for backend in BACKENDS:
        with pytest.raises(RuntimeError, match=f'--target native.*{backend} library.*'
                           'build_native_ops.py'):
            _Runner(str(path), backend)
    ckpt = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    out = tmp_path / 'm.onnx'
    assert export_tool.cli([str(SYNTHETIC), str(ckpt), '--out', str(out),
                            '--target', 'native']) == 1
    err = capsys.readouterr().err
    assert 'libcodetr_msda_onnxruntime.so does not exist' in err and '--target onnxruntime' in err
    assert not out.exists()
    standard = export_onnx(CoDETRDeployModel(model), torch.zeros(1, 3, 96, 96),
                           tmp_path / 'standard.onnx', dynamic=True)
    boxes, _, _ = _Runner(str(standard), 'onnxruntime')(np.zeros((1, 3, 96, 96), np.float32))
    assert boxes.shape == (1, 100, 4)


def test_build_script(tmp_path):
    """The libraries make install built are up to date (not rebuilt); without cmake the script
    skips with a message and exit status 0 (1 with --strict), leaving a working install."""
    script = [sys.executable, str(REPO_ROOT / 'tools/misc/build_native_ops.py')]

    def run(*args, **env):
        return subprocess.run([*script, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                              env={'PATH': '/usr/bin:/bin', **env}, timeout=600)

    current = run()
    assert current.returncode == 0, current.stderr
    assert 'up to date' in current.stdout
    for name in native.LIBRARIES.values():
        assert f'{native.native_ops_dir() / name}' in current.stdout
    for args, code in (((), 0), (('--strict', ), 1)):
        skipped = run(*args, PATH='/nonexistent', **{native.ENV_DIR: str(tmp_path)})
        assert skipped.returncode == code, skipped.stderr
        assert 'NOT BUILT (cmake not found' in skipped.stdout
        assert 'standard-operator graphs (--target onnxruntime|openvino) are unaffected' in \
            skipped.stdout
        assert not list(tmp_path.iterdir())
