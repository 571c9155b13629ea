# Co-DINO-Inst ViT-L on COCO (official: 65.8 box / 56.6 mask AP on val, 66.0 / 57.1 on
# test-dev): co_dino_5scale_vit_large_coco.py plus the detector-level mask branch of the
# official co_dino_5scale_vit_large_coco_instance.py (configs/_base_/co_dino_mask_branch.py),
# masks loaded by the training pipeline, bbox + segm evaluation. The lists are the official
# [query head, mask branch, rpn + rcnn, atss].
_base_ = ['./co_dino_5scale_vit_large_coco.py', './_base_/co_dino_mask_branch.py']

_train_cfg = _base_.model.train_cfg
_test_cfg = _base_.model.test_cfg
model = dict(
    mask_roi_extractor=_base_.mask_roi_extractor,
    mask_head=_base_.mask_head,
    mask_iou_head=_base_.mask_iou_head,
    train_cfg=[_train_cfg[0], _base_.mask_train_cfg, _train_cfg[1], _train_cfg[2]],
    test_cfg=[
        dict(_test_cfg[0], mask_thr_binary=0.5),
        _base_.mask_test_cfg,
        _test_cfg[1],
        _test_cfg[2],
    ])

train_pipeline = _base_.train_pipeline
train_pipeline[1] = dict(type='LoadAnnotations', with_bbox=True, with_mask=True)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
