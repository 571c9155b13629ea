"""Co-DINO checkpoints -> this project's layout: official (mmdet 2.x) and mmdet 3.x port.

Two sources publish Co-DINO weights: the official release (Sense-X/Co-DETR, mmdet 2.25) and
the model zoo of mmdet 3.x's ``projects/CO-DETR`` port. The port kept the official
transformer names and differs in one key (the denoising label embedding lives in its
``dn_generator``); its Swin backbone is mmdet's ``SwinTransformer``, while the official
Swin-L checkpoints hold Microsoft's Swin-V1 layout. :func:`detect_layout` tells the
sources apart from the keys; :func:`rules_for_layout` gives the key table of each, built
from the same rule groups as the Co-Deformable-DETR table.
"""
from collections import OrderedDict
from typing import Iterable, Tuple

from mmdet.models.backbones.swin import swin_converter
from torch import Tensor

from .co_deformable_detr import (
    _QH,
    _ROI,
    AUX_HEAD_RULES,
    BRANCH_RULES,
    KEY_RULES,
    RESNET_NECK_RULES,
    TRANSFORMER_RULES,
    KeyRule,
    _same,
)


def _swin_v1_tensor(key: str, value: Tensor) -> Tensor:
    """One Swin-V1 tensor in mmdet's layout, by mmdet's own ``swin_converter``.

    The patch-merging ``reduction``/``norm`` weights are reordered (Microsoft concatenates
    the 2x2 neighbours as (0,0),(1,0),(0,1),(1,1); mmdet's Unfold as (0,0),(0,1),(1,0),(1,1));
    every other tensor is unchanged.
    """
    converted = swin_converter(OrderedDict([(key[len('backbone.'):], value)]))
    return next(iter(converted.values()))


#: Official Swin-V1 backbone -> mmdet's ``SwinTransformer``.
SWIN_V1_RULES: Tuple[KeyRule, ...] = (
    KeyRule('backbone.patch_embed.proj.{w}', 'backbone.patch_embed.projection.{w}'),
    _same('backbone.patch_embed.norm.{w}'),
    KeyRule('backbone.layers.{i}.blocks.{j}.norm{s}.{w}',
            'backbone.stages.{i}.blocks.{j}.norm{s}.{w}'),
    KeyRule('backbone.layers.{i}.blocks.{j}.attn.{swin_attn}',
            'backbone.stages.{i}.blocks.{j}.attn.w_msa.{swin_attn}'),
    KeyRule('backbone.layers.{i}.blocks.{j}.mlp.fc1.{w}',
            'backbone.stages.{i}.blocks.{j}.ffn.layers.0.0.{w}'),
    KeyRule('backbone.layers.{i}.blocks.{j}.mlp.fc2.{w}',
            'backbone.stages.{i}.blocks.{j}.ffn.layers.1.{w}'),
    KeyRule('backbone.layers.{i}.downsample.reduction.weight',
            'backbone.stages.{i}.downsample.reduction.weight', convert=_swin_v1_tensor),
    KeyRule('backbone.layers.{i}.downsample.norm.{w}', 'backbone.stages.{i}.downsample.norm.{w}',
            convert=_swin_v1_tensor),
    _same('backbone.norm{s}.{w}'),
)
#: mmdet's ``SwinTransformer`` (the port's checkpoints): names unchanged.
SWIN_MMDET_RULES: Tuple[KeyRule, ...] = (
    _same('backbone.patch_embed.projection.{w}'),
    _same('backbone.patch_embed.norm.{w}'),
    _same('backbone.stages.{i}.blocks.{j}.norm{s}.{w}'),
    _same('backbone.stages.{i}.blocks.{j}.attn.w_msa.{swin_attn}'),
    _same('backbone.stages.{i}.blocks.{j}.ffn.layers.0.0.{w}'),
    _same('backbone.stages.{i}.blocks.{j}.ffn.layers.1.{w}'),
    _same('backbone.stages.{i}.downsample.reduction.weight'),
    _same('backbone.stages.{i}.downsample.norm.{w}'),
    _same('backbone.norm{s}.{w}'),
)
_DINO_RULES: Tuple[KeyRule, ...] = (
    KeyRule(f'{_QH}.decoder.ref_point_head.0.{{w}}',
            'query_head.decoder.ref_point_head.layers.0.{w}'),
    KeyRule(f'{_QH}.decoder.ref_point_head.2.{{w}}',
            'query_head.decoder.ref_point_head.layers.1.{w}'),
    KeyRule(f'{_QH}.decoder.norm.{{w}}', 'query_head.decoder.norm.{w}'),
    KeyRule(f'{_QH}.query_embed.weight', 'query_head.query_embedding.weight'),
)
_LABEL_EMBEDDING = 'query_head.dn_query_generator.label_embedding.weight'

