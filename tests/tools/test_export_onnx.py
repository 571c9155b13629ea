"""ONNX export (tools/deployment/export_onnx.py): inference path only, standard operators;
ONNX Runtime and OpenVINO reproduce PyTorch's ``predict`` and its COCO evaluation
(tools/test.py --backend) and inference outputs (tools/infer.py --backend)."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import build_model, load_cfg, perturbed_model
from reliability_fixtures import log_text, logs_fixture  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_tools import COCO_KEYS, REPO_ROOT, _run  # noqa: E402

SYNTHETIC = REPO_ROOT / 'configs' / 'co_deformable_detr_synthetic.py'
SHAPE = (128, 128)  # what the synthetic test pipeline resizes to


def export_with_tool(config: Path, tmp: Path):
    """A model of ``config`` with perturbed weights (no tied scores), its checkpoint
    ``tmp/model.pth`` and its export ``tmp/model.onnx`` through the tool with its defaults
    (as a user runs it first: dynamic N, H and W, traced at the test pipeline's size).

    Returns:
        tuple: (model in eval mode, onnx file, the tool's stdout).
    """
    model = perturbed_model(load_cfg(config))
    ckpt = tmp / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    onnx_file = tmp / 'model.onnx'
    proc = _run([sys.executable, 'tools/deployment/export_onnx.py', config, ckpt, '--out',
                 onnx_file], timeout=300)
    return model, onnx_file, proc.stdout


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The synthetic config's model, exported by the tool with its defaults."""
    return export_with_tool(SYNTHETIC, tmp_path_factory.mktemp('onnx'))


def test_tool_reports_and_verifies(exported):
    _, onnx_file, stdout = exported
    assert onnx_file.is_file()
    assert 'OK: every PyTorch top-20 detection has an ONNX Runtime twin' in stdout
    assert 'GridSample' in stdout and 'TopK' in stdout and 'ONNX Runtime' in stdout
    # --dynamic: checked at the traced shape and at two images of 3/4 the size
    assert 'dynamic N, H, W' in stdout and '1x3x128x128:' in stdout and '2x3x96x96:' in stdout


def test_graph_is_the_inference_path_in_standard_operators(exported):
    import onnx

    from projects.codetr.deploy import check_onnx_graph
    _, onnx_file, _ = exported
    ops = check_onnx_graph(onnx_file)
    assert ops['GridSample'] == 4 * 4  # 2 encoder + 2 decoder layers x 4 levels
    model = onnx.load(str(onnx_file))
    assert {p.key: p.value for p in model.metadata_props} == {'codetr_target': 'onnxruntime'}
    graph = model.graph
    assert all(n.domain in ('', 'ai.onnx') for n in graph.node)
    names = ' '.join([n.name for n in graph.node] + [i.name for i in graph.initializer])
    for part in ('rpn_head', 'roi_head', 'bbox_head', 'aux_pos_trans', 'head_pos_embed'):
        assert part not in names
    assert 'query_head' in names and 'backbone' in names
    assert [i.name for i in graph.input] == ['images']
    assert [o.name for o in graph.output] == ['boxes', 'scores', 'labels']


def test_check_rejects_training_modules(tmp_path):
    from projects.codetr.deploy import check_onnx_graph

    class WithAux(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rpn_head = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.rpn_head(x)

    path = tmp_path / 'aux.onnx'
    torch.onnx.export(WithAux(), (torch.rand(1, 3, 4, 4), ), str(path), dynamo=False)
    with pytest.raises(ValueError, match='rpn_head'):
        check_onnx_graph(path)


def _predict(model, raw):
    """CoDETR.predict(rescale=False) of uint8 BGR images of one size -> numpy triples."""
    from mmdet.structures import DetDataSample
    shape = tuple(raw[0].shape[-2:])
    samples = [DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape,
                                           scale_factor=(1.0, 1.0))) for _ in raw]
    data = model.data_preprocessor(dict(inputs=raw, data_samples=samples), False)
    with torch.no_grad():
        preds = model.predict(data['inputs'], data['data_samples'], rescale=False)
    return [[p.pred_instances[k].numpy() for k in ('bboxes', 'scores', 'labels')]
            for p in preds]


def test_onnxruntime_reproduces_pytorch_predict(exported):
    """Batch of 2 (dynamic N) against CoDETR.predict(rescale=False) on the same pixels."""
    from tools.deployment.export_onnx import missing_twins
    model, onnx_file, _ = exported
    g = torch.Generator().manual_seed(3)
    raw = [torch.randint(0, 255, (3, *SHAPE), generator=g, dtype=torch.uint8) for _ in range(2)]
    refs = _predict(model, raw)
    session = ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
    # the graph takes the pixels as loaded (BGR, 0-255) and converts/normalises itself
    boxes, scores, labels = session.run(None, {'images': torch.stack(raw).float().numpy()})
    assert boxes.shape == (2, 100, 4) and labels.dtype == np.int64
    for i, ref in enumerate(refs):
        assert not missing_twins(ref, (boxes[i], scores[i], labels[i])), i
    # a twin is not found for a wrong box: the check can fail
    assert missing_twins(refs[0], (boxes[0] + 1.0, scores[0], labels[0]))
    # nor for a high-score detection that only the runtime has (the check is two-way)
    extra = (np.concatenate([boxes[0], [[1.0, 2.0, 30.0, 40.0]]]),
             np.concatenate([scores[0], [0.99]]), np.concatenate([labels[0], [1]]))
    assert [m[:3] for m in missing_twins(refs[0], extra)] == [('extra', 1, pytest.approx(0.99))]


@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_dynamic_height_and_width(exported, backend, logs):
    """One graph (traced at 128x128) runs other sizes, non-square and with 1x1 top levels,
    and reproduces CoDETR.predict at each. Both runtimes read the target the graph was
    arranged for (default onnxruntime); OpenVINO warns, naming --target openvino."""
    from projects.codetr.deploy.backend_model import _Runner
    from tools.deployment.export_onnx import missing_twins
    model, onnx_file, _ = exported
    runner = _Runner(str(onnx_file), backend)
    assert runner.batch is runner.height is runner.width is None
    assert runner.target == 'onnxruntime'
    assert ('--target openvino arranges' in log_text(logs)) == (backend == 'openvino')
    g = torch.Generator().manual_seed(4)
    for n, h, w in ((2, 96, 160), (1, 200, 72), (1, 40, 50)):
        raw = [torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)
               for _ in range(n)]
        boxes, scores, labels = runner(torch.stack(raw).float().numpy())
        assert boxes.shape == (n, 100, 4)
        assert boxes[..., 2].max() <= w and boxes[..., 3].max() <= h
        for i, ref in enumerate(_predict(model, raw)):
            assert not missing_twins(ref, (boxes[i], scores[i], labels[i])), (h, w, i)


