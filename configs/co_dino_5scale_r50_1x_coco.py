# Co-DINO, ResNet-50, 5 feature levels, 12 epochs on COCO with DETR augmentation
# (Zong et al., ICCV 2023). Query head: DINO (CDN denoising, top-k by the max class
# logit, look-forward-twice) with quality focal loss; auxiliary heads: Faster R-CNN
# (RPN + RoI) and ATSS on the 6 encoder maps (strides 4..128); their positives become
# extra decoder queries. Official COCO val box AP: 52.1.
# Everything not set here (data, augmentation, schedule, hooks) is the Co-Deformable-DETR
# R50 recipe, which is also the official Co-DINO 1x one.
_base_ = './co_deformable_detr_r50_1x_coco.py'

num_classes = 80  # the one place to change it (every head reads it)
num_dec_layer = 6
lambda_2 = 2.0  # weight of the auxiliary heads
aux_weight = num_dec_layer * lambda_2  # official scaling: 12
embed_dims = 256
num_levels = 5  # C2-C5 + a stride-64 level; the aux heads add a 6th (stride 128)
num_query = 900

_rpn_head = _base_.model.rpn_head
_rpn_head.anchor_generator.strides = [4, 8, 16, 32, 64, 128]
_roi_head = _base_.model.roi_head[0]
_roi_head.bbox_roi_extractor.update(featmap_strides=[4, 8, 16, 32, 64], finest_scale=56)
_roi_head.bbox_head.num_classes = num_classes
_atss_head = _base_.model.bbox_head[0]
_atss_head.anchor_generator.strides = [4, 8, 16, 32, 64, 128]
_atss_head.num_classes = num_classes

model = dict(
    backbone=dict(out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[256, 512, 1024, 2048], num_outs=num_levels),
    query_head=dict(
        _delete_=True,
        type='CoDINOHead',
        num_query=num_query,
        num_classes=num_classes,
        embed_dims=embed_dims,
        num_feature_levels=num_levels,
        sync_cls_avg_factor=True,
        with_box_refine=True,
        as_two_stage=True,
        mixed_selection=True,
        num_co_heads=2,  # must equal len(roi_head) + len(bbox_head)
        with_coord_feat=False,
        max_pos_coords=300,
        lambda_1=1.0,
        use_zero_padding=False,
        dn_cfg=dict(
            label_noise_scale=0.5,
            box_noise_scale=1.0,
            group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100)),
        encoder=dict(
            num_layers=6,
            with_cp=4,  # activation checkpointing of the first 4 layers (training)
            layer_cfg=dict(
                self_attn_cfg=dict(
                    embed_dims=embed_dims, num_levels=num_levels, dropout=0.0,
                    batch_first=True),
                ffn_cfg=dict(
                    embed_dims=embed_dims, feedforward_channels=2048, ffn_drop=0.0))),
        decoder=dict(
            num_layers=num_dec_layer,
            return_intermediate=True,
            layer_cfg=dict(
                self_attn_cfg=dict(
                    embed_dims=embed_dims, num_heads=8, dropout=0.0, batch_first=True),
                cross_attn_cfg=dict(
                    embed_dims=embed_dims, num_levels=num_levels, dropout=0.0,
                    batch_first=True),
                ffn_cfg=dict(
                    embed_dims=embed_dims, feedforward_channels=2048, ffn_drop=0.0)),
            post_norm_cfg=None),
        positional_encoding=dict(
            num_feats=embed_dims // 2, normalize=True, temperature=20, offset=0.0),
        loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    rpn_head=_rpn_head,
    roi_head=[_roi_head],
    bbox_head=[_atss_head],
    # [query head, rpn + rcnn of roi_head[0], bbox_head[0]]; the official test path:
    # top num_query (query, class) pairs -> soft-NMS (IoU 0.8) -> 300 per image.
    test_cfg=[
        dict(max_per_img=300, nms=dict(type='soft_nms', iou_threshold=0.8)),
        _base_.model.test_cfg[1],
        _base_.model.test_cfg[2],
    ])

# Co-DINO lowers the learning rate of the backbone only.
optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True, custom_keys={'backbone': dict(lr_mult=0.1)}))
