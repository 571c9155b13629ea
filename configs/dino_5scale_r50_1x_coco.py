# Aux-free DINO baseline of Co-DINO: configs/co_dino_5scale_r50_1x_coco.py with every
# auxiliary head removed (same query head, denoising, data and schedule).
_base_ = './co_dino_5scale_r50_1x_coco.py'

model = dict(
    query_head=dict(num_co_heads=0),
    rpn_head=None,
    roi_head=None,
    bbox_head=None,
    train_cfg=[_base_.model.train_cfg[0]],
    test_cfg=[_base_.model.test_cfg[0]])
# The encoder-map downsampling layer gets no gradient without auxiliary heads.
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
