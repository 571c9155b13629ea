"""ONNX export of Co-DETR's inference path (the query head; the auxiliary heads are not run).

:class:`CoDETRDeployModel` wraps a detector into ``images -> (boxes, scores, labels)``:

- ``images``: float32 (N, 3, H, W), 0-255 pixels in the channel order of an image read by
  mmcv (BGR); the data preprocessor's channel conversion and normalisation are in the graph;
- ``boxes`` (N, K, 4) xyxy in input pixels, ``scores`` (N, K), ``labels`` (N, K) int64, with
  K = the query head's ``max_per_img`` (capped at queries x classes): mmdet's DETR
  post-processing (top-k over all query/class scores, no NMS), as ``predict(rescale=False)``
  on an unpadded batch.

The deformable attention is exported as ``GridSample`` (opset >= 16; the formulation of
:func:`~projects.codetr.ops.ms_deform_attn.multi_scale_deformable_attn_onnx`, arranged for
the ``target`` runtime), so stock ONNX Runtime and OpenVINO run the graph without custom
operators; or, with ``target='native'``, as this project's ``codetr::MSDeformAttn`` operator,
which both runtimes run with the libraries of :mod:`projects.codetr.ops.native`. The sizes
that depend on the input (feature maps, reference points, proposals) are computed from
tensor shapes, so the graph can leave N, H and W dynamic.
"""
from __future__ import annotations

import collections
import contextlib
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from torch import Tensor, nn

from ..ops import native
from ..ops.ms_deform_attn import CoMultiScaleDeformableAttention

# The arrangements of the deformable attention in an exported graph (export_onnx's
# ``target``): standard operators arranged for one runtime, or the native operator (both
# runtimes, with the libraries built); and the key of the graph's metadata that records it.
TARGETS = ('onnxruntime', 'openvino', 'native')
TARGET_KEY = 'codetr_target'
# the metadata key of the mask threshold (test_cfg mask_thr_binary) of a graph with masks
MASK_THRESHOLD_KEY = 'codetr_mask_thr_binary'
NATIVE_OPS = (f'{native.DOMAIN}::{native.OP_NAME}', )

# Modules that exist only for training: none of their names may appear in the graph.
AUX_MODULE_NAMES = ('rpn_head', 'roi_head', 'bbox_head', 'aux_pos_trans', 'pos_feats_trans',
                    'pos_feats_norm', 'head_pos_embed', 'query_head.downsample')


