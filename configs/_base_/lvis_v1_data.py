# LVIS v1 data and evaluation of the Co-DINO LVIS configs (not a config by itself).
# Images are COCO 2017's: LVISV1Dataset reads each image's coco_url
# (http://images.cocodataset.org/train2017/...) as a path under data_root, so data/lvis_v1/
# holds annotations/lvis_v1_{train,val}.json and the train2017/ and val2017/ folders (or
# links to them). Training samples classes by repeat factor (ClassBalancedDataset,
# oversample_thr 1e-3), as the official LVIS base. Evaluation: lvis-api AP (rare / common /
# frequent) with max_dets detections per image: 1000 is the setting of the official Co-DETR
# (and EVA-02) LVIS numbers, lvis-api's and mmdet's default is 300.
lvis_data_root = 'data/lvis_v1/'
lvis_num_classes = 1203
lvis_train_dataset = dict(
    type='LVISV1Dataset',
    data_root=lvis_data_root,
    ann_file='annotations/lvis_v1_train.json',
    data_prefix=dict(img=''),
    filter_cfg=dict(filter_empty_gt=True, min_size=32))
lvis_val_dataset = dict(
    _delete_=True,
    type='LVISV1Dataset',
    data_root=lvis_data_root,
    ann_file='annotations/lvis_v1_val.json',
    data_prefix=dict(img=''),
    test_mode=True)
lvis_evaluator = dict(
    _delete_=True,
    type='CappedLVISMetric',
    ann_file=lvis_data_root + 'annotations/lvis_v1_val.json',
    metric=['bbox'],
    max_dets=1000)
