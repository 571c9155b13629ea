"""The FSDP switch (configs/_base_/fsdp.py): mmengine's FlexibleRunner with FSDPStrategy.

PyTorch 2.13's FSDP needs an accelerator (it stops with "FSDP needs a non-CPU accelerator
device" on this project's CPU-only machines), so the sharded run itself is not executed here;
the switch is checked up to the runner and the FSDP wrapper it builds.
"""
from conftest import ROOT, load_cfg


def test_fsdp_switch_builds_the_flexible_runner(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import RUNNERS
    child = tmp_path / 'vit_tiny_fsdp.py'
    child.write_text(f"_base_ = ['{ROOT / 'tests' / 'configs' / 'co_dino_vit_tiny.py'}', "
                     f"'{ROOT / 'configs' / '_base_' / 'fsdp.py'}']\n")
    cfg = Config.fromfile(str(child))
    assert cfg.runner_type == 'FlexibleRunner' and cfg.strategy.type == 'FSDPStrategy'
    cfg.work_dir = str(tmp_path / 'work')
    runner = RUNNERS.build(cfg)
    assert type(runner).__name__ == 'FlexibleRunner'
    assert type(runner.strategy).__name__ == 'FSDPStrategy'
    wrapper = runner.strategy.model_wrapper
    assert wrapper['use_orig_params'] and wrapper['auto_wrap_policy']['min_num_params'] == 1e7
    assert load_cfg(ROOT / 'tests' / 'configs' / 'co_dino_vit_tiny.py').get('runner_type') is None
