# The Swin-L backbone of the Co-DINO Swin-L configs (not a config by itself): mmdet's
# SwinTransformer with the official Swin-V1 ImageNet-22k 384-px weights under the official
# config's file name (download from
# https://github.com/SwinTransformer/storage/releases/download/v1.0.0/), converted by mmdet
# on load (convert_weights=True). drop_path 0.3 is the 1x value (0.5 for 2x/LSJ-3x, 0.6 for
# DETR-3x in the official configs).
swin_l_pretrained = 'models/swin_large_patch4_window12_384_22k.pth'
swin_l_backbone = dict(
    _delete_=True,
    type='SwinTransformer',
    pretrain_img_size=384,
    embed_dims=192,
    depths=[2, 2, 18, 2],
    num_heads=[6, 12, 24, 48],
    window_size=12,
    mlp_ratio=4,
    qkv_bias=True,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.3,
    patch_norm=True,
    out_indices=(0, 1, 2, 3),
    with_cp=False,
    convert_weights=True,
    init_cfg=dict(type='Pretrained', checkpoint=swin_l_pretrained))
swin_l_channels = [192, 384, 768, 1536]
