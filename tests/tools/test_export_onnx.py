"""ONNX export (tools/deployment/export_onnx.py): inference path only, standard operators;
ONNX Runtime and OpenVINO reproduce PyTorch's ``predict`` and its COCO evaluation
(tools/test.py --backend) and inference outputs (tools/infer.py --backend)."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_model, load_cfg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_tools import COCO_KEYS, REPO_ROOT, _run  # noqa: E402

ort = pytest.importorskip('onnxruntime')
SYNTHETIC = REPO_ROOT / 'configs' / 'co_deformable_detr_synthetic.py'
SHAPE = (128, 128)  # what the synthetic test pipeline resizes to


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A synthetic-config model with perturbed weights (no tied scores), its checkpoint and
    its ONNX export through the tool (batch size left dynamic)."""
    tmp = tmp_path_factory.mktemp('onnx')
    model = build_model(load_cfg(SYNTHETIC), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    ckpt = tmp / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    onnx_file = tmp / 'model.onnx'
    proc = _run([sys.executable, 'tools/deployment/export_onnx.py', SYNTHETIC, ckpt, '--out',
                 onnx_file, '--shape', *map(str, SHAPE), '--dynamic'], timeout=300)
    return model.eval(), onnx_file, proc.stdout


def test_tool_reports_and_verifies(exported):
    _, onnx_file, stdout = exported
    assert onnx_file.is_file()
    assert 'OK: every PyTorch top-20 detection has an ONNX Runtime twin' in stdout
    assert 'GridSample' in stdout and 'TopK' in stdout and 'ONNX Runtime' in stdout


def test_graph_is_the_inference_path_in_standard_operators(exported):
    import onnx

    from projects.codetr.deploy import check_onnx_graph
    _, onnx_file, _ = exported
    ops = check_onnx_graph(onnx_file)
    assert ops['GridSample'] == 4 * 4  # 2 encoder + 2 decoder layers x 4 levels
    graph = onnx.load(str(onnx_file)).graph
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


def test_onnxruntime_reproduces_pytorch_predict(exported):
    """Batch of 2 (dynamic N) against CoDETR.predict(rescale=False) on the same pixels."""
    from mmdet.structures import DetDataSample

    from tools.deployment.export_onnx import missing_twins
    model, onnx_file, _ = exported
    g = torch.Generator().manual_seed(3)
    raw = [torch.randint(0, 255, (3, *SHAPE), generator=g, dtype=torch.uint8) for _ in range(2)]
    samples = [DetDataSample(metainfo=dict(img_shape=SHAPE, ori_shape=SHAPE,
                                           scale_factor=(1.0, 1.0))) for _ in raw]
    data = model.data_preprocessor(dict(inputs=raw, data_samples=samples), False)
    with torch.no_grad():
        preds = model.predict(data['inputs'], data['data_samples'], rescale=False)
    session = ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
    # the graph takes the pixels as loaded (BGR, 0-255) and converts/normalises itself
    boxes, scores, labels = session.run(None, {'images': torch.stack(raw).float().numpy()})
    assert boxes.shape == (2, 100, 4) and labels.dtype == np.int64
    for i, pred in enumerate(preds):
        ref = [pred.pred_instances[k].numpy() for k in ('bboxes', 'scores', 'labels')]
        assert not missing_twins(ref, (boxes[i], scores[i], labels[i])), i
    # a twin is not found for a wrong box: the check can fail
    shifted = (boxes[0] + 1.0, scores[0], labels[0])
    ref0 = [preds[0].pred_instances[k].numpy() for k in ('bboxes', 'scores', 'labels')]
    assert missing_twins(ref0, shifted)


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
    pytest.importorskip(backend)
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
    """Co-DINO exports (DINO decoder, 5 levels) once the soft-NMS test path is switched off;
    with it, the tool refuses with the option to use."""
    model = build_model(load_cfg(REPO_ROOT / 'tests' / 'configs' / 'co_dino_tiny.py'), seed=0)
    ckpt = tmp_path / 'co_dino.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    config = REPO_ROOT / 'tests' / 'configs' / 'co_dino_tiny.py'
    args = [sys.executable, 'tools/deployment/export_onnx.py', config, ckpt, '--out',
            tmp_path / 'co_dino.onnx', '--shape', '128', '128']
    proc = _run([*args, '--cfg-options', 'model.test_cfg.0.nms=None'], timeout=300)
    assert 'OK: every PyTorch top-20 detection has an ONNX Runtime twin' in proc.stdout
    import subprocess
    refused = subprocess.run([str(a) for a in args], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and 'model.test_cfg.0.nms=None' in refused.stderr
