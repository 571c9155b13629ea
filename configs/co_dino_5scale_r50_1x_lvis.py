# Co-DINO R50 on LVIS v1 (1203 classes), 12 epochs with the DETR augmentation: the official
# co_dino_5scale_r50_1x_lvis.py (which inherits a segm evaluation it cannot do: no mask head;
# here bbox only). Data and evaluation: configs/_base_/lvis_v1_data.py (repeat-factor
# sampling, lvis-api AP with up to 1000 detections per image as the official numbers).
_base_ = ['./co_dino_5scale_r50_1x_coco.py', './_base_/lvis_v1_data.py']

model = dict(num_classes=_base_.lvis_num_classes)  # every head

train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ClassBalancedDataset',
        oversample_thr=1e-3,
        dataset=dict(_base_.lvis_train_dataset, pipeline=_base_.train_pipeline)))
val_dataloader = dict(dataset=dict(_base_.lvis_val_dataset, pipeline=_base_.test_pipeline))
test_dataloader = val_dataloader
val_evaluator = _base_.lvis_evaluator
test_evaluator = val_evaluator
