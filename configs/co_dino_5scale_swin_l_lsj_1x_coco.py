# Co-DINO, Swin-L, 12 epochs with large-scale jitter on a 1280x1280 canvas, 16 GPUs x 1
# image. Official COCO val box AP: 59.3. Data: configs/co_dino_5scale_r50_lsj_1x_coco.py
# with the larger canvas; backbone: configs/_base_/co_dino_swin_l.py.
_base_ = ['./co_dino_5scale_r50_lsj_1x_coco.py', './_base_/co_dino_swin_l.py']

image_size = (1280, 1280)
model = dict(
    backbone=_base_.swin_l_backbone,
    neck=dict(in_channels=_base_.swin_l_channels),
    query_head=dict(encoder=dict(with_cp=6)))  # checkpoint all 6 encoder layers

_load_pipeline = _base_.load_pipeline
_load_pipeline[2].scale = image_size  # RandomResize
_load_pipeline[3].crop_size = image_size  # RandomCrop
_load_pipeline[6].size = image_size  # Pad
_test_pipeline = _base_.test_pipeline
_test_pipeline[1].scale = image_size  # Resize
_test_pipeline[2].size = image_size  # Pad
train_dataloader = dict(
    batch_size=1, num_workers=1, dataset=dict(dataset=dict(pipeline=_load_pipeline)))
val_dataloader = dict(dataset=dict(pipeline=_test_pipeline))
test_dataloader = val_dataloader
auto_scale_lr = dict(base_batch_size=16)
