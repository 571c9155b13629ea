from .co_atss_head import CoATSSHead
from .co_deformable_detr_head import CoDeformDETRHead

__all__ = ['CoATSSHead', 'CoDeformDETRHead']
