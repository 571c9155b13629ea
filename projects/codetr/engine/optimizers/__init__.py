from .layer_decay_constructor import ViTLayerDecayOptimizerConstructor, vit_layer_id
from .optim_wrapper import FiniteCheckOptimWrapper

__all__ = ['FiniteCheckOptimWrapper', 'ViTLayerDecayOptimizerConstructor', 'vit_layer_id']
