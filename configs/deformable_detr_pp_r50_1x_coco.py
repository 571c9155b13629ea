# Deformable-DETR++ baseline: the Co-DETR config with every auxiliary head
# removed (same query head, same schedule). Paper: 47.1 box AP on COCO val.
_base_ = './co_deformable_detr_r50_1x_coco.py'

model = dict(
    query_head=dict(num_co_heads=0),
    rpn_head=None,
    roi_head=None,
    bbox_head=None,
    train_cfg=[_base_.model.train_cfg[0]],
    test_cfg=[_base_.model.test_cfg[0]])

# The encoder-map downsampling layer (kept so that checkpoints load both ways)
# gets no gradient without auxiliary heads.
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
