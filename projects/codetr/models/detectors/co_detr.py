"""Co-DETR detector: a DETR query head plus one-to-many auxiliary heads."""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmdet.models.detectors import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample, OptSampleList, SampleList
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.config import ConfigDict
from mmengine.model import ModuleList
from torch import Tensor

from ...utils.checkpoint_check import CheckpointFitMixin
from ..layers.aux_queries import build_aux_query_targets

CfgList = Optional[Union[ConfigType, Sequence[ConfigType]]]


def _as_list(cfg: CfgList) -> List[ConfigDict]:
    """None -> [], dict -> [dict], list -> list, as ConfigDicts."""
    if cfg is None:
        return []
    if isinstance(cfg, dict):
        cfg = [cfg]
    return [ConfigDict(c) for c in cfg]


@MODELS.register_module()
class CoDETR(CheckpointFitMixin, BaseDetector):
    """Co-DETR (Zong et al., "DETRs with Collaborative Hybrid Assignments
    Training", ICCV 2023, arXiv 2211.12860).

    Training: the query head runs encoder and decoder and returns the encoder
    output as 5 maps; the RPN, the RoI heads and the dense heads (ATSS) are
    trained on those maps with one-to-many assignment, and the positives of
    each auxiliary head k become an extra query group decoded by the same
    decoder (losses suffixed ``_aux{k}``). Inference runs the query head only
    (``eval_module='detr'``), or an auxiliary head on the encoder maps.

    ``train_cfg``/``test_cfg`` are lists ordered as
    [query head, one (rpn + rcnn) entry per RoI head, one per dense head].

    ``predict`` refuses to run after loading a checkpoint that does not fit
    the model (missing, unexpected or size-mismatched tensors) until a
    training step or ``allow_partial_checkpoint = True``
    (:class:`~projects.codetr.utils.checkpoint_check.CheckpointFitMixin`).

    Args:
        backbone (dict): Backbone config.
        neck (dict, optional): Neck config.
        query_head (dict, optional): Query head (:class:`CoDeformDETRHead`).
        rpn_head (dict, optional): RPN shared by all RoI heads.
        roi_head (list[dict], optional): RoI heads (:class:`CoStandardRoIHead`).
        bbox_head (list[dict], optional): Dense heads (:class:`CoATSSHead`).
        train_cfg (list[dict], optional): Training configs (see above).
        test_cfg (list[dict], optional): Testing configs (see above).
        with_pos_coord (bool): Turn auxiliary positives into queries.
            Defaults to True.
        eval_module (str): 'detr', 'one-stage' or 'two-stage'.
        eval_index (int): Which dense / RoI head to evaluate. Defaults to 0.
        with_attn_mask (bool): Mask the padding of each image. False (the
            official LSJ recipes, whose images are padded to a fixed canvas)
            sets every image's ``img_shape`` to the batch input shape, so the
            padding is treated as image: no padding mask, targets normalised by
            the canvas, test boxes clamped to it. Defaults to True.
        num_classes (int, optional): Number of classes of every head: the
            query head, each RoI head's ``bbox_head`` and each dense head.
            A short child config sets ``model = dict(num_classes=N)``
            instead of repeating the head lists (mmengine replaces lists
            rather than merging them). None keeps the heads' own values,
            which must agree.
        data_preprocessor (dict, optional): Data preprocessor config.
        init_cfg (dict, optional): Initialisation config.
    """

    EVAL_MODULES = ('detr', 'one-stage', 'two-stage')

    def __init__(self,
                 backbone: ConfigType,
                 neck: OptConfigType = None,
                 query_head: OptConfigType = None,
                 rpn_head: OptConfigType = None,
                 roi_head: CfgList = None,
                 bbox_head: CfgList = None,
                 train_cfg: CfgList = None,
                 test_cfg: CfgList = None,
                 with_pos_coord: bool = True,
                 eval_module: str = 'detr',
                 eval_index: int = 0,
                 with_attn_mask: bool = True,
                 num_classes: Optional[int] = None,
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        roi_heads, dense_heads = _as_list(roi_head), _as_list(bbox_head)
        if num_classes is not None:  # one number for every head (configs' lists replace)
            query_head, roi_heads, dense_heads = _with_num_classes(
                num_classes, query_head, roi_heads, dense_heads)
        train_cfgs, test_cfgs = _as_list(train_cfg), _as_list(test_cfg)
        self._check_config(query_head, rpn_head, roi_heads, dense_heads, train_cfgs,
                           test_cfgs, with_pos_coord, eval_module, eval_index)
        self.with_pos_coord = with_pos_coord
        self.eval_module = eval_module
        self.eval_index = eval_index
        self.with_attn_mask = with_attn_mask
        self.train_cfg = train_cfgs
        self.test_cfg = test_cfgs
        train_at = (lambda i: train_cfgs[i]) if train_cfgs else (lambda i: None)

        self.backbone = MODELS.build(backbone)
        if neck is not None:
            self.neck = MODELS.build(neck)
        self.query_head = None
        if query_head is not None:
            query_head = copy.deepcopy(query_head)
            query_head.update(train_cfg=train_at(0), test_cfg=test_cfgs[0])
            self.query_head = MODELS.build(query_head)
        self.rpn_head = None
        if rpn_head is not None:
            rpn_head = copy.deepcopy(rpn_head)
            rpn_head.update(num_classes=1,
                            train_cfg=train_cfgs[1].rpn if train_cfgs else None,
                            test_cfg=test_cfgs[1].rpn)
            self.rpn_head = MODELS.build(rpn_head)
        self.roi_head = ModuleList()
        for i, cfg in enumerate(roi_heads):
            cfg = copy.deepcopy(cfg)
            cfg.update(train_cfg=train_cfgs[i + 1].rcnn if train_cfgs else None,
                       test_cfg=test_cfgs[i + 1].rcnn)
            self.roi_head.append(MODELS.build(cfg))
        self.bbox_head = ModuleList()
        for j, cfg in enumerate(dense_heads):
            idx = j + 1 + len(roi_heads)
            cfg = copy.deepcopy(cfg)
            cfg.update(train_cfg=train_at(idx), test_cfg=test_cfgs[idx])
            self.bbox_head.append(MODELS.build(cfg))

    @staticmethod
    def _check_config(query_head, rpn_head, roi_heads, dense_heads, train_cfgs, test_cfgs,
                      with_pos_coord, eval_module, eval_index) -> None:
        """Fail early, naming the config key, on inconsistent head lists."""
        if query_head is None:
            raise ValueError('CoDETR: model.query_head is required')
        for key, cfgs in (('roi_head', roi_heads), ('bbox_head', dense_heads)):
            for i, cfg in enumerate(cfgs):
                if 'type' not in cfg:
                    raise ValueError(
                        f'CoDETR: model.{key}[{i}] has no "type" ({dict(cfg)}). A child config '
                        'replaces a list of its base instead of merging it; to change the '
                        'classes set model.num_classes=N, otherwise write whole entries, e.g. '
                        f'{key}=[dict(_base_.model.{key}[{i}], ...)]')
        if eval_module not in CoDETR.EVAL_MODULES:
            raise ValueError(f'CoDETR: model.eval_module={eval_module!r}, expected one of '
                             f'{CoDETR.EVAL_MODULES}')
        if roi_heads and rpn_head is None:
            raise ValueError('CoDETR: model.roi_head is set but model.rpn_head is missing')
        expected = 1 + len(roi_heads) + len(dense_heads)
        for key, cfgs in (('train_cfg', train_cfgs), ('test_cfg', test_cfgs)):
            if key == 'train_cfg' and not cfgs:
                continue  # inference-only configs may omit train_cfg
            if len(cfgs) != expected:
                raise ValueError(
                    f'CoDETR: model.{key} has {len(cfgs)} entries but {expected} are needed, '
                    f'ordered [query_head, one per roi_head ({len(roi_heads)}), one per '
                    f'bbox_head ({len(dense_heads)})]')
        num_classes = {'query_head': query_head.get('num_classes')}
        for i, cfg in enumerate(roi_heads):
            num_classes[f'roi_head[{i}].bbox_head'] = cfg.get('bbox_head', {}).get('num_classes')
        for j, cfg in enumerate(dense_heads):
            num_classes[f'bbox_head[{j}]'] = cfg.get('num_classes')
        if len(set(num_classes.values())) > 1:
            raise ValueError(f'CoDETR: num_classes disagree between heads: {num_classes}; '
                             'set one num_classes variable in the config and use it everywhere')
        num_aux = len(roi_heads) + len(dense_heads)
        num_co_heads = query_head.get('num_co_heads', 2)
        if with_pos_coord and num_aux > 0 and num_co_heads != num_aux:
            raise ValueError(
                f'CoDETR: model.query_head.num_co_heads={num_co_heads} aux-query projections '
                f'but there are {num_aux} auxiliary heads ({len(roi_heads)} roi_head + '
                f'{len(dense_heads)} bbox_head); set num_co_heads={num_aux}, or '
                'with_pos_coord=False')
        if eval_module == 'one-stage' and not 0 <= eval_index < len(dense_heads):
            raise ValueError(f'CoDETR: eval_index={eval_index} but only {len(dense_heads)} '
                             'bbox_head entries exist for eval_module="one-stage"')
        if eval_module == 'two-stage' and not 0 <= eval_index < len(roi_heads):
            raise ValueError(f'CoDETR: eval_index={eval_index} but only {len(roi_heads)} '
                             'roi_head entries exist for eval_module="two-stage"')

    @property
    def with_rpn(self) -> bool:
        """Whether an RPN is built."""
        return self.rpn_head is not None

    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor]:
        """Backbone + neck: (bs, 3, H, W) -> maps of strides 8..64."""
        x = self.backbone(batch_inputs)
        if self.with_neck:
            x = self.neck(x)
        return x

    def _drop_attn_mask(self, batch_data_samples: SampleList) -> None:
        """``with_attn_mask=False``: the whole padded canvas is the image."""
        if self.with_attn_mask:
            return
        for sample in batch_data_samples:
            sample.set_metainfo(dict(img_shape=tuple(sample.batch_input_shape)))

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """Losses of the query head, the auxiliary heads and the aux queries."""
        self.forget_checkpoint_fit()
        self._drop_attn_mask(batch_data_samples)
        x = self.extract_feat(batch_inputs)
        with_aux = self.with_rpn or len(self.roi_head) > 0 or len(self.bbox_head) > 0
        losses, enc_maps = self.query_head.loss(x, batch_data_samples, return_maps=with_aux)

        proposals = None
        if self.with_rpn:
            rpn_cfg = self.train_cfg[1]
            proposal_cfg = rpn_cfg.get('rpn_proposal', self.test_cfg[1].rpn)
            rpn_samples = copy.deepcopy(batch_data_samples)
            for sample in rpn_samples:  # the RPN is class-agnostic
                sample.gt_instances.labels = torch.zeros_like(sample.gt_instances.labels)
            rpn_losses, proposals = self.rpn_head.loss_and_predict(
                enc_maps, rpn_samples, proposal_cfg=proposal_cfg)
            losses.update(rpn_losses)

        all_positives = []
        for i, roi_head in enumerate(self.roi_head):
            head_losses, positives = roi_head.loss_and_positives(
                enc_maps, copy.deepcopy(proposals), batch_data_samples)
            losses.update(_suffix(head_losses, i))
            all_positives.append(positives)
        for j, dense_head in enumerate(self.bbox_head):
            head_losses, positives = dense_head.loss_and_positives(enc_maps, batch_data_samples)
            losses.update(_suffix(head_losses, j + len(self.roi_head)))
            all_positives.append(positives)

        if self.with_pos_coord and all_positives:  # aux-free configs have no positives
            img_shapes = [s.img_shape for s in batch_data_samples]
            head = self.query_head
            value_inputs = head.aux_value_inputs(enc_maps, batch_data_samples)  # shared by k
            for k, positives in enumerate(all_positives):
                aux = build_aux_query_targets(
                    positives, img_shapes, head.num_classes, max_pos_coords=head.max_pos_coords,
                    use_zero_padding=head.use_zero_padding)
                aux_losses = head.loss_aux(enc_maps, aux, k, batch_data_samples, value_inputs)
                losses.update(_suffix(aux_losses, k))
        return losses

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Detections of ``eval_module``; 'detr' runs the query head only."""
        self.check_checkpoint_fit()
        self._drop_attn_mask(batch_data_samples)
        x = self.extract_feat(batch_inputs)
        if self.eval_module == 'detr':
            results = self.query_head.predict(x, batch_data_samples, rescale=rescale)
        else:
            enc_maps = self.query_head.forward_encoder_maps(x, batch_data_samples)
            if self.eval_module == 'one-stage':
                results = self.bbox_head[self.eval_index].predict(
                    enc_maps, batch_data_samples, rescale=rescale)
            else:
                proposals = self.rpn_head.predict(enc_maps, batch_data_samples, rescale=False)
                results = self.roi_head[self.eval_index].predict(
                    enc_maps, proposals, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(self, batch_inputs: Tensor,
                 batch_data_samples: OptSampleList = None) -> Tuple[Tensor, Tensor]:
        """Tensor-mode forward of the inference path (query head only).

        Args:
            batch_inputs (Tensor): (bs, 3, H, W).
            batch_data_samples (list[DetDataSample], optional): Image metas;
                when None every image is taken to fill the whole input.

        Returns:
            tuple[Tensor, Tensor]: Class logits (num_layers, bs, nq, C) and
            boxes (num_layers, bs, nq, 4), normalised cxcywh.
        """
        if batch_data_samples is None:
            h, w = batch_inputs.shape[-2:]
            batch_data_samples = [
                DetDataSample(metainfo=dict(img_shape=(h, w), batch_input_shape=(h, w)))
                for _ in range(batch_inputs.size(0))]
        self._drop_attn_mask(batch_data_samples)
        x = self.extract_feat(batch_inputs)
        out = self.query_head.forward_transformer(x, batch_data_samples)
        return self.query_head(out['hidden_states'], out['references'])


def _with_num_classes(num_classes: int, query_head: ConfigType, roi_heads: List[ConfigDict],
                      dense_heads: List[ConfigDict]) -> Tuple:
    """Copies of the head configs with ``num_classes`` set in every head."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f'CoDETR: model.num_classes={num_classes!r}, expected an int >= 1')
    query_head = ConfigDict(copy.deepcopy(query_head)) if query_head is not None else None
    if query_head is not None:
        query_head.num_classes = num_classes
    roi_heads = [copy.deepcopy(cfg) for cfg in roi_heads]
    for cfg in roi_heads:
        cfg.bbox_head.num_classes = num_classes
    dense_heads = [copy.deepcopy(cfg) for cfg in dense_heads]
    for cfg in dense_heads:
        cfg.num_classes = num_classes
    return query_head, roi_heads, dense_heads


def _suffix(losses: Dict[str, Tensor], idx: int) -> Dict[str, Tensor]:
    """Append the head index to every key: ``loss_cls`` -> ``loss_cls0``."""
    return {f'{key}{idx}': value for key, value in losses.items()}