def test_static_graph_in_the_backend_model(exported, tmp_path):
    """A graph exported with a fixed size (--static): same detections as the dynamic one at its
    size; an image of any other size is refused, naming how to export (zero padding would
    differ from PyTorch, which masks padding)."""
    from mmdet.structures import DetDataSample

    from projects.codetr.deploy import CoDETRDeployModel, ONNXBackendDetector, export_onnx
    model, dynamic_file, _ = exported
    static_file = export_onnx(CoDETRDeployModel(model), torch.zeros(1, 3, *SHAPE),
                              tmp_path / 'static.onnx')
    static = ONNXBackendDetector(str(static_file))
    dynamic = ONNXBackendDetector(str(dynamic_file))
    assert (static.backend.height, static.backend.width) == SHAPE
    g = torch.Generator().manual_seed(5)

    def samples(shape):
        return [DetDataSample(metainfo=dict(img_shape=shape, scale_factor=(1.0, 1.0)))]

    image = torch.randint(0, 255, (3, *SHAPE), generator=g, dtype=torch.uint8)
    a = static.forward([image], samples(SHAPE))[0].pred_instances
    b = dynamic.forward([image], samples(SHAPE))[0].pred_instances
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
    assert torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match='without --static .* or with --static --shape 100 90'):
        static.forward([image[:, :100, :90]], samples((100, 90)))
    with pytest.raises(ValueError, match='--static --shape 130 128'):
        static.forward([torch.zeros(3, 130, 128, dtype=torch.uint8)], samples((130, 128)))