_FED = ('buffer of the federated loss of the official LVIS training (not in the released '
        'code; unused by our losses)')
#: Co-DINO ViT-L: the EVA-02-style ViT and the SFP neck keep the official names; the rotary
#: tables are deterministic and computed by the model (the released LVIS files lack some of
#: them, official issues #152 / #207); the federated-loss buffers of the LVIS files are
#: dropped.
VIT_RULES: Tuple[KeyRule, ...] = (
    _same('backbone.pos_embed'),
    _same('backbone.patch_embed.proj.{w}'),
    _same('backbone.blocks.{i}.norm{s}.{w}'),
    _same('backbone.blocks.{i}.attn.{vit_attn}'),
    _same('backbone.blocks.{i}.mlp.{vit_mlp}'),
    _same('backbone.out_norm.{w}'),
    KeyRule('backbone.{rope}', None, 'rotary table (deterministic; computed by the model)'),
    _same('neck.p{s}.{j}.{w}'),
    # the ViT-L COCO configs' aux RoI head: 4 convs (GN) + 1 fc
    _same('roi_head.{k}.bbox_head.shared_convs.{i}.conv.weight', _ROI, True),
    _same('roi_head.{k}.bbox_head.shared_convs.{i}.gn.{w}', _ROI, True),
    KeyRule('query_head.loss_cls.fed_loss_weight', None, _FED),
    KeyRule('bbox_head.{k}.loss_cls.fed_loss_weight', None, _FED),
    KeyRule('roi_head.{k}.bbox_head.loss_cls.fed_loss_weight', None, _FED),
)

#: Co-DINO-Inst's detector-level mask branch: SimpleRefineMaskHead and the mask-IoU head,
#: same names (LN2d norms are ``norm_layer`` on both sides); ExpMomentumEMAHook's
#: ``ema_*`` buffers of a training checkpoint are dropped.
MASK_BRANCH_RULES: Tuple[KeyRule, ...] = (
    _same('mask_head.instance_convs.{i}.conv.weight'),
    _same('mask_head.instance_convs.{i}.norm_layer.{w}'),
    _same('mask_head.semantic_convs.{i}.conv.weight'),
    _same('mask_head.semantic_convs.{i}.norm_layer.{w}'),
    _same('mask_head.stages.{i}.semantic_transform_in.{w}'),
    _same('mask_head.stages.{i}.fuse_conv.0.{w}'),
    _same('mask_head.stages.{i}.fuse_conv.1.dilation_conv_{j}.conv.{w}'),
    _same('mask_head.stages.{i}.fuse_conv.1.merge_conv.conv.{w}'),
    _same('mask_head.stages.{i}.fuse_transform_out.{w}'),
    _same('mask_head.stage_instance_logits.{i}.{w}'),
    _same('mask_iou_head.convs.{i}.conv.weight'),
    _same('mask_iou_head.convs.{i}.norm_layer.{w}'),
    _same('mask_iou_head.fcs.{i}.{w}'),
    _same('mask_iou_head.fc_mask_iou.{w}'),
    KeyRule('ema_{name}', None, 'EMA copy of a weight (ExpMomentumEMAHook buffer of the '
            'official training run); the model weights are used'),
)

