# Co-DINO, ResNet-50, 12 epochs with large-scale jitter (LSJ): 1024x1024 canvas,
# resize ratio 0.1-2.0, crop, copy-paste of up to 100 objects between images, pad with
# 114. Official COCO val box AP: 52.1. with_attn_mask=False: every image is the whole
# padded canvas (no padding mask; targets normalised by the canvas), as officially.
_base_ = './co_dino_5scale_r50_1x_coco.py'

image_size = (1024, 1024)
model = dict(with_attn_mask=False)

# per image, before mixing: LSJ resize/crop, then pad to the canvas
load_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_type='absolute_range',
        crop_size=image_size,
        recompute_bbox=True,
        allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
]
# CopyPaste pastes the objects of a second image (it needs the instance masks)
train_pipeline = [
    dict(type='CopyPaste', max_num_pasted=100),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='MultiImageMixDataset',
        dataset=dict(
            type='CheckedCocoDataset',
            data_root={{_base_.data_root}},
            ann_file='annotations/instances_train2017.json',
            data_prefix=dict(img='train2017/'),
            filter_cfg=dict(filter_empty_gt=False),
            pipeline=load_pipeline,
            backend_args={{_base_.backend_args}}),
        pipeline=train_pipeline))

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