@pytest.mark.parametrize('tool', ['export', 'test', 'infer'])
def test_exported_path_is_the_query_head_only(exported, val_root, tmp_path, capsys, tool):
    """eval_module='one-stage' / 'two-stage' evaluate an aux head, which is not in the graph:
    the export and the --backend tools refuse instead of reporting the query head."""
    from tools import infer
    from tools import test as test_tool
    from tools.deployment import export_onnx
    _, onnx_file, _ = exported
    ckpt = onnx_file.with_suffix('.pth')
    option = ['--cfg-options', 'model.eval_module=one-stage']
    if tool == 'export':
        code = export_onnx.cli([str(SYNTHETIC), str(ckpt), '--out', str(tmp_path / 'm.onnx'),
                                *option])
    elif tool == 'test':
        ann = f'{val_root}/annotations/instances_val.json'
        code = test_tool.cli([str(SYNTHETIC), str(onnx_file), '--backend', 'onnxruntime',
                              '--work-dir', str(tmp_path / 'w'), *option,
                              f'test_dataloader.dataset.data_root={val_root}/',
                              f'test_evaluator.ann_file={ann}'])
    else:
        code = infer.cli([str(val_root / 'val' / '000000.png'), str(SYNTHETIC), str(onnx_file),
                          '--out-dir', str(tmp_path / 'o'), '--backend', 'onnxruntime', *option])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: model.eval_module='one-stage'" in err and 'query head only' in err
    assert not list(tmp_path.glob('**/*.onnx')) and not (tmp_path / 'o').exists()


def test_openvino_precision_option(exported):
    """--precision reaches OpenVINO's compiled model; other runtimes refuse it."""
    from projects.codetr.deploy.backend_model import _Runner
    from tools.test import parse_args
    _, onnx_file, _ = exported
    fp32 = _Runner(str(onnx_file), 'openvino')
    bf16 = _Runner(str(onnx_file), 'openvino', precision='bf16')
    assert fp32.hint == 'f32'
    # the compiled model's own precision: f32 on CPUs without bf16 support
    assert bf16.hint in ('bf16', 'f32')
    if bf16.hint == 'bf16':  # this machine (AMX): bf16 is a different computation
        image = np.random.RandomState(0).rand(1, 3, *SHAPE).astype(np.float32) * 255
        assert np.abs(fp32(image)[1] - bf16(image)[1]).max() > 1e-4
    with pytest.raises(ValueError, match="needs backend='openvino'"):
        _Runner(str(onnx_file), 'onnxruntime', precision='bf16')
    with pytest.raises(ValueError, match='--precision bf16 is an option of --backend openvino'):
        parse_args([str(SYNTHETIC), str(onnx_file), '--backend', 'onnxruntime',
                    '--precision', 'bf16'])


def test_r50_raw_outputs_agree():
    """Random R50 Co-Deformable-DETR weights: the raw class logits and boxes of the last
    decoder layer from ONNX Runtime and OpenVINO agree with PyTorch to 1e-3 (at 800x1333:
    tools/analysis_tools/benchmark.py --backend ... --raw, numbers in the README)."""
    import tempfile

    from projects.codetr.deploy import CoDETRDeployModel, export_onnx
    from projects.codetr.deploy.backend_model import _Runner
    model = build_model(load_cfg(REPO_ROOT / 'configs' / 'co_deformable_detr_r50_1x_coco.py'),
                        seed=0).eval()
    deploy = CoDETRDeployModel(model, raw=True)
    images = torch.rand(1, 3, 256, 384, generator=torch.Generator().manual_seed(0)) * 255
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(deploy, images, Path(tmp) / 'r50.onnx')
        with torch.no_grad():
            ref = [t.numpy() for t in deploy(images)]
        assert ref[0].shape == (1, 300, 80) and ref[1].shape == (1, 300, 4)
        for backend in ('onnxruntime', 'openvino'):
            for name, a, b in zip(deploy.output_names, ref,
                                  _Runner(str(onnx_file), backend)(images.numpy())):
                assert np.abs(a - b).max() <= 1e-3, (backend, name)


@pytest.fixture(scope='module')
def val_root(tmp_path_factory):
    from tools.misc.generate_synthetic_coco import generate_split
    root = tmp_path_factory.mktemp('onnx_val')
    generate_split(root, 'val', 5, img_size=64, seed=2)
    return root


def _test_tool(model_file, backend, val_root, out_dir):
    ann = f'{val_root}/annotations/instances_val.json'
    _run([sys.executable, 'tools/test.py', SYNTHETIC, model_file, '--backend', backend,
          '--work-dir', out_dir, '--out', out_dir / 'dets.pkl', '--metrics-out',
          out_dir / 'metrics.json', '--cfg-options',
          f'test_dataloader.dataset.data_root={val_root}/', f'test_evaluator.ann_file={ann}',
          'test_dataloader.num_workers=0'], timeout=300)
    return (pickle.loads((out_dir / 'dets.pkl').read_bytes()),
            json.loads((out_dir / 'metrics.json').read_text()))


