# The `make demo` model with masks: co_deformable_detr_synthetic.py plus Co-DINO-Inst's
# detector-level mask branch (refine mask head + mask-IoU head of
# co_dino_5scale_r50_1x_coco_instance.py) on the Co-Deformable-DETR query head's boxes,
# sized for 128 px images on 2 CPU cores:
# - the query head's encoder has 4 levels (strides 8..64), so the semantic branch reads the
#   stride-8 map and the RoI features come from strides 8..64 (finest_scale 112);
# - 32 mask channels (stages 32/16/8; COCO: 256/128/64) and a 256-wide mask-IoU fc;
# - at most 4 positive RoIs per image (sampler num 16; COCO: 512 -> 128), from the query
#   head's top 100 (query, class) boxes (its test_cfg[0].max_per_img; COCO: 1000); the
#   mask branch costs about 0.12 s per positive RoI and batch of 16 on 2 CPU cores, and
#   4 per image keep `make demo` within 20 minutes (boxes alone: 0.7 s per iteration,
#   with masks 1.25 s).
# Trains boxes and masks; evaluates bbox and segm (segm score = box score x mask IoU).
_base_ = ['./co_deformable_detr_synthetic.py', './_base_/co_dino_mask_branch.py']

mask_channels = 32
_channels = dict(conv_in_channels_instance=_base_.embed_dims,
                 conv_in_channels_semantic=_base_.embed_dims,
                 conv_out_channels_instance=mask_channels,
                 conv_out_channels_semantic=mask_channels)
model = dict(
    mask_roi_extractor=dict(_base_.mask_roi_extractor, out_channels=_base_.embed_dims,
                            featmap_strides=[8, 16, 32, 64], finest_scale=112),
    mask_head=dict(_base_.mask_head, **_channels, semantic_out_stride=8,
                   stage_num_classes=[_base_.num_classes] * 3 + [1],
                   loss_weight=1.33 * _base_.aux_weight),
    mask_iou_head=dict(_base_.mask_iou_head, in_channels=_base_.embed_dims,
                       conv_out_channels=mask_channels, fc_out_channels=256,
                       num_classes=_base_.num_classes,
                       loss_iou=dict(type='MSELoss', loss_weight=0.5 * _base_.aux_weight)),
    train_cfg=[
        _base_.model.train_cfg[0],
        dict(_base_.mask_train_cfg,
             sampler=dict(_base_.mask_train_cfg.sampler, num=16)),  # 4 positives per image
        _base_.model.train_cfg[1],
        _base_.model.train_cfg[2],
    ],
    test_cfg=[
        _base_.model.test_cfg[0],
        _base_.mask_test_cfg,
        _base_.model.test_cfg[1],
        _base_.model.test_cfg[2],
    ])

train_pipeline = _base_.train_pipeline
train_pipeline[1] = dict(type='LoadAnnotations', with_bbox=True, with_mask=True)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
