# Co-DINO-Inst ViT-L on LVIS v1 (official LVIS val 67.3 box / 60.7 mask AP):
# co_dino_5scale_vit_large_lvis.py plus the detector-level mask branch
# (configs/_base_/co_dino_mask_branch.py) with 1203 classes and the official LVIS mask loss
# weight 1.0 x 12 (COCO: 1.33 x 12); the lists are [query head, mask branch, rpn + rcnn,
# atss]; bbox + segm evaluation (lvis-api, up to 1000 detections per image). The same
# departures from the official test-only file as the detection config.
_base_ = ['./co_dino_5scale_vit_large_lvis.py', './_base_/co_dino_mask_branch.py']

_train_cfg = _base_.model.train_cfg
_test_cfg = _base_.model.test_cfg
model = dict(
    mask_roi_extractor=_base_.mask_roi_extractor,
    mask_head=dict(_base_.mask_head, loss_weight=1.0 * _base_.aux_weight),
    mask_iou_head=_base_.mask_iou_head,
    train_cfg=[_train_cfg[0], _base_.mask_train_cfg, _train_cfg[1], _train_cfg[2]],
    test_cfg=[
        _test_cfg[0],
        dict(_base_.mask_test_cfg, max_per_img=100),  # official value, not read
        _test_cfg[1],
        _test_cfg[2],
    ])

val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
