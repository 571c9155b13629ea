# Co-DINO, ResNet-50, LSJ, 36 epochs (lr x0.1 after epoch 30). Official COCO val box
# AP: 54.8. (The scheduler list is complete here: a list without `type` does not build.)
_base_ = './co_dino_5scale_r50_lsj_1x_coco.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[30],
         gamma=0.1)
]