#: Official Co-DINO (ResNet or Swin-V1 backbone): official template -> our template.
CO_DINO_KEY_RULES: Tuple[KeyRule, ...] = (
    RESNET_NECK_RULES + SWIN_V1_RULES + TRANSFORMER_RULES + _DINO_RULES +
    (KeyRule('query_head.label_embedding.weight', _LABEL_EMBEDDING),) + BRANCH_RULES +
    AUX_HEAD_RULES + MASK_BRANCH_RULES)
#: Official Co-DINO ViT-L (COCO, COCO-instance, LVIS, LVIS-instance, Objects365): the ViT's
#: ``patch_embed.proj`` is Swin-V1's name too, so it has a table of its own.
CO_DINO_VIT_KEY_RULES: Tuple[KeyRule, ...] = (
    VIT_RULES + TRANSFORMER_RULES + _DINO_RULES +
    (KeyRule('query_head.label_embedding.weight', _LABEL_EMBEDDING),) + BRANCH_RULES +
    AUX_HEAD_RULES + MASK_BRANCH_RULES)
#: Co-DINO of mmdet 3.x's ``projects/CO-DETR`` port (ResNet or mmdet Swin backbone).
CO_DINO_PORT_KEY_RULES: Tuple[KeyRule, ...] = (
    RESNET_NECK_RULES + SWIN_MMDET_RULES + TRANSFORMER_RULES + _DINO_RULES +
    (KeyRule('query_head.dn_generator.label_embedding.weight', _LABEL_EMBEDDING),) +
    BRANCH_RULES + AUX_HEAD_RULES + MASK_BRANCH_RULES)

#: layout name -> (key table, what it is)
LAYOUTS = {
    'co_deformable_detr': (KEY_RULES, 'official Co-Deformable-DETR (mmdet 2.x)'),
    'co_dino': (CO_DINO_KEY_RULES, 'official Co-DINO (mmdet 2.x)'),
    'co_dino_vit': (CO_DINO_VIT_KEY_RULES, 'official Co-DINO ViT-L (mmdet 2.x)'),
    'co_dino_mmdet3_port': (CO_DINO_PORT_KEY_RULES,
                            "Co-DINO of mmdet 3.x's projects/CO-DETR port"),
}


def detect_layout(keys: Iterable[str]) -> str:
    """Which published layout a state dict has, from its keys.

    Co-DINO ViT-L checkpoints have ViT blocks (``backbone.blocks.*.attn.q_proj``). Co-DINO
    checkpoints have a DINO decoder (``ref_point_head``) and a denoising label embedding:
    ``query_head.label_embedding`` (official) or ``query_head.dn_generator.label_embedding``
    (mmdet 3.x port). Anything else is taken for
    Co-Deformable-DETR, whose table then names every key it does not know.

    Args:
        keys (Iterable[str]): State-dict keys (a ``module.`` prefix is ignored).

    Returns:
        str: A key of :data:`LAYOUTS`.
    """
    keys = {k[len('module.'):] if k.startswith('module.') else k for k in keys}
    if any(k.startswith('backbone.blocks.') and '.attn.q_proj.' in k for k in keys):
        return 'co_dino_vit'
    if 'query_head.dn_generator.label_embedding.weight' in keys:
        return 'co_dino_mmdet3_port'
    if ('query_head.label_embedding.weight' in keys
            or f'{_QH}.decoder.ref_point_head.0.weight' in keys):
        return 'co_dino'
    return 'co_deformable_detr'


def rules_for_layout(layout: str) -> Tuple[KeyRule, ...]:
    """The key table of a layout name (see :data:`LAYOUTS`)."""
    if layout not in LAYOUTS:
        raise ValueError(f'unknown checkpoint layout {layout!r}; known: {sorted(LAYOUTS)}')
    return LAYOUTS[layout][0]
