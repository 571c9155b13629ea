# Co-Deformable-DETR R50 with Mask R-CNN's FCN mask head in its auxiliary RoI head: the
# official co_deformable_detr_mask_r50_1x_coco.py ("variant A" of shared/DESIGN_MASKS.md).
# The mask head trains on the RPN proposals of the encoder maps, next to the aux box head;
# the query (DETR) head is not involved and predicts boxes only. Masks therefore come from
# the auxiliary Faster/Mask R-CNN head, eval_module='two-stage', which this config evaluates
# (bbox and segm AP of that head). The official config keeps eval_module='detr' with
# metric='bbox' (the query head's boxes, no masks); for that, use
#   --cfg-options model.eval_module=detr val_evaluator.metric=bbox test_evaluator.metric=bbox
# A segm evaluation of the 'detr' path stops with a message naming model.eval_module.
_base_ = './co_deformable_detr_r50_1x_coco.py'

mask_roi_head = _base_.model.roi_head[0]
mask_roi_head.update(
    mask_roi_extractor=dict(
        type='SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
        out_channels=_base_.embed_dims,
        featmap_strides=[8, 16, 32, 64],  # the 4 encoder maps; the stride-128 one is unused
        finest_scale=112),
    mask_head=dict(
        type='FCNMaskHead',
        num_convs=4,
        in_channels=_base_.embed_dims,
        conv_out_channels=_base_.embed_dims,
        num_classes=_base_.num_classes,
        loss_mask=dict(type='CrossEntropyLoss', use_mask=True,
                       loss_weight=1.0 * _base_.aux_weight)))  # 12, as the official
mask_train_cfg = _base_.model.train_cfg
mask_train_cfg[1].rcnn.mask_size = 28
mask_test_cfg = _base_.model.test_cfg
mask_test_cfg[1].rcnn.mask_thr_binary = 0.5
model = dict(eval_module='two-stage', roi_head=[mask_roi_head], train_cfg=mask_train_cfg,
             test_cfg=mask_test_cfg)

train_pipeline = _base_.train_pipeline
train_pipeline[1] = dict(type='LoadAnnotations', with_bbox=True, with_mask=True)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