class CoDETRDeployModel(nn.Module):
    """``images`` (BGR, 0-255) -> ``boxes``, ``scores``, ``labels`` of the query head (and
    with a detector-level mask branch ``masks``, ``mask_scores``).

    Args:
        detector (nn.Module): A :class:`~projects.codetr.CoDETR` (eval mode).
        raw (bool): Output the last decoder layer's class ``logits`` (N, nq, C) and
            normalised cxcywh ``boxes_cxcywh`` (N, nq, 4) instead, for checking a runtime
            before post-processing or for post-processing of one's own.
        with_masks (bool, optional): Run the detector's mask branch (Co-DINO-Inst's
            ``mask_head``) on the K detections: ``masks`` (N, K, S, S) mask probabilities
            in each box at the mask head's resolution (S = 112; paste them with
            :meth:`SimpleRefineMaskHead.paste_mask_probs`, thresholded at
            :attr:`mask_threshold`) and, with a mask-IoU head, ``mask_scores`` (N, K) = box
            score x predicted mask IoU. Default: whenever the detector has a mask branch
            (not with ``raw``).
    """

    def __init__(self, detector: nn.Module, raw: bool = False,
                 with_masks: Optional[bool] = None) -> None:
        super().__init__()
        self.detector = detector
        self.raw = raw
        has_masks = getattr(detector, 'mask_head', None) is not None
        if with_masks is None:
            with_masks = has_masks and not raw
        if with_masks and (raw or not has_masks):
            raise ValueError('with_masks=True needs a detector with model.mask_head and '
                             'raw=False')
        self.with_masks = with_masks
        self.output_names = (['logits', 'boxes_cxcywh'] if raw else
                             ['boxes', 'scores', 'labels'])
        self.mask_threshold = None
        if with_masks:
            self.output_names.append('masks')
            if detector.mask_iou_head is not None:
                self.output_names.append('mask_scores')
            self.mask_threshold = float(detector.mask_test_cfg.get('mask_thr_binary', 0.5))
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

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        """Detections (or raw outputs) of the last decoder layer for a batch of unpadded
        images."""
        x = images[:, [2, 1, 0]] if self.bgr_to_rgb else images
        x = (x - self.mean) / self.std
        # (w, h, w, h) as a tensor: stays symbolic when H and W are dynamic axes
        size = torch._shape_as_tensor(x)[2:].flip(0).repeat(2).to(x.dtype)
        if self.with_masks:
            all_cls, all_boxes, memory, mlvl_feats = self.detector._forward(
                x, return_memory=True)
        else:
            all_cls, all_boxes = self.detector._forward(x)
        cls_scores, boxes = all_cls[-1], all_boxes[-1]  # (N, nq, C), (N, nq, 4) cxcywh
        if self.raw:
            return cls_scores, boxes
        k = min(self.max_per_img, cls_scores.shape[1] * cls_scores.shape[2])
        scores, indexes = cls_scores.sigmoid().flatten(1).topk(k, dim=1)
        labels = indexes % self.num_classes
        query = torch.div(indexes, self.num_classes, rounding_mode='floor')
        boxes = torch.gather(boxes, 1, query.unsqueeze(-1).expand(-1, -1, 4))
        boxes = torch.minimum((bbox_cxcywh_to_xyxy(boxes) * size).clamp(min=0), size)
        if not self.with_masks:
            return boxes, scores, labels
        return (boxes, scores, labels,
                *self._mask_branch(memory, mlvl_feats, boxes, scores, labels))

    def _mask_branch(self, memory: Tensor, mlvl_feats: Sequence[Tensor], boxes: Tensor,
                     scores: Tensor, labels: Tensor) -> Tuple[Tensor, ...]:
        """``CoDETR.predict_masks`` before pasting, for all images and detections at once.

        The encoder maps are cut out of ``memory`` with sizes taken from tensor shapes and
        the RoIs' levels are selected arithmetically (every level's RoIAlign weighted by 0 or
        1) instead of by indexing, so that N, H and W stay dynamic.
        """
        detector = self.detector
        extractor, mask_head = detector.mask_roi_extractor, detector.mask_head
        num_maps = extractor.num_inputs
        maps, start = [], 0
        for feat in mlvl_feats[:num_maps]:  # (N, hw, c) -> (N, c, h, w), encoder_maps's cut
            end = torch._shape_as_tensor(feat)[2:].prod() + start
            # contiguous: mmcv's CPU RoIAlign reads its input as if it were
            maps.append(memory[:, start:end].transpose(1, 2).reshape_as(feat).contiguous())
            start = end
        if num_maps > len(maps):  # the extra downsampled map of encoder_maps
            maps.append(detector.query_head.downsample(maps[-1]))
        num_dets = labels.shape[1]
        image_index = torch.arange(torch._shape_as_tensor(labels)[0]).to(boxes.dtype)
        rois = torch.cat([image_index.view(-1, 1, 1).expand(-1, num_dets, 1), boxes], dim=2)
        rois, roi_labels = rois.reshape(-1, 5), labels.reshape(-1)
        levels = extractor.map_roi_levels(rois, num_maps)
        ins_feats = 0
        for i, feat in enumerate(maps):
            in_level = (levels == i).to(feat.dtype).view(-1, 1, 1, 1)
            ins_feats = ins_feats + extractor.roi_layers[i](feat, rois) * in_level
        semantic = mask_head.forward_semantic(maps[0])
        stage_preds, _ = mask_head(ins_feats, semantic, rois, roi_labels)
        probs = mask_head.refine(stage_preds).sigmoid()  # (N * K, 1, S, S)
        outputs = (probs.reshape(-1, num_dets, *probs.shape[-2:]), )
        if detector.mask_iou_head is not None:
            iou = detector.mask_iou_head(ins_feats, stage_preds[1][:, 0])
            mask_scores = detector.mask_iou_head.mask_scores(iou, roi_labels, scores.reshape(-1))
            outputs += (mask_scores.reshape(-1, num_dets), )
        return outputs