@pytest.fixture(scope='module')
def pytorch_eval(exported, val_root, tmp_path_factory):
    _, onnx_file, _ = exported
    return _test_tool(onnx_file.with_suffix('.pth'), 'pytorch', val_root,
                      tmp_path_factory.mktemp('pytorch_eval'))


@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_test_tool_backend_matches_pytorch(exported, val_root, pytorch_eval, tmp_path, backend):
    from tools.deployment.export_onnx import missing_twins
    _, onnx_file, _ = exported
    ref_dets, ref_metrics = pytorch_eval
    dets, metrics = _test_tool(onnx_file, backend, val_root, tmp_path / backend)
    assert [d['img_id'] for d in dets] == [d['img_id'] for d in ref_dets]
    for ref, ours in zip(ref_dets, dets):
        # boxes in the original (64 px) frame: the tool undoes the test pipeline's resize
        assert ours['ori_shape'] == (64, 64)
        arrays = [[d['pred_instances'][k].numpy() for k in ('bboxes', 'scores', 'labels')]
                  for d in (ref, ours)]
        assert not missing_twins(*arrays), ref['img_id']
    for key in COCO_KEYS:
        assert metrics[key] == pytest.approx(ref_metrics[key], abs=1e-3), key


def test_infer_tool_backend_matches_pytorch(exported, val_root, tmp_path):
    _, onnx_file, _ = exported
    image = val_root / 'val' / '000001.png'
    records = {}
    for backend, model_file in (('pytorch', onnx_file.with_suffix('.pth')),
                                ('onnxruntime', onnx_file)):
        out = tmp_path / backend
        _run([sys.executable, 'tools/infer.py', image, SYNTHETIC, model_file, '--out-dir', out,
              '--backend', backend, '--score-thr', '0.0'])
        assert (out / '000001.png').is_file()
        records[backend] = json.loads((out / 'detections.json').read_text())['images'][0]
    ref, ours = records['pytorch'], records['onnxruntime']
    assert len(ours['scores']) == len(ref['scores']) == 100
    top = sorted(range(100), key=lambda i: -ref['scores'][i])[:20]
    for i in top:  # detections.json rounds scores to 1e-4 and boxes to 0.01 px
        assert any(ours['labels'][j] == ref['labels'][i]
                   and abs(ours['scores'][j] - ref['scores'][i]) <= 1e-3
                   and max(abs(a - b) for a, b in zip(ours['bboxes'][j], ref['bboxes'][i]))
                   <= 0.5 for j in range(100)), i


def test_co_dino_exports_its_top_k_path(tmp_path):
    """Co-DINO exports (DINO decoder, 5 levels, dynamic N/H/W) once the soft-NMS test path is
    switched off; with it, the tool refuses with the option to use. Exported with
    ``--target openvino``: one GridSample per attention layer, level and point, and the tool
    checks OpenVINO too."""
    from projects.codetr.deploy import check_onnx_graph
    from projects.codetr.ops import CoMultiScaleDeformableAttention
    model = build_model(load_cfg(REPO_ROOT / 'tests' / 'configs' / 'co_dino_tiny.py'), seed=0)
    ckpt = tmp_path / 'co_dino.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    config = REPO_ROOT / 'tests' / 'configs' / 'co_dino_tiny.py'
    onnx_file = tmp_path / 'co_dino.onnx'
    args = [sys.executable, 'tools/deployment/export_onnx.py', config, ckpt, '--out',
            onnx_file, '--shape', '128', '128', '--dynamic', '--target', 'openvino']
    proc = _run([*args, '--cfg-options', 'model.test_cfg.0.nms=None'], timeout=300)
    for runtime in ('ONNX Runtime', 'OpenVINO'):
        assert f'OK: every PyTorch top-20 detection has an {runtime} twin' in proc.stdout
        assert f'{runtime}, 2x3x96x96:' in proc.stdout  # dynamic H, W checked at a 2nd size
    attentions = [m for m in model.modules() if isinstance(m, CoMultiScaleDeformableAttention)]
    assert len(attentions) > 2
    assert check_onnx_graph(onnx_file)['GridSample'] == sum(m.num_levels * m.num_points
                                                            for m in attentions)
    # with soft-NMS in test_cfg (not in the graph) the wrapper refuses, naming the option
    from projects.codetr.deploy import CoDETRDeployModel
    assert model.query_head.test_cfg.get('nms') is not None
    with pytest.raises(ValueError, match='model.test_cfg.0.nms=None'):
        CoDETRDeployModel(model.eval())
