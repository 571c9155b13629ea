# Tiny Co-Deformable-DETR: the R50 config with every size shrunk, for CPU tests
# and for checking our outputs against the official implementation on
# converted weights. Differences from configs/co_deformable_detr_r50_1x_coco.py:
# ResNet-18 with base_channels 16 (C3-C5: 32/64/128 channels, no pretrained
# weights), 64 channels everywhere (8 heads, 4 levels, 4 points, num_feats 32),
# FFN 128, 2 encoder + 2 decoder layers (num_dec_layer = 2 in the loss weights),
# 50 queries, RoI fc 128. 80 classes.
_base_ = '../../configs/co_deformable_detr_r50_1x_coco.py'

num_dec_layer = 2
lambda_2 = 2.0
aux_weight = num_dec_layer * lambda_2  # 4 instead of 12
embed_dims = 64
ffn_dims = 128

tiny_roi_head = _base_.model.roi_head[0]
tiny_roi_head.bbox_roi_extractor.out_channels = embed_dims
tiny_roi_head.bbox_head.update(in_channels=embed_dims, fc_out_channels=128)
tiny_roi_head.bbox_head.loss_cls.loss_weight = 1.0 * aux_weight
tiny_roi_head.bbox_head.loss_bbox.loss_weight = 10.0 * aux_weight

tiny_atss_head = _base_.model.bbox_head[0]
tiny_atss_head.update(in_channels=embed_dims, feat_channels=embed_dims)
tiny_atss_head.loss_cls.loss_weight = 1.0 * aux_weight
tiny_atss_head.loss_bbox.loss_weight = 2.0 * aux_weight
tiny_atss_head.loss_centerness.loss_weight = 1.0 * aux_weight

model = dict(
    backbone=dict(depth=18, base_channels=16, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128], out_channels=embed_dims),
    query_head=dict(
        num_query=50,
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
    roi_head=[tiny_roi_head],
    bbox_head=[tiny_atss_head])
