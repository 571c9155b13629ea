"""Config checks and data errors of CoDETR's detector-level mask branch (Co-DINO-Inst)."""
import copy

import pytest
from conftest import ROOT, build_model, load_cfg

INST = ROOT / 'tests' / 'configs' / 'co_dino_inst_tiny.py'


def _cfg(**changes):
    cfg = load_cfg(INST)
    cfg.model = copy.deepcopy(cfg.model)
    cfg.model.update(changes)
    return cfg


def test_config_lists_need_the_mask_entry():
    """With mask_head, the lists are [query, mask, rpn+rcnn, atss]: a detection config's
    3-entry lists, or an rpn/rcnn entry at index 1, are refused with the layout."""
    cfg = load_cfg(INST)
    three = [cfg.model.train_cfg[0], *cfg.model.train_cfg[2:]]
    with pytest.raises(ValueError, match=r'train_cfg has 3 entries but 4 .*query_head, '
                                         r'mask_head, one per roi_head'):
        build_model(_cfg(train_cfg=three))
    swapped = [cfg.model.test_cfg[0], cfg.model.test_cfg[2], cfg.model.test_cfg[1],
               cfg.model.test_cfg[3]]
    with pytest.raises(ValueError, match=r'test_cfg\[1\] is the mask branch entry'):
        build_model(_cfg(test_cfg=swapped))
    with pytest.raises(ValueError, match='mask_head needs model.mask_roi_extractor'):
        build_model(_cfg(mask_roi_extractor=None))


def test_num_classes_reaches_the_mask_heads():
    """model.num_classes sets the class-specific stages and the mask-IoU head; the
    class-agnostic last stage keeps 1. Disagreeing heads are refused."""
    net = build_model(_cfg(num_classes=7))
    assert net.mask_head.stage_num_classes == [7, 7, 7, 1]
    assert net.mask_iou_head.fc_mask_iou.out_features == 7
    head = copy.deepcopy(load_cfg(INST).model.mask_iou_head)
    head.num_classes = 5
    with pytest.raises(ValueError, match='num_classes disagree.*mask_iou_head'):
        build_model(_cfg(mask_iou_head=head))


def test_training_without_masks_names_the_pipeline_step():
    """A mask head with a pipeline that loads no masks: one clear error, not a KeyError."""
    from conftest import make_batch
    net = build_model(INST)
    inputs, samples = make_batch(net, [[(10., 10., 60., 50., 3)]], [(96, 128)])
    with pytest.raises(ValueError, match=r"with_mask=True\) in train_pipeline"):
        net.loss(inputs, samples)


def test_with_mask_property():
    assert build_model(INST).with_mask
    assert not build_model(ROOT / 'tests' / 'configs' / 'co_dino_tiny.py').with_mask
    assert build_model(ROOT / 'tests' / 'configs' / 'co_deformable_detr_mask_tiny.py').with_mask
