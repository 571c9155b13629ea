# tests/configs/co_detr_faults_tiny.py with the mission config's loop type: epoch-based
# training, a checkpoint and a validation every epoch (set max_epochs on the command line).
_base_ = './co_detr_faults_tiny.py'

train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=2, val_interval=1)
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1))
log_processor = dict(by_epoch=True)
