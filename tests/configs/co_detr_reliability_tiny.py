# Tiny Co-Deformable-DETR for the reliability tests (tests/test_reliability*.py): the
# synthetic-data config at 64 px, iteration-based (6 iterations, a checkpoint every 2,
# validation at 4), single-process loading, deterministic, with the crash-safe checkpoint
# hook, the RNG-state hook and the non-finite guard. Point it at generated data with
# --cfg-options {train,val,test}_dataloader.dataset.data_root=DIR/ val_evaluator.ann_file=...
_base_ = '../../configs/co_deformable_detr_synthetic.py'

img_scale = (64, 64)
max_iters = 6
# the base pipelines with the resize step at 64 px
train_pipeline = _base_.train_pipeline
train_pipeline[3].scale = img_scale
test_pipeline = _base_.test_pipeline
test_pipeline[1].scale = img_scale
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=4)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(
        _delete_=True, type='AtomicCheckpointHook', by_epoch=False, interval=2,
        max_keep_ckpts=2, save_best='coco/bbox_mAP', rule='greater'))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0, deterministic=True)
