# Tiny Co-DINO-Inst: the official tiny model of shared/reference/official_masks_a
# (codino_inst_tiny_config): tests/configs/co_dino_tiny.py plus the detector-level mask
# branch of configs/co_dino_5scale_r50_1x_coco_instance.py at 64 channels, a mask-IoU fc of
# 128 (1024 officially, shrunk to keep the file small) and the loss weights scaled by this
# model's aux_weight (4): BAR 1.33 * 4 = 5.32, mask IoU 0.5 * 4 = 2.0. train_cfg/test_cfg
# are the official 4-entry lists (query head: at most 1000 detections, soft-NMS 0.8).
_base_ = './co_dino_tiny.py'

_train_cfg = _base_.model.train_cfg
_test_cfg = _base_.model.test_cfg
model = dict(
    mask_roi_extractor=dict(
        type='SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
        out_channels=_base_.embed_dims,
        featmap_strides=[4, 8, 16, 32, 64],
        finest_scale=56),
    mask_head=dict(
        type='SimpleRefineMaskHead',
        num_convs_instance=1,
        num_convs_semantic=2,
        conv_in_channels_instance=_base_.embed_dims,
        conv_in_channels_semantic=_base_.embed_dims,
        conv_out_channels_instance=_base_.embed_dims,
        conv_out_channels_semantic=_base_.embed_dims,
        norm_cfg=dict(type='LN2d'),
        fusion_type='MultiBranchFusionAvg',
        dilations=[1, 3, 5],
        semantic_out_stride=4,
        stage_num_classes=[80, 80, 80, 1],
        stage_sup_size=[14, 28, 56, 112],
        loss_weight=1.33 * _base_.aux_weight,
        loss_cfg=dict(type='BARCrossEntropyLoss',
                      stage_instance_loss_weight=[0.5, 0.75, 0.75, 1.0],
                      boundary_width=2, start_stage=1)),
    mask_iou_head=dict(
        type='CoMaskIoUHead',
        num_convs=2,
        num_fcs=1,
        roi_feat_size=14,
        in_channels=_base_.embed_dims,
        conv_out_channels=_base_.embed_dims,
        fc_out_channels=128,
        num_classes=80,
        score_use_sigmoid=True,
        norm_cfg=dict(type='LN2d'),
        loss_iou=dict(type='MSELoss', loss_weight=0.5 * _base_.aux_weight)),
    train_cfg=[
        _train_cfg[0],
        dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5,
                          min_pos_iou=0.5, match_low_quality=False, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                         add_gt_as_proposals=True),
            mask_thr_binary=0.5,
            mask_size=28,
            pos_weight=-1),
        _train_cfg[1],
        _train_cfg[2],
    ],
    test_cfg=[
        dict(max_per_img=1000, nms=dict(type='soft_nms', iou_threshold=0.8),
             mask_thr_binary=0.5),
        dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5), mask_thr_binary=0.5,
             max_per_img=1000),
        _test_cfg[1],
        _test_cfg[2],
    ])

train_pipeline = _base_.train_pipeline
train_pipeline[1] = dict(type='LoadAnnotations', with_bbox=True, with_mask=True)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
