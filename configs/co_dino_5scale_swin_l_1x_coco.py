# Co-DINO, Swin-L (ImageNet-22k, 384 px), 12 epochs, DETR augmentation, 16 GPUs x 1
# image. Official COCO val box AP: 58.9. Backbone: configs/_base_/co_dino_swin_l.py.
_base_ = ['./co_dino_5scale_r50_1x_coco.py', './_base_/co_dino_swin_l.py']

model = dict(
    backbone=_base_.swin_l_backbone,
    neck=dict(in_channels=_base_.swin_l_channels),
    query_head=dict(encoder=dict(with_cp=6)))  # checkpoint all 6 encoder layers

train_dataloader = dict(batch_size=1, num_workers=1)
# lr 2e-4 is for 16 images per iteration (16 GPUs x 1)
auto_scale_lr = dict(base_batch_size=16)
