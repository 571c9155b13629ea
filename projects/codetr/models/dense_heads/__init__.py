from .co_atss_head import CoATSSHead
from .co_deformable_detr_head import CoDeformDETRHead
from .co_dino_head import CoDINOHead

__all__ = ['CoATSSHead', 'CoDeformDETRHead', 'CoDINOHead']
