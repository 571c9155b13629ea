# Tiny Co-Deformable-DETR with Mask R-CNN's FCN mask head in its auxiliary RoI head:
# the official tiny model of shared/reference/official_masks_a (codeform_mask_tiny_config),
# i.e. tests/configs/co_deformable_detr_tiny.py plus the mask branch of the official
# co_deformable_detr_mask_r50_1x_coco.py at 64 channels (loss weight 1.0 * aux_weight).
# Masks come from eval_module='two-stage'.
_base_ = './co_deformable_detr_tiny.py'

mask_roi_head = _base_.model.roi_head[0]
mask_roi_head.update(
    mask_roi_extractor=dict(
        type='SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
        out_channels=_base_.embed_dims,
        featmap_strides=[8, 16, 32, 64],
        finest_scale=112),
    mask_head=dict(
        type='FCNMaskHead',
        num_convs=4,
        in_channels=_base_.embed_dims,
        conv_out_channels=_base_.embed_dims,
        num_classes=80,
        loss_mask=dict(type='CrossEntropyLoss', use_mask=True,
                       loss_weight=1.0 * _base_.aux_weight)))
mask_train_cfg = _base_.model.train_cfg
mask_train_cfg[1].rcnn.mask_size = 28
mask_test_cfg = _base_.model.test_cfg
mask_test_cfg[1].rcnn.mask_thr_binary = 0.5
model = dict(roi_head=[mask_roi_head], train_cfg=mask_train_cfg, test_cfg=mask_test_cfg)
