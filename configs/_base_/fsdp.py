# Switch (not a config by itself): train with parameters, gradients and optimiser states
# sharded across processes, through mmengine's FlexibleRunner + FSDPStrategy (PyTorch FSDP).
# Add it to a config's _base_ list, e.g. a file configs/my_vit_l_fsdp.py with
#   _base_ = ['./co_dino_5scale_vit_large_coco.py', './_base_/fsdp.py']
# and launch as usual: bash tools/dist_train.sh configs/my_vit_l_fsdp.py 8
# Every submodule of more than 10 M parameters (each ViT-L block, the SFP's widest level)
# becomes one FSDP unit. PyTorch's FSDP needs an accelerator: on CPU-only machines
# (this project's) it stops with "FSDP needs a non-CPU accelerator device".
runner_type = 'FlexibleRunner'
strategy = dict(
    type='FSDPStrategy',
    model_wrapper=dict(
        auto_wrap_policy=dict(type='torch.distributed.fsdp.wrap.size_based_auto_wrap_policy',
                              min_num_params=int(1e7)),
        use_orig_params=True))  # keeps parameter names for the layer-decay groups
