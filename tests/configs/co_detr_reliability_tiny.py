# Tiny Co-Deformable-DETR for the reliability tests (tests/test_reliability*.py): the
# synthetic-data config at 64 px, iteration-based (6 iterations, a checkpoint every 2,
# validation at 4), single-process loading, deterministic, with the crash-safe checkpoint
# hook, the RNG-state hook and the non-finite guard. Point it at generated data with
# --cfg-options {train,val,test}_dataloader.dataset.data_root=DIR/ val_evaluator.ann_file=...
_base_ = '../../configs/co_deformable_detr_synthetic.py'

custom_imports = dict(
    imports=[
        'projects.codetr', 'projects.codetr.datasets', 'projects.codetr.transforms',
        'projects.codetr.optim_wrapper', 'projects.codetr.checkpoint_hook',
        'projects.codetr.rng_state_hook'
    ],
    allow_failed_imports=False)

img_scale = (64, 64)
max_iters = 6
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type='CheckedCocoDataset', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type='CheckedCocoDataset', pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=4)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
optim_wrapper = dict(type='FiniteCheckOptimWrapper', on_nonfinite='raise')
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(
        _delete_=True, type='AtomicCheckpointHook', by_epoch=False, interval=2,
        max_keep_ckpts=2, save_best='coco/bbox_mAP', rule='greater'))
custom_hooks = [dict(type='RandomStateHook')]
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0, deterministic=True)
