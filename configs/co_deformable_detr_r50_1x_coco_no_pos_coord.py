# Co-DETR with the auxiliary heads kept (one-to-many supervision of the
# encoder) but no customised positive queries in the decoder.
_base_ = './co_deformable_detr_r50_1x_coco.py'

model = dict(with_pos_coord=False)

# The aux-query projections of the query head get no gradient in this variant.
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