class _RoIAlignFunction(torch.autograd.Function):
    """mmcv's ``roi_align`` ('avg') that exports as the standard ``RoiAlign`` (opset 16:
    ``half_pixel`` = mmcv's ``aligned=True``). mmcv's own symbolic writes an opset-10
    ``Squeeze`` and shifts aligned boxes a second time under opset 16."""

    @staticmethod
    def forward(ctx, feats: Tensor, rois: Tensor, output_size: Tuple[int, int],
                spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
        from mmcv.ops import roi_align
        state = torch._C._get_tracing_state()  # the node replaces the kernel call
        torch._C._set_tracing_state(None)
        try:
            return roi_align(feats, rois, output_size, spatial_scale, sampling_ratio, 'avg',
                             aligned)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g, feats, rois, output_size, spatial_scale, sampling_ratio, aligned):
        image_index = g.op('Cast', g.op('Gather', rois, g.op(
            'Constant', value_t=torch.tensor(0)), axis_i=1), to_i=7)  # int64
        boxes = g.op('Gather', rois, g.op('Constant', value_t=torch.tensor([1, 2, 3, 4])),
                     axis_i=1)
        output = g.op('RoiAlign', feats, boxes, image_index, mode_s='avg',
                      output_height_i=output_size[0], output_width_i=output_size[1],
                      sampling_ratio_i=max(0, sampling_ratio), spatial_scale_f=spatial_scale,
                      coordinate_transformation_mode_s='half_pixel' if aligned
                      else 'output_half_pixel')
        output.setType(feats.type().with_sizes([None, None, *output_size]))
        return output


