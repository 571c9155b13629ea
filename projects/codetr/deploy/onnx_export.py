"""ONNX export of Co-DETR's inference path (the query head; the auxiliary heads are not run).

:class:`CoDETRDeployModel` wraps a detector into ``images -> (boxes, scores, labels)``:

- ``images``: float32 (N, 3, H, W), 0-255 pixels in the channel order of an image read by
  mmcv (BGR); the data preprocessor's channel conversion and normalisation are in the graph;
- ``boxes`` (N, K, 4) xyxy in input pixels, ``scores`` (N, K), ``labels`` (N, K) int64, with
  K = the query head's ``max_per_img`` (capped at queries x classes): mmdet's DETR
  post-processing (top-k over all query/class scores, no NMS), as ``predict(rescale=False)``
  on an unpadded batch.

The deformable attention is exported through mmcv's reference formulation (``GridSample``,
opset >= 16), so stock ONNX Runtime and OpenVINO run the graph without custom operators.
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Dict, Sequence, Tuple

import torch
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from torch import Tensor, nn

# Modules that exist only for training: none of their names may appear in the graph.
AUX_MODULE_NAMES = ('rpn_head', 'roi_head', 'bbox_head', 'aux_pos_trans', 'pos_feats_trans',
                    'pos_feats_norm', 'head_pos_embed', 'query_head.downsample')


class CoDETRDeployModel(nn.Module):
    """``images`` (BGR, 0-255) -> ``boxes``, ``scores``, ``labels`` of the query head.

    Args:
        detector (nn.Module): A :class:`~projects.codetr.CoDETR` (eval mode).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        preprocessor = detector.data_preprocessor
        self.bgr_to_rgb = bool(getattr(preprocessor, '_channel_conversion', False))
        self.register_buffer('mean', preprocessor.mean.detach().clone().view(1, -1, 1, 1))
        self.register_buffer('std', preprocessor.std.detach().clone().view(1, -1, 1, 1))
        head = detector.query_head
        if head.test_cfg.get('nms') is not None:
            raise ValueError(
                f'the query head\'s test_cfg has nms={dict(head.test_cfg.nms)} (the Co-DINO '
                'soft-NMS test path), which the exported graph does not contain; export the '
                'top-k path instead, e.g. --cfg-options "model.test_cfg.0.nms=None"')
        self.num_classes = head.num_classes
        self.max_per_img = int(head.test_cfg.get('max_per_img', 100))

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Detections of the last decoder layer for a batch of unpadded images."""
        x = images[:, [2, 1, 0]] if self.bgr_to_rgb else images
        x = (x - self.mean) / self.std
        h, w = int(x.shape[-2]), int(x.shape[-1])
        samples = [DetDataSample(metainfo=dict(img_shape=(h, w), batch_input_shape=(h, w)))
                   for _ in range(x.shape[0])]
        all_cls, all_boxes = self.detector._forward(x, samples)
        cls_scores, boxes = all_cls[-1], all_boxes[-1]  # (N, nq, C), (N, nq, 4) cxcywh
        k = min(self.max_per_img, cls_scores.shape[1] * cls_scores.shape[2])
        scores, indexes = cls_scores.sigmoid().flatten(1).topk(k, dim=1)
        labels = indexes % self.num_classes
        query = torch.div(indexes, self.num_classes, rounding_mode='floor')
        boxes = torch.gather(boxes, 1, query.unsqueeze(-1).expand(-1, -1, 4))
        boxes = bbox_cxcywh_to_xyxy(boxes) * boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))
        return boxes, scores, labels


def export_onnx(deploy_model: CoDETRDeployModel, images: Tensor, out_file: str | Path,
                opset: int = 17, dynamic_batch: bool = False) -> Path:
    """Export with torch's TorchScript-based exporter (the graph is shape-specialised to
    ``images``' H and W; ``dynamic_batch`` leaves N free).

    Raises:
        ValueError: For ``opset`` < 16 (``GridSample`` needs 16), or an input so small that a
            feature level is 1 pixel wide or high.
    """
    if opset < 16:
        raise ValueError(f'--opset {opset}: the deformable attention exports as GridSample, '
                         'which needs opset >= 16')
    deploy_model.eval()
    with torch.no_grad():
        sizes = [tuple(f.shape[-2:]) for f in deploy_model.detector.extract_feat(images[:1])]
    if min(min(size) for size in sizes) < 2:
        # torch's exporter turns the encoder's linspace(0.5, 0.5, 1) into 0/0 = NaN
        raise ValueError(f'input {tuple(images.shape[-2:])} gives feature maps {sizes}; every '
                         'level must be at least 2x2 for export, use a larger --shape '
                         '(> 64 px per side for the stride-64 level)')
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {'images': {0: 'batch'}, 'boxes': {0: 'batch'},
                        'scores': {0: 'batch'}, 'labels': {0: 'batch'}}
    with torch.no_grad():
        torch.onnx.export(deploy_model, (images, ), str(out_file), opset_version=opset,
                          input_names=['images'], output_names=['boxes', 'scores', 'labels'],
                          dynamic_axes=dynamic_axes, dynamo=False)
    return out_file


def check_onnx_graph(onnx_file: str | Path,
                     forbidden: Sequence[str] = AUX_MODULE_NAMES) -> Dict[str, int]:
    """Op-type counts of an exported graph; fails on custom-domain ops or auxiliary modules.

    Raises:
        ValueError: Naming the offending nodes/initializers.
    """
    import onnx
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    nodes = model.graph.node
    custom = sorted({f'{n.domain}::{n.op_type}' for n in nodes if n.domain not in ('', 'ai.onnx')})
    if custom:
        raise ValueError(f'{onnx_file}: non-standard operators {custom}')
    names = [n.name.replace('/', '.') for n in nodes] + [
        i.name for i in model.graph.initializer]
    aux = sorted({name for name in names for part in forbidden if part in name})
    if aux:
        raise ValueError(f'{onnx_file}: training-only modules in the graph: {aux[:10]}')
    return dict(collections.Counter(n.op_type for n in nodes).most_common())
