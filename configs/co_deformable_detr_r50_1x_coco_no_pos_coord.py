# Co-DETR with the auxiliary heads kept (one-to-many supervision of the
# encoder) but no customised positive queries in the decoder.
_base_ = './co_deformable_detr_r50_1x_coco.py'

model = dict(with_pos_coord=False)
