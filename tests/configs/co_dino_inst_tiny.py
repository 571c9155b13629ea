# Tiny Co-DINO-Inst: the official tiny model of shared/reference/official_masks_a
# (codino_inst_tiny_config): tests/configs/co_dino_tiny.py plus the detector-level mask
# branch of configs/co_dino_5scale_r50_1x_coco_instance.py at 64 channels, a mask-IoU fc of
# 128 (1024 officially, shrunk to keep the file small) and the loss weights scaled by this
# model's aux_weight (4): BAR 1.33 * 4 = 5.32, mask IoU 0.5 * 4 = 2.0. train_cfg/test_cfg
# are the official 4-entry lists (query head: at most 1000 detections, soft-NMS 0.8).
_base_ = ['./co_dino_tiny.py', '../../configs/_base_/co_dino_mask_branch.py']

_train_cfg = _base_.model.train_cfg
_test_cfg = _base_.model.test_cfg
_dims = dict(conv_in_channels_instance=_base_.embed_dims,
             conv_in_channels_semantic=_base_.embed_dims,
             conv_out_channels_instance=_base_.embed_dims,
             conv_out_channels_semantic=_base_.embed_dims)
model = dict(
    mask_roi_extractor=dict(_base_.mask_roi_extractor, out_channels=_base_.embed_dims),
    mask_head=dict(_base_.mask_head, **_dims, loss_weight=1.33 * _base_.aux_weight),
    mask_iou_head=dict(_base_.mask_iou_head, in_channels=_base_.embed_dims,
                       conv_out_channels=_base_.embed_dims, fc_out_channels=128,
                       loss_iou=dict(type='MSELoss', loss_weight=0.5 * _base_.aux_weight)),
    train_cfg=[_train_cfg[0], _base_.mask_train_cfg, _train_cfg[1], _train_cfg[2]],
    test_cfg=[
        dict(max_per_img=1000, nms=dict(type='soft_nms', iou_threshold=0.8),
             mask_thr_binary=0.5),
        _base_.mask_test_cfg,
        _test_cfg[1],
        _test_cfg[2],
    ])

train_pipeline = _base_.train_pipeline
train_pipeline[1] = dict(type='LoadAnnotations', with_bbox=True, with_mask=True)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
