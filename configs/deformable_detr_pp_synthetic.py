# Aux-free Deformable-DETR++ baseline of configs/co_deformable_detr_synthetic.py:
# same model, data and schedule with every auxiliary head removed.
_base_ = './co_deformable_detr_synthetic.py'

model = dict(
    query_head=dict(num_co_heads=0),
    rpn_head=None,
    roi_head=None,
    bbox_head=None,
    train_cfg=[_base_.model.train_cfg[0]],
    test_cfg=[_base_.model.test_cfg[0]])
# the encoder-map downsampling layer gets no gradient without auxiliary heads
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
