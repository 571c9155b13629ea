# Tiny Co-DINO: configs/co_dino_5scale_r50_1x_coco.py shrunk exactly as the official tiny
# model (../shared/reference/co_dino_tiny_official_hparams.json): ResNet-18 with
# base_channels 16 (C2-C5: 16/32/64/128 channels, no pretrained weights), 64 channels,
# 5 levels, 8 heads, 4 points, FFN 128, 2 encoder + 2 decoder layers (num_dec_layer = 2
# in the loss weights), 50 queries, 10 denoising queries, no activation checkpointing,
# RoI fc 128. 80 classes; 292 state-dict keys, 1,804,069 parameters.
_base_ = '../../configs/co_dino_5scale_r50_1x_coco.py'

num_dec_layer = 2
lambda_2 = 2.0
aux_weight = num_dec_layer * lambda_2  # 4 instead of 12
embed_dims = 64
ffn_dims = 128

_roi_head = _base_.model.roi_head[0]
_roi_head.bbox_roi_extractor.out_channels = embed_dims
_roi_head.bbox_head.update(in_channels=embed_dims, fc_out_channels=128)
_roi_head.bbox_head.loss_cls.loss_weight = 1.0 * aux_weight
_roi_head.bbox_head.loss_bbox.loss_weight = 10.0 * aux_weight

_atss_head = _base_.model.bbox_head[0]
_atss_head.update(in_channels=embed_dims, feat_channels=embed_dims)
_atss_head.loss_cls.loss_weight = 1.0 * aux_weight
_atss_head.loss_bbox.loss_weight = 2.0 * aux_weight
_atss_head.loss_centerness.loss_weight = 1.0 * aux_weight

model = dict(
    backbone=dict(depth=18, base_channels=16, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=embed_dims),
    query_head=dict(
        num_query=50,
        embed_dims=embed_dims,
        dn_cfg=dict(group_cfg=dict(num_dn_queries=10)),
        encoder=dict(
            num_layers=2,
            with_cp=0,
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
    roi_head=[_roi_head],
    bbox_head=[_atss_head])
