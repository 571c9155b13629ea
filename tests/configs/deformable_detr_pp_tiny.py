# Tiny Deformable-DETR++ baseline: tests/configs/co_deformable_detr_tiny.py with every
# auxiliary head removed, the same way configs/deformable_detr_pp_r50_1x_coco.py derives
# from the R50 Co-DETR config. Used to check that an --inference-only conversion loads
# strictly and predicts exactly like the full model.
_base_ = './co_deformable_detr_tiny.py'

model = dict(
    query_head=dict(num_co_heads=0),
    rpn_head=None,
    roi_head=None,
    bbox_head=None,
    train_cfg=[_base_.model.train_cfg[0]],
    test_cfg=[_base_.model.test_cfg[0]])
