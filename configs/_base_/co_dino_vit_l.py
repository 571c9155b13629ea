# The ViT-L backbone and SFP neck of the Co-DINO ViT-L configs (not a config by itself):
# an EVA-02-style ViT-L/16 (1024 channels, 24 blocks of 16 heads, SwiGLU 2730, 2-D RoPE,
# absolute positions of a 32x32 grid resized to the input) with ViTDet's layout, and the
# simple feature pyramid (strides 4-64, 256 channels). Values of the official
# co_dino_5scale_vit_large_coco.py (shared/DESIGN_VITL.md sections 2, 3, 5). The official
# window list also names blocks 24-26, which do not exist; they are left out here.
# The COCO window: 24 (global blocks 3, 7, 11, 15, 19, 23); LVIS: 16 (global every 3rd).
vit_l_window_blocks_coco = [i for i in range(24) if i % 4 != 3]
vit_l_window_blocks_lvis = [i for i in range(24) if i % 3 != 2]
vit_l_backbone = dict(
    _delete_=True,
    type='ViT',
    img_size=1536,
    pretrain_img_size=512,
    patch_size=16,
    embed_dim=1024,
    depth=24,
    num_heads=16,
    mlp_ratio=4 * 2 / 3,
    drop_path_rate=0.4,
    window_size=24,
    window_block_indexes=vit_l_window_blocks_coco,
    qkv_bias=True,
    use_act_checkpoint=True,  # recompute each block in the backward pass (same keys)
    use_sdpa=True,  # fused attention: the global blocks' logits are not materialised
    init_cfg=None)
vit_l_neck = dict(
    _delete_=True,
    type='SFP',
    in_channels=[1024],
    out_channels=256,
    num_outs=5,
    use_p2=True,
    use_act_checkpoint=False)
# AdamW 5e-5, weight decay 0.01, layer-wise lr decay 0.8 over the 24 blocks (blocks.i at
# 0.8^(24 - i), patch/position embedding 0.8^25, neck and heads 1.0), grad clip 0.1.
vit_l_optim_wrapper = dict(
    _delete_=True,
    type='FiniteCheckOptimWrapper',
    on_nonfinite='raise',
    optimizer=dict(type='AdamW', lr=5e-5, weight_decay=0.01),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    constructor='ViTLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.8))
# The ViT-L configs' test lists (official): query head up to 1000 detections after soft-NMS
# 0.8; RPN 8000 -> 2000 (NMS 0.9) and RoI soft-NMS 0.5 up to 1000; ATSS soft-NMS 0.6 up to
# 100. min_bbox_size=-1 keeps ATSS boxes of zero width/height, as the official (mmdet 2.x)
# dense heads; mmdet 3.x drops boxes with a side <= min_bbox_size when it is >= 0.
vit_l_test_cfg = [
    dict(max_per_img=1000, nms=dict(type='soft_nms', iou_threshold=0.8)),
    dict(
        rpn=dict(nms_pre=8000, max_per_img=2000, nms=dict(type='nms', iou_threshold=0.9),
                 min_bbox_size=0),
        rcnn=dict(score_thr=0.0, nms=dict(type='soft_nms', iou_threshold=0.5),
                  max_per_img=1000)),
    dict(nms_pre=1000, min_bbox_size=-1, score_thr=0.0,
         nms=dict(type='soft_nms', iou_threshold=0.6), max_per_img=100),
]
