# Co-DINO-Inst, ResNet-50: Co-DINO R50 (co_dino_5scale_r50_1x_coco.py) plus the
# detector-level mask branch of the official co_dino_5scale_vit_large_coco_instance.py
# (configs/_base_/co_dino_mask_branch.py; "variant B" of shared/DESIGN_MASKS.md). No official
# R50 instance config exists: every mask-branch value is the official ViT-L one, the rest is
# Co-DINO R50.
# - training: the query head's top-1000 (query, class) boxes of its last decoder layer
#   (denoising queries included, as officially: train_cfg[1].proposals_with_dn=False drops
#   them) are assigned to the GT boxes (MaxIoU 0.5) and sampled (512, 25 % positives, GT
#   added); the positives' 14x14 RoI features of the encoder maps go through the refine
#   mask head (14 -> 112 px, semantic branch on the stride-4 encoder map), trained with the
#   BAR loss, and the mask-IoU head;
# - test: masks of the final detections (soft-NMS, up to 1000 per image), refined
#   coarse-to-fine and pasted; the segm score is box score x predicted mask IoU, the box
#   keeps its score.
# train_cfg/test_cfg are the official 4-entry lists [query head, mask branch, rpn + rcnn,
# atss]. 83,863,267 parameters.
_base_ = ['./co_dino_5scale_r50_1x_coco.py', './_base_/co_dino_mask_branch.py']

_train_cfg = _base_.model.train_cfg
_test_cfg = _base_.model.test_cfg
model = dict(
    mask_roi_extractor=_base_.mask_roi_extractor,
    mask_head=_base_.mask_head,
    mask_iou_head=_base_.mask_iou_head,
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
