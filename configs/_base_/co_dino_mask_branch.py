# Co-DINO-Inst's detector-level mask branch (not a config by itself): the values of the
# official co_dino_5scale_vit_large_coco_instance.py (shared/DESIGN_MASKS.md sections 4-5)
# for 256-channel encoder maps of strides 4-64, 80 classes and aux_weight 12. The configs
# put mask_train_cfg / mask_test_cfg at index 1 of their train_cfg / test_cfg lists.
mask_roi_extractor = dict(
    type='SingleRoIExtractor',
    roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
    out_channels=256,
    featmap_strides=[4, 8, 16, 32, 64],
    finest_scale=56)
mask_head = dict(
    type='SimpleRefineMaskHead',
    num_convs_instance=1,
    num_convs_semantic=2,
    conv_in_channels_instance=256,
    conv_in_channels_semantic=256,
    conv_kernel_size_instance=3,
    conv_kernel_size_semantic=3,
    conv_out_channels_instance=256,
    conv_out_channels_semantic=256,
    conv_cfg=None,
    norm_cfg=dict(type='LN2d'),
    fusion_type='MultiBranchFusionAvg',
    dilations=[1, 3, 5],
    semantic_out_stride=4,
    stage_num_classes=[80, 80, 80, 1],
    stage_sup_size=[14, 28, 56, 112],
    pre_upsample_last_stage=False,
    upsample_cfg=dict(type='bilinear', scale_factor=2),
    loss_weight=1.33 * 12,  # 15.96
    loss_cfg=dict(
        type='BARCrossEntropyLoss',
        stage_instance_loss_weight=[0.5, 0.75, 0.75, 1.0],
        boundary_width=2,
        start_stage=1))
mask_iou_head = dict(
    type='CoMaskIoUHead',
    num_convs=2,
    num_fcs=1,
    roi_feat_size=14,
    in_channels=256,
    conv_out_channels=256,
    fc_out_channels=1024,
    num_classes=80,
    score_use_sigmoid=True,
    norm_cfg=dict(type='LN2d'),
    loss_iou=dict(type='MSELoss', loss_weight=0.5 * 12))  # 6.0
mask_train_cfg = dict(
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
    mask_thr_binary=0.5,  # the mask-IoU targets' threshold
    mask_size=28,  # official field, not read
    pos_weight=-1,
    proposals_with_dn=True)  # the denoising queries' boxes are training proposals too
# score_thr / nms / max_per_img: official fields, not read (test_cfg[0] sets the count)
mask_test_cfg = dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5),
                     mask_thr_binary=0.5, max_per_img=1000, mask_chunk_size=150)
