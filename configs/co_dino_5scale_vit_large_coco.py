# Co-DINO ViT-L on COCO (the record model: official COCO val box AP 65.9, test-dev 66.0, after
# Objects365 pretraining). The official co_dino_5scale_vit_large_coco.py: ViT-L + SFP
# (configs/_base_/co_dino_vit_l.py), 1500 queries, denoising box noise 0.4 with 300 queries,
# the aux RoI head as 4 convs (GN) + 1 fc with class-agnostic regression, test soft-NMS with
# up to 1000 detections, scales up to 1536 x 2400 with the DETR crop branch, Pad /32, one
# image per GPU (16 GPUs), AdamW 5e-5 with layer-wise lr decay 0.8, 500 warm-up iterations,
# step at epoch 7 of 12, EMA (momentum 1e-4). The official numbers start from the Objects365
# detector (co-detr-vit-large-objects365, converted by
# tools/model_converters/official_to_mmdet3.py); load_from points there. Training from
# scratch, set load_from=None (the backbone then logs that it has no pretrained weights).
_base_ = ['./co_dino_5scale_r50_1x_coco.py', './_base_/co_dino_vit_l.py']

num_query = 1500
_roi_head = _base_.model.roi_head[0]
_roi_head.bbox_head = dict(
    type='ConvFCBBoxHead',
    num_shared_convs=4,
    num_shared_fcs=1,
    in_channels=_base_.embed_dims,
    conv_out_channels=_base_.embed_dims,
    fc_out_channels=1024,
    roi_feat_size=7,
    num_classes=_base_.num_classes,
    bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                    target_stds=[0.05, 0.05, 0.1, 0.1]),
    reg_class_agnostic=True,
    reg_decoded_bbox=True,
    norm_cfg=dict(type='GN', num_groups=32),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False,
                  loss_weight=1.0 * _base_.aux_weight),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0 * _base_.aux_weight))
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=_base_.vit_l_backbone,
    neck=_base_.vit_l_neck,
    query_head=dict(
        num_query=num_query,
        dn_cfg=dict(box_noise_scale=0.4, group_cfg=dict(num_dn_queries=300)),
        encoder=dict(with_cp=6)),  # checkpoint all 6 encoder layers
    roi_head=[_roi_head],
    test_cfg=_base_.vit_l_test_cfg)

# short side 480..1536 (step 32), long side <= 2400; or the DETR crop branch
train_scales = [(s, 2400) for s in range(480, 1537, 32)]
train_pipeline = _base_.train_pipeline
train_pipeline[3].transforms = [
    [dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)],
    [
        dict(type='RandomChoiceResize', scales=[(400, 4200), (500, 4200), (600, 4200)],
             keep_ratio=True),
        dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
             allow_negative_crop=True),
        dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)
    ]
]
test_pipeline = _base_.test_pipeline
test_pipeline[1].scale = (2048, 1280)
train_dataloader = dict(batch_size=1, num_workers=1, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = _base_.vit_l_optim_wrapper
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[7],
         gamma=0.1)
]
# EMA of every weight (momentum 1e-4 after the warm-up of its exponential ramp): evaluation
# and saved checkpoints use the averaged weights, as the official ExpMomentumEMAHook.
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=1e-4, gamma=2000,
         update_buffers=True, priority=49)
]
load_from = 'checkpoints/co_dino_vit_large_objects365_mmdet3.pth'
auto_scale_lr = dict(base_batch_size=16)  # 16 GPUs x 1 image
