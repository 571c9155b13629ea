# Co-DINO Swin-L fine-tuned on COCO from the Objects365 detector (official COCO val box AP
# 64.1): the official co_dino_5scale_swin_large_16e_o365tococo.py. Starts from the official
# Objects365 Swin-L Co-DINO (co_dino_5scale_swin_large_22e_o365.pth, converted by
# tools/model_converters/official_to_mmdet3.py; its 365-class layers are left at their
# initialisation by the partial load, as officially); Swin-L with activation checkpointing,
# denoising box noise 0.4 with 500 queries, short side 480..1536 (long <= 2048) with the DETR
# crop branch, Pad /32, test (2048, 1280), AdamW 1e-4 (backbone x0.1), step at epoch 8 of 16,
# 16 GPUs x 1 image.
_base_ = './co_dino_5scale_swin_l_1x_coco.py'

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(with_cp=True, init_cfg=None),  # the weights come from load_from
    query_head=dict(dn_cfg=dict(box_noise_scale=0.4, group_cfg=dict(num_dn_queries=500))))

train_scales = [(s, 2048) for s in range(480, 1537, 32)]
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
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-4))
max_epochs = 16
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8],
         gamma=0.1)
]
load_from = 'checkpoints/co_dino_5scale_swin_large_22e_o365_mmdet3.pth'