class _ExportRoIAlign(nn.Module):
    """Stands in for an mmcv ``RoIAlign`` layer while exporting (:func:`export_onnx`)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        if layer.pool_mode != 'avg':
            raise ValueError(f'RoIAlign(pool_mode={layer.pool_mode!r}) has no ONNX export here '
                             "(only 'avg')")
        # the layer's attributes, which mmdet's RoI extractors read
        self.output_size = tuple(layer.output_size)
        self.spatial_scale = float(layer.spatial_scale)
        self.sampling_ratio = int(layer.sampling_ratio)
        self.pool_mode, self.aligned = 'avg', bool(layer.aligned)

    def forward(self, feats: Tensor, rois: Tensor) -> Tensor:
        return _RoIAlignFunction.apply(feats, rois.to(feats.dtype), self.output_size,
                                       self.spatial_scale, self.sampling_ratio, self.aligned)


@contextlib.contextmanager
def _exportable_roi_align(model: nn.Module):
    """Swap every mmcv ``RoIAlign`` in ``model`` for :class:`_ExportRoIAlign`, then back."""
    from mmcv.ops import RoIAlign
    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, RoIAlign):
                swapped.append((parent, name, child))
    try:
        for parent, name, child in swapped:
            setattr(parent, name, _ExportRoIAlign(child))
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def export_onnx(deploy_model: CoDETRDeployModel, images: Tensor, out_file: str | Path,
                opset: int = 17, dynamic: bool = False, target: str = 'onnxruntime') -> Path:
    """Export with torch's TorchScript-based exporter.

    Args:
        deploy_model (CoDETRDeployModel): The model to trace.
        images (Tensor): Sample input (N, 3, H, W) that the graph is traced with.
        out_file (str | Path): The ``.onnx`` file to write.
        opset (int): ONNX opset, >= 16 (``GridSample``).
        dynamic (bool): Leave N, H and W free; otherwise the graph is specialised to the
            shape of ``images``.
        target (str): The arrangement of the deformable attention, one of
            :data:`TARGETS`: ``'onnxruntime'`` samples per level, ``'openvino'`` per level
            and point (``per_point`` of ``multi_scale_deformable_attn_onnx``); both
            runtimes run either graph, with the same results up to rounding. ``'native'``:
            one ``codetr::MSDeformAttn`` node per attention (opset domain ``codetr``),
            which the runtimes run with the native libraries only. Recorded in the graph's
            metadata under :data:`TARGET_KEY`.

    Raises:
        ValueError: For ``opset`` < 16 or an unknown ``target``.
    """
    if opset < 16:
        raise ValueError(f'--opset {opset}: the deformable attention exports as GridSample, '
                         'which needs opset >= 16')
    if target not in TARGETS:
        raise ValueError(f'target={target!r}: expected one of {TARGETS}')
    deploy_model.eval()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {'images': {0: 'batch', 2: 'height', 3: 'width'},
                        **{name: {0: 'batch'} for name in deploy_model.output_names}}
    attentions = [m for m in deploy_model.modules()
                  if isinstance(m, CoMultiScaleDeformableAttention)]
    before = [(m.onnx_per_point, m.onnx_native) for m in attentions]
    try:
        for m in attentions:
            m.onnx_per_point = target == 'openvino'
            m.onnx_native = target == 'native'
        with torch.no_grad(), warnings.catch_warnings(), _exportable_roi_align(deploy_model):
            # The tracer warns wherever a size becomes a Python value; the shapes that must
            # stay symbolic are built from tensors (tests export at one size, run at others).
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            torch.onnx.export(deploy_model, (images, ), str(out_file), opset_version=opset,
                              input_names=['images'], output_names=deploy_model.output_names,
                              dynamic_axes=dynamic_axes, dynamo=False,
                              custom_opsets={native.DOMAIN: 1} if target == 'native' else None)
    finally:
        for m, (per_point, use_native) in zip(attentions, before):
            m.onnx_per_point, m.onnx_native = per_point, use_native
    import onnx
    model = onnx.load(str(out_file))
    model.metadata_props.add(key=TARGET_KEY, value=target)
    if deploy_model.mask_threshold is not None:
        model.metadata_props.add(key=MASK_THRESHOLD_KEY, value=repr(deploy_model.mask_threshold))
    onnx.save(model, str(out_file))
    return out_file


def check_onnx_graph(onnx_file: str | Path, forbidden: Sequence[str] = AUX_MODULE_NAMES,
                     allowed_custom: Sequence[str] = NATIVE_OPS) -> Dict[str, int]:
    """Op-type counts of an exported graph; fails on custom-domain ops other than
    ``allowed_custom`` (``domain::op``; by default the native deformable attention) or on
    auxiliary modules.

    Raises:
        ValueError: Naming the offending nodes/initializers.
    """
    import onnx
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    nodes = model.graph.node
    custom = sorted({f'{n.domain}::{n.op_type}' for n in nodes if n.domain not in ('', 'ai.onnx')}
                    - set(allowed_custom))
    if custom:
        raise ValueError(f'{onnx_file}: non-standard operators {custom}')
    names = [n.name.replace('/', '.') for n in nodes] + [
        i.name for i in model.graph.initializer]
    aux = sorted({name for name in names for part in forbidden if part in name})
    if aux:
        raise ValueError(f'{onnx_file}: training-only modules in the graph: {aux[:10]}')
    return dict(collections.Counter(n.op_type for n in nodes).most_common())
