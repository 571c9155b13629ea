# Tiny Co-Deformable-DETR: the R50 config with every size shrunk, for CPU tests
# and for checking our outputs against the official implementation on
# converted weights. Differences from configs/co_deformable_detr_r50_1x_coco.py:
# ResNet-18 with base_channels 16 (C3-C5: 32/64/128 channels, no pretrained
# weights), 64 channels everywhere (8 heads, 4 levels, 4 points, num_feats 32),
# FFN 128, 2 encoder + 2 decoder layers (num_dec_layer = 2 in the loss weights),
# 50 queries, RoI fc 128. 80 classes.
_base_ = '../../configs/co_deformable_detr_r50_1x_coco.py'

num_classes = 80
num_dec_layer = 2
lambda_2 = 2.0
aux_weight = num_dec_layer * lambda_2
embed_dims = 64
ffn_dims = 128

model = dict(
    backbone=dict(depth=18, base_channels=16, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128], out_channels=embed_dims),
    query_head=dict(
        num_query=50,
        num_classes=num_classes,
        embed_dims=embed_dims,
        encoder=dict(
            num_layers=2,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=embed_dims),
                ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=ffn_dims))),
        decoder=dict(
            num_layers=num_dec_layer,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=embed_dims),
                cross_attn_cfg=dict(embed_dims=embed_dims),
                ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=ffn_dims))),
        positional_encoding=dict(num_feats=embed_dims // 2)),
    rpn_head=dict(
        in_channels=embed_dims,
        feat_channels=embed_dims,
        loss_cls=dict(loss_weight=1.0 * aux_weight),
        loss_bbox=dict(loss_weight=1.0 * aux_weight)),
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
                fc_out_channels=128,
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
    ])
