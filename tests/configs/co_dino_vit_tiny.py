# Tiny Co-DINO ViT: the official tiny model of shared/reference/official_vit_a
# (official_codino_vit_tiny_config): the ViT-L COCO config's model with a 4-block ViT
# (128 channels, 2 heads of 64, window 4 in blocks 0 and 2, global blocks 1 and 3, position
# grid 8x8), an SFP neck of 64 channels and the tiny Co-DINO heads of co_dino_tiny.py; the
# ViT-L COCO config's test_cfg and layer-decay optimiser (AdamW 5e-5, weight decay 0.01,
# decay 0.8 over the 4 blocks). 2,444,965 parameters (backbone 902,480, neck 530,240).
_base_ = ['./co_dino_tiny.py', '../../configs/_base_/co_dino_vit_l.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='ViT',
        img_size=128,
        pretrain_img_size=128,
        patch_size=16,
        embed_dim=128,
        depth=4,
        num_heads=2,
        mlp_ratio=4 * 2 / 3,
        drop_path_rate=0.0,
        window_size=4,
        window_block_indexes=[0, 2],
        qkv_bias=True,
        use_act_checkpoint=False,
        init_cfg=None),
    neck=dict(
        _delete_=True,
        type='SFP',
        in_channels=[128],
        out_channels=_base_.embed_dims,
        num_outs=5,
        use_p2=True,
        use_act_checkpoint=False),
    test_cfg=_base_.vit_l_test_cfg)

optim_wrapper = dict(_base_.vit_l_optim_wrapper,
                     paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.8))
