"""Layer-wise learning-rate decay for the plain ViT of Co-DINO ViT-L.

mmdet's ``LearningRateDecayOptimizerConstructor`` handles ConvNeXt only. This one gives the
official ViT rule (``shared/DESIGN_VITL.md`` section 4):

- layer id: ``backbone.{cls_token, mask_token, pos_embed}`` and ``backbone.patch_embed.*`` 0,
  ``backbone.blocks.{i}.*`` i + 1, everything else (``out_norm``, neck, heads)
  ``num_layers + 1``;
- lr = base lr x ``layer_decay_rate ** (num_layers + 1 - id)``;
- no weight decay for 1-D parameters and ``*.bias``; everything else (``pos_embed``, level
  embeddings, 0-d scales included, as officially) keeps the optimizer's weight decay.
"""
from typing import Dict, List, Optional

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a parameter of a detector with a ``backbone.blocks`` ViT."""
    if name in ('backbone.cls_token', 'backbone.mask_token', 'backbone.pos_embed') \
            or name.startswith('backbone.patch_embed'):
        return 0
    if name.startswith('backbone.blocks.'):
        return int(name.split('.')[2]) + 1
    return num_layers + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(
    name=['ViTLayerDecayOptimizerConstructor', 'LayerDecayOptimizerConstructor'])
class ViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Parameter groups ``layer_{id}_{decay,no_decay}`` with per-layer lr scales.

    ``paramwise_cfg``: ``num_layers`` (the ViT's depth) and ``layer_decay_rate`` (or
    ``decay_rate``); the caller's config is not modified. Also registered as
    ``LayerDecayOptimizerConstructor``, the official name.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        if 'num_layers' not in paramwise_cfg:
            raise ValueError('ViTLayerDecayOptimizerConstructor: paramwise_cfg.num_layers (the '
                             'ViT depth) is required')
        self.num_layers = int(paramwise_cfg.pop('num_layers'))
        rate = paramwise_cfg.pop('layer_decay_rate', paramwise_cfg.pop('decay_rate', None))
        if rate is None:
            raise ValueError('ViTLayerDecayOptimizerConstructor: paramwise_cfg.layer_decay_rate '
                             'is required')
        self.decay_rate = float(rate)
        paramwise_cfg.pop('decay_type', None)  # official 'layer_wise', the only rule here
        if paramwise_cfg:
            raise ValueError('ViTLayerDecayOptimizerConstructor: unsupported paramwise_cfg keys '
                             f'{sorted(paramwise_cfg)}')
        # non-empty, so that mmengine builds the groups through add_params
        super().__init__(optim_wrapper_cfg, dict(num_layers=self.num_layers,
                                                 layer_decay_rate=self.decay_rate))

    def group_of(self, name: str, param: nn.Parameter) -> Dict:
        """Group name, lr scale and weight decay of one parameter."""
        layer_id = vit_layer_id(name, self.num_layers)
        no_decay = param.ndim == 1 or name.endswith('.bias')
        scale = self.decay_rate ** (self.num_layers + 1 - layer_id)
        return dict(name=f'layer_{layer_id}_{"no_decay" if no_decay else "decay"}',
                    layer_id=layer_id, lr_scale=scale,
                    weight_decay=0.0 if no_decay else (self.base_wd or 0.0))

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        """Append one group per (layer id, decay) pair to ``params``."""
        groups: Dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            info = self.group_of(name, param)
            group = groups.setdefault(info['name'], dict(
                params=[], param_names=[], lr=self.base_lr * info['lr_scale'],
                lr_scale=info['lr_scale'], weight_decay=info['weight_decay'],
                group_name=info['name']))
            group['params'].append(param)
            group['param_names'].append(name)
        params.extend(groups.values())
