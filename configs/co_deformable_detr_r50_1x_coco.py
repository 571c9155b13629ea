# Co-Deformable-DETR, ResNet-50, 12 epochs on COCO (Zong et al., ICCV 2023).
# Query head: Deformable-DETR++ (two-stage, box refine, mixed selection,
# look-forward-twice); auxiliary heads: Faster R-CNN (RPN + RoI) and ATSS,
# trained on the encoder output; their positives become extra decoder queries.
# Reported COCO val box AP: Deformable-DETR++ 47.1 -> Co-Deformable-DETR 49.5.
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py', 'mmdet::_base_/default_runtime.py'
]
custom_imports = dict(imports=['projects.codetr'], allow_failed_imports=False)

num_classes = 80
num_dec_layer = 6
lambda_2 = 2.0  # weight of the auxiliary heads
aux_weight = num_dec_layer * lambda_2  # official scaling: 12
embed_dims = 256
num_levels = 4

model = dict(
    type='CoDETR',
    with_pos_coord=True,
    eval_module='detr',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='ChannelMapper',
        in_channels=[512, 1024, 2048],
        kernel_size=1,
        out_channels=embed_dims,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        num_outs=num_levels),
    query_head=dict(
        type='CoDeformDETRHead',
        num_query=300,
        num_classes=num_classes,
        embed_dims=embed_dims,
        num_feature_levels=num_levels,
        sync_cls_avg_factor=True,
        with_box_refine=True,
        as_two_stage=True,
        mixed_selection=True,
        num_co_heads=2,  # must equal len(roi_head) + len(bbox_head)
        with_coord_feat=True,
        max_pos_coords=300,
        lambda_1=1.0,
        use_zero_padding=False,
        encoder=dict(
            num_layers=6,
            layer_cfg=dict(
                self_attn_cfg=dict(
                    embed_dims=embed_dims, num_levels=num_levels, dropout=0.0,
                    batch_first=True),
                ffn_cfg=dict(
                    embed_dims=embed_dims, feedforward_channels=2048, ffn_drop=0.0))),
        decoder=dict(
            num_layers=num_dec_layer,
            return_intermediate=True,
            look_forward_twice=True,
            layer_cfg=dict(
                self_attn_cfg=dict(
                    embed_dims=embed_dims, num_heads=8, dropout=0.0, batch_first=True),
                cross_attn_cfg=dict(
                    embed_dims=embed_dims, num_levels=num_levels, dropout=0.0,
                    batch_first=True),
                ffn_cfg=dict(
                    embed_dims=embed_dims, feedforward_channels=2048, ffn_drop=0.0)),
            post_norm_cfg=None),
        positional_encoding=dict(num_feats=embed_dims // 2, normalize=True, offset=-0.5),
        loss_cls=dict(
            type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    rpn_head=dict(
        type='RPNHead',
        in_channels=embed_dims,
        feat_channels=embed_dims,
        anchor_generator=dict(
            type='AnchorGenerator',
            octave_base_scale=4,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0 * aux_weight),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0 * aux_weight)),
    roi_head=[
        dict(
            type='CoStandardRoIHead',
            bbox_roi_extractor=dict(
                type='SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=embed_dims,
                featmap_strides=[8, 16, 32, 64],
                finest_scale=112),
            bbox_head=dict(
                type='Shared2FCBBoxHead',
                in_channels=embed_dims,
                fc_out_channels=1024,
                roi_feat_size=7,
                num_classes=num_classes,
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[0.0, 0.0, 0.0, 0.0],
                    target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                loss_cls=dict(
                    type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0 * aux_weight),
                loss_bbox=dict(type='GIoULoss', loss_weight=10.0 * aux_weight)))
    ],
    bbox_head=[
        dict(
            type='CoATSSHead',
            num_classes=num_classes,
            in_channels=embed_dims,
            stacked_convs=1,
            feat_channels=embed_dims,
            anchor_generator=dict(
                type='AnchorGenerator',
                ratios=[1.0],
                octave_base_scale=8,
                scales_per_octave=1,
                strides=[8, 16, 32, 64, 128]),
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_decoded_bbox=True,
            loss_cls=dict(
                type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                loss_weight=1.0 * aux_weight),
            loss_bbox=dict(type='GIoULoss', loss_weight=2.0 * aux_weight),
            loss_centerness=dict(
                type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0 * aux_weight))
    ],
    # [query head, rpn + rcnn of roi_head[0], bbox_head[0]]
    train_cfg=[
        dict(
            assigner=dict(
                type='HungarianAssigner',
                match_costs=[
                    dict(type='FocalLossCost', weight=2.0),
                    dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                    dict(type='IoUCost', iou_mode='giou', weight=2.0)
                ])),
        dict(
            rpn=dict(
                assigner=dict(
                    type='MaxIoUAssigner',
                    pos_iou_thr=0.7,
                    neg_iou_thr=0.3,
                    min_pos_iou=0.3,
                    match_low_quality=True,
                    ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler',
                    num=256,
                    pos_fraction=0.5,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=False),
                allowed_border=-1,
                pos_weight=-1,
                debug=False),
            rpn_proposal=dict(
                nms_pre=4000,
                max_per_img=1000,
                nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            rcnn=dict(
                assigner=dict(
                    type='MaxIoUAssigner',
                    pos_iou_thr=0.5,
                    neg_iou_thr=0.5,
                    min_pos_iou=0.5,
                    match_low_quality=False,
                    ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler',
                    num=512,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                pos_weight=-1,
                debug=False)),
        dict(
            assigner=dict(type='ATSSAssigner', topk=9),
            allowed_border=-1,
            pos_weight=-1,
            debug=False)
    ],
    test_cfg=[
        dict(max_per_img=100),
        dict(
            rpn=dict(
                nms_pre=1000,
                max_per_img=1000,
                nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            rcnn=dict(
                score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)),
        dict(
            nms_pre=1000,
            # -1: keep boxes of zero width/height, as the official (mmdet 2.x) dense heads;
            # mmdet 3.x drops boxes with a side <= min_bbox_size when it is >= 0
            min_bbox_size=-1,
            score_thr=0.0,
            nms=dict(type='nms', iou_threshold=0.6),
            max_per_img=100)
    ])

# DETR multi-scale + crop augmentation; Pad size divisor 1 (data_preprocessor).
train_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333),
                (640, 1333), (672, 1333), (704, 1333), (736, 1333), (768, 1333),
                (800, 1333)]
train_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(400, 4200), (500, 4200), (600, 4200)],
                    keep_ratio=True),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)
            ]
        ]),
    dict(type='PackDetInputs')
]
# COCO box AP; unlike mmdet's CocoMetric, also for annotation files without `info`.
val_evaluator = dict(type='CheckedCocoMetric')
test_evaluator = val_evaluator
# The test pipeline is mmdet's (LoadImageFromFile), which DetInferencer relies on.
# 8 GPUs x 2 images; images without boxes are kept, as in the official config.
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    dataset=dict(
        type='CheckedCocoDataset', filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline))

# Stops (or, with on_nonfinite='skip', skips the step) on a NaN/inf loss or gradient,
# naming the loss term and the iteration.
optim_wrapper = dict(
    type='FiniteCheckOptimWrapper',
    on_nonfinite='raise',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1)
        }))

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[11],
         gamma=0.1)
]
# Crash-safe checkpoints (temp file + rename; old ones removed after the new one is
# complete) and exact resume (random generator states saved in the checkpoint).
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1))
custom_hooks = [dict(type='RandomStateHook')]
# lr 2e-4 is for 16 images per iteration (8 GPUs x 2); --auto-scale-lr rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=16)
