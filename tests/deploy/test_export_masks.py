"""Masks in the exported graph: the detector-level mask branch (Co-DINO-Inst's mask head and
mask-IoU head) of the `make demo` config exports with ``masks`` / ``mask_scores`` outputs,
the tools paste them, and the runtimes' masks match PyTorch's (mask IoU >= 0.99)."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / 'tests' / 'tools'))
from test_export_onnx import export_with_tool  # noqa: E402
from test_tools import _run  # noqa: E402

INST = REPO_ROOT / 'configs' / 'co_deformable_detr_inst_synthetic.py'
SHAPE = (128, 128)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The demo config's model with perturbed weights, exported by the tool with its
    defaults."""
    return export_with_tool(INST, tmp_path_factory.mktemp('onnx_masks'))


def test_graph_outputs_masks(exported):
    import onnx

    from projects.codetr.deploy import check_onnx_graph
    from projects.codetr.deploy.backend_model import _Runner
    _, onnx_file, stdout = exported
    assert 'OK: ONNX Runtime masks of the twins (threshold 0.5)' in stdout
    model = onnx.load(str(onnx_file))
    assert [o.name for o in model.graph.output] == ['boxes', 'scores', 'labels', 'masks',
                                                    'mask_scores']
    outputs = _Runner(str(onnx_file), 'onnxruntime')(np.zeros((2, 3, 96, 80), np.float32))
    assert [o.shape for o in outputs[3:]] == [(2, 100, 112, 112), (2, 100)]
    assert 0 <= outputs[3].min() and outputs[3].max() <= 1  # probabilities
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta['codetr_mask_thr_binary'] == '0.5'
    # 4 levels of the mask RoI extractor + one semantic crop per refine stage (3)
    assert check_onnx_graph(onnx_file)['RoiAlign'] == 7


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


@pytest.mark.parametrize('backend,target', [('onnxruntime', None), ('openvino', 'native')])
def test_pasted_masks_match_predict(exported, tmp_path, backend, target):
    """The backend model's pasted masks (on a 100x90 original image resized to 128x128, a
    batch of two) against CoDETR.predict(rescale=True): every top-20 detection's twin has a
    mask IoU >= 0.99 and the same mask score to 1e-4 (ONNX Runtime on the standard graph,
    OpenVINO on the native one)."""
    from mmdet.structures import DetDataSample

    from projects.codetr.deploy import CoDETRDeployModel, ONNXBackendDetector, export_onnx
    from tools.deployment.export_onnx import BOX_TOL, SCORE_TOL
    model, onnx_file, _ = exported
    if target is not None:
        onnx_file = export_onnx(CoDETRDeployModel(model), torch.zeros(1, 3, *SHAPE),
                                tmp_path / 'native.onnx', dynamic=True, target=target)
    detector = ONNXBackendDetector(str(onnx_file), backend=backend)
    g = torch.Generator().manual_seed(7)
    raw = [torch.randint(0, 255, (3, *SHAPE), generator=g, dtype=torch.uint8) for _ in range(2)]

    def samples():
        return [DetDataSample(metainfo=dict(img_shape=SHAPE, ori_shape=(100, 90),
                                            scale_factor=(128 / 90, 128 / 100),
                                            batch_input_shape=SHAPE)) for _ in raw]

    data = model.data_preprocessor(dict(inputs=raw, data_samples=samples()), False)
    with torch.no_grad():
        refs = model.predict(data['inputs'], data['data_samples'], rescale=True)
    ours = detector.forward(raw, samples())
    checked = 0
    for ref, out in zip(refs, ours):
        ref, out = ref.pred_instances, out.pred_instances
        assert out.masks.shape == (100, 100, 90) and out.masks.dtype == torch.bool
        for i in ref.scores.argsort(descending=True)[:20]:
            twin = ((out.labels == ref.labels[i]) & ((out.scores - ref.scores[i]).abs()
                                                     <= SCORE_TOL)
                    & ((out.bboxes - ref.bboxes[i]).abs().amax(-1) <= BOX_TOL)).nonzero()
            assert len(twin), int(i)
            j = twin[0, 0]
            assert _mask_iou(out.masks[j], ref.masks[i]) >= 0.99, int(i)
            assert abs(float(out.mask_scores[j] - ref.mask_scores[i])) <= 1e-4
            checked += int(ref.masks[i].any())
    assert checked >= 10  # non-empty masks were compared
    # the IoU check can fail: a mask shifted by 3 px is far below 0.99
    mask = ref.masks[ref.masks.flatten(1).sum(1).argmax()]
    assert _mask_iou(mask, mask.roll(3, dims=1)) < 0.99


@pytest.fixture(scope='module')
def val_root(tmp_path_factory):
    from tools.misc.generate_synthetic_coco import generate_split
    root = tmp_path_factory.mktemp('masks_val')
    generate_split(root, 'val', 5, img_size=64, seed=2)
    return root


def test_test_tool_segm_metrics_match_pytorch(exported, val_root, tmp_path):
    """tools/test.py --backend onnxruntime on the graph with masks: the same bbox and segm
    metrics as on the checkpoint, masks pasted on the 64 px originals."""
    from pycocotools import mask as mask_utils
    _, onnx_file, _ = exported
    ann = f'{val_root}/annotations/instances_val.json'
    results = {}
    for name, model_file, backend in (('pytorch', onnx_file.with_suffix('.pth'), 'pytorch'),
                                      ('onnx', onnx_file, 'onnxruntime')):
        out = tmp_path / name
        _run([sys.executable, 'tools/test.py', INST, model_file, '--backend', backend,
              '--work-dir', out, '--out', out / 'dets.pkl', '--metrics-out',
              out / 'metrics.json', '--cfg-options',
              f'test_dataloader.dataset.data_root={val_root}/', f'test_evaluator.ann_file={ann}',
              'test_dataloader.num_workers=0'], timeout=300)
        results[name] = (pickle.loads((out / 'dets.pkl').read_bytes()),
                         json.loads((out / 'metrics.json').read_text()))
    (ref_dets, ref_metrics), (dets, metrics) = results['pytorch'], results['onnx']
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert metrics[key] == pytest.approx(ref_metrics[key], abs=1e-3), key
    assert ref_metrics['coco/segm_mAP'] >= 0  # segm was evaluated
    for ref, ours in zip(ref_dets, dets):  # the dumps' RLE masks, same rank
        a, b = ref['pred_instances']['masks'], ours['pred_instances']['masks']
        assert len(a) == len(b) == 100 and a[0]['size'] == [64, 64]
        for i in np.argsort(-ref['pred_instances']['scores'].numpy())[:10]:
            if mask_utils.area(a[i]) or mask_utils.area(b[i]):
                assert mask_utils.iou([a[i]], [b[i]], [0])[0, 0] >= 0.99, i
