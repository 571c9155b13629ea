# Co-Deformable-DETR on the embedded synthetic shapes dataset: trains in
# minutes on 2 CPU cores. Same modules and aux heads as the R50 config; only
# sizes change (the tiny model of tests/configs/co_deformable_detr_tiny.py:
# ResNet-18/16, 64 channels, 2+2 layers, 50 queries) plus the data settings.
# Generate the data first: python tools/misc/generate_synthetic_coco.py
# Any COCO-format folder with these class names works: set data_root (and the
# ann_file / data_prefix entries if its layout differs).
_base_ = '../tests/configs/co_deformable_detr_tiny.py'

classes = ('ellipse', 'rectangle', 'triangle', 'star', 'ring', 'cross')
num_classes = len(classes)
metainfo = dict(classes=classes)
data_root = 'data/synthetic/'
img_scale = (128, 128)
batch_size = 4
max_epochs = 15

syn_roi_head = _base_.model.roi_head[0]
syn_roi_head.bbox_head.num_classes = num_classes
syn_atss_head = _base_.model.bbox_head[0]
syn_atss_head.num_classes = num_classes
model = dict(
    # No pretrained weights here, so the backbone trains fully from scratch: no
    # frozen stem/stage 1, trainable BN (the COCO recipe freezes them because it
    # starts from ImageNet weights).
    backbone=dict(frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True),
                  norm_eval=False),
    query_head=dict(num_classes=num_classes),
    roi_head=[syn_roi_head],
    bbox_head=[syn_atss_head])

train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs')
]
# mmdet's loader at test time: DetInferencer (demo/image_demo.py) finds the loading step of
# the test pipeline by the name LoadImageFromFile.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type='CheckedCocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type='CheckedCocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CheckedCocoMetric', ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# Small-scale schedule (deviation from the paper's 12 COCO epochs at 16 images):
# higher lr for batch 4, decay at 3/4 of training,
# backbone lr x1 (from scratch) instead of x0.1.
optim_wrapper = dict(
    optimizer=dict(lr=4e-4),
    paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=1.0))))
train_cfg = dict(max_epochs=max_epochs, val_interval=3)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[int(max_epochs * 0.75)], gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=batch_size)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=3, max_keep_ckpts=2, save_best='coco/bbox_mAP'))
log_processor = dict(window_size=10)
randomness = dict(seed=0)  # same seed for the demo and the aux-budget comparison
