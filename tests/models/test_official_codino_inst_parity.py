"""Parity of the mask variant B (Co-DINO-Inst's detector-level refine mask head and mask-IoU
head on the query head's boxes) with the official code's own numbers on its tiny model.

``tests/data/official_masks_a/official_codino_inst_tiny.pth`` is the official tiny checkpoint
(Co-DINO tiny + mask branch); it goes through our converter and loads strictly into
``tests/configs/co_dino_inst_tiny.py``. ``official_codino_inst.pt`` (made by
``tools/misc/make_parity_fixture.py`` from ``shared/reference/official_masks_a``) holds the
official detections with their masks, mask scores, stage and refined logits, the query head's
training proposals with the mask losses they give and the training losses; the images are
those of ``official_parity_a`` and the ground-truth masks those of the variant-A fixture.
The official run tested one image at a time (its batched mask test fails); ours must give
the same with any batch size.
"""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, build_model, load_cfg
from test_official_mask_parity import FIXTURE, _mask_iou, _unpack, official_masks
from test_official_parity import FIXTURE as BOX_FIXTURE
from test_official_parity import _data_samples

from projects.codetr.converters import convert_state_dict
from projects.codetr.converters.co_deformable_detr import expected_spec, load_official_checkpoint
from projects.codetr.converters.co_dino import rules_for_layout

CONFIG = ROOT / 'tests' / 'configs' / 'co_dino_inst_tiny.py'
CHECKPOINT = FIXTURE / 'official_codino_inst_tiny.pth'
BOX_TOL, MASK_IOU, SCORE_TOL = 0.01, 0.99, 1e-5


@pytest.fixture(scope='module')
def official():
    ref = torch.load(FIXTURE / 'official_codino_inst.pt', weights_only=True)
    ref['inputs'] = torch.load(BOX_FIXTURE / 'official_outputs.pt', weights_only=True)['inputs']
    ref['gt_masks'] = torch.load(FIXTURE / 'official_codeform_mask.pt',
                                 weights_only=True)['gt_masks']
    return ref


def _official_state():
    state, _ = load_official_checkpoint(CHECKPOINT)
    return state


@pytest.fixture(scope='module')
def model():
    net = build_model(load_cfg(CONFIG))
    result = convert_state_dict(_official_state(), expected_spec(net),
                                rules=rules_for_layout('co_dino'))
    net.load_state_dict(result.state_dict, strict=True)
    return net.eval()


@pytest.fixture(autouse=True)
def reference_msda(monkeypatch):
    monkeypatch.setenv('CODETR_DISABLE_FAST_MSDA', '1')


def _samples(official, with_masks=False, images=(0, 1)):
    from mmdet.structures.mask import BitmapMasks
    inputs = official['inputs']
    one = dict(inputs, img=inputs['img'][list(images)],
               **{k: [inputs[k][i] for i in images]
                  for k in ('img_metas', 'gt_bboxes', 'gt_labels')})
    samples = _data_samples(one)
    if with_masks:
        for sample, i in zip(samples, images):
            gt = official['gt_masks'][i]
            masks = _unpack(gt['packed'], gt['shape']).astype(np.uint8)
            sample.gt_instances.masks = BitmapMasks(masks, *gt['shape'][1:])
    return one['img'], samples


def _predict(model, official, images=(0, 1)):
    img, samples = _samples(official, images=images)
    with torch.no_grad():
        return [r.pred_instances for r in model.predict(img, samples, rescale=True)]


def _check_twins(ours, ref, where):
    """Every official detection has a twin (label, box, mask IoU, mask score); no extras."""
    h, w = ref['masks_shape']
    assert ours.masks.dtype == torch.bool and tuple(ours.masks.shape[1:]) == (h, w), where
    assert len(ours) == len(ref['det_labels']), where
    ref_masks, ours_masks = official_masks(ref), ours.masks.numpy()
    used = set()
    for j, (det, label) in enumerate(zip(ref['det_bboxes'], ref['det_labels'])):
        twins = ((ours.labels == label) & ((ours.scores - det[4]).abs() <= SCORE_TOL)
                 & ((ours.bboxes - det[:4]).abs().amax(-1) <= BOX_TOL)).nonzero().flatten()
        ious = {int(k): _mask_iou(ours_masks[k], ref_masks[j]) for k in twins}
        best = max(ious, key=ious.get, default=None)
        assert best is not None, f'{where}: official detection {j} has no twin'
        assert ious[best] >= MASK_IOU, (where, j, ious[best])
        assert float(ours.mask_scores[best]) == pytest.approx(float(ref['mask_scores'][j]),
                                                              abs=SCORE_TOL), (where, j)
        used.add(best)
    assert len(used) == len(ours), f'{where}: detections of ours without a twin'


@pytest.mark.parametrize('images', [(0, ), (1, ), (0, 1)], ids=['image0', 'image1', 'batch2'])
def test_every_official_detection_has_a_twin_with_its_mask(model, official, images):
    """One image at a time, as the official run, and both in one batch."""
    for ours, i in zip(_predict(model, official, images), images):
        _check_twins(ours, official['per_image'][i], f'image {i} in batch {images}')
        # box scores stay the soft-NMS scores; segm scores are box score x mask IoU
        assert not torch.equal(ours.mask_scores, ours.scores)


def test_batch_of_two_equals_two_batches_of_one(model, official):
    together = _predict(model, official)
    for i in range(2):
        alone = _predict(model, official, images=(i, ))[0]
        assert torch.equal(alone.labels, together[i].labels)
        torch.testing.assert_close(alone.mask_scores, together[i].mask_scores, rtol=0,
                                   atol=1e-6)
        assert torch.equal(alone.masks, together[i].masks)


def test_stage_and_refined_logits_match(model, official):
    """The four stage logits and the coarse-to-fine 112x112 logits of image 0's RoIs."""
    img, samples = _samples(official)
    with torch.no_grad():
        maps = model.query_head.forward_encoder_maps(model.extract_feat(img), samples)
        rois = official['logit_rois']
        feats = model.mask_roi_extractor(maps[:5], rois)
        stage_preds, _ = model.mask_head(feats, maps[0], rois, official['logit_labels'])
        refined = model.mask_head.refine(stage_preds)
    for ours, ref in zip(stage_preds + [refined],
                         official['stage_logits'] + [official['refined_logits']]):
        assert ours.shape == ref.shape
        err = (ours - ref).abs() / ref.abs().clamp(min=1.0)
        assert float(err.max()) <= 1e-4, (tuple(ref.shape), float(err.max()))
    assert float(official['refined_logits'].abs().max()) > 20  # logits reach tens here


def test_mask_losses_on_the_official_proposals(model, official):
    """``loss_mask`` (BAR) and ``loss_mask_iou`` given the query head's official training
    proposals (which include the randomly noised denoising queries)."""
    img, samples = _samples(official, with_masks=True)
    model.train()
    try:
        with torch.no_grad():
            maps = model.query_head.forward_encoder_maps(model.extract_feat(img), samples)
            losses = model.mask_loss(maps, official['train_proposals'], samples)
    finally:
        model.eval()
    assert float(losses['loss_mask']) == pytest.approx(official['loss_mask'], rel=1e-5)
    assert float(losses['loss_mask_iou']) == pytest.approx(official['loss_mask_iou'], rel=1e-5)


def test_training_losses_match(model, official):
    """The 15 losses the official seeds agree on, and under the same seed also the mask
    losses (our denoising queries draw the official random numbers)."""
    img, samples = _samples(official, with_masks=True)
    model.train()
    try:
        torch.manual_seed(0)
        losses = model.loss(img, samples)
    finally:
        model.eval()
    ref = official['train_losses_float']
    assert set(losses) == set(ref)
    keys = list(official['seed_independent_keys']) + ['loss_mask', 'loss_mask_iou']
    for key in keys:
        value = losses[key]
        ours = float(sum(v.sum() for v in value) if isinstance(value, list) else value.sum())
        assert ours == pytest.approx(ref[key], rel=1e-5), key


def test_training_proposals_are_the_official_ones(model, official):
    """Top-1000 (query, class) boxes of the last decoder layer, denoising queries included;
    ``proposals_with_dn=False`` keeps the matching queries only."""
    img, samples = _samples(official, with_masks=True)
    model.train()
    try:
        with torch.no_grad():
            feats = model.extract_feat(img)
            torch.manual_seed(0)
            _, _, proposals = model.query_head.loss(feats, samples, return_proposals=True)
            torch.manual_seed(0)
            _, _, matching = model.query_head.loss(feats, samples, return_proposals=True,
                                                   proposals_with_dn=False)
    finally:
        model.eval()
    for ours, ref, other in zip(proposals, official['train_proposals'], matching):
        assert ours.shape == ref.shape == (1000, 5)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
        assert not torch.equal(other, ours)


def test_empty_batch_and_chunking(model, official):
    """No positive RoI: ``loss_mask`` and ``loss_mask_iou`` are 0 and still reach every mask
    parameter (DDP). Chunks of 7 detections give the masks of chunks of 150."""
    from mmdet.structures.mask import BitmapMasks
    img, samples = _samples(official)
    for sample in samples:  # no GT: no positive, no GT box added as a proposal
        sample.gt_instances = sample.gt_instances[:0]
        sample.gt_instances.masks = BitmapMasks(np.zeros((0, 512, 512), np.uint8), 512, 512)
    far = torch.tensor([[0., 0., 2., 2., 0.5]])
    model.train()
    try:
        maps = model.query_head.forward_encoder_maps(model.extract_feat(img), samples)
        losses = model.mask_loss(maps, [far, far], samples)
        total = losses['loss_mask'] + losses['loss_mask_iou']
        assert float(total) == 0.0
        model.zero_grad()
        total.backward()
        for name, p in list(model.mask_head.named_parameters()):
            assert p.grad is not None, name
    finally:
        model.zero_grad()
        model.eval()
    whole = _predict(model, official)
    model.mask_test_cfg = dict(model.mask_test_cfg, mask_chunk_size=7)
    try:
        chunked = _predict(model, official)
    finally:
        model.mask_test_cfg = load_cfg(CONFIG).model.test_cfg[1]
    for a, b in zip(whole, chunked):
        assert torch.equal(a.masks, b.masks)
        torch.testing.assert_close(a.mask_scores, b.mask_scores, rtol=0, atol=1e-6)


def test_segm_json_uses_mask_scores(model, official, tmp_path):
    """COCO results: bbox entries carry the box score, segm entries the mask score."""
    import json

    from projects.codetr.evaluation import CheckedCocoMetric
    img, samples = _samples(official, images=(0, ))
    with torch.no_grad():
        result = model.predict(img, samples, rescale=True)[0]
    metric = CheckedCocoMetric(metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=tuple(str(i) for i in range(80)))
    metric.cat_ids = list(range(80))
    metric._coco_api = object()  # ground truth from an annotation file: none needed here
    metric.process({}, [result.to_dict()])
    files = metric.results2json([metric.results[0][1]], str(tmp_path / 'codino_inst'))
    bbox = json.loads(Path(files['bbox']).read_text())
    segm = json.loads(Path(files['segm']).read_text())
    inst = result.pred_instances
    assert [d['score'] for d in bbox] == pytest.approx(inst.scores.tolist())
    assert [d['score'] for d in segm] == pytest.approx(inst.mask_scores.tolist())


def test_converter_cli_on_the_official_checkpoint(tmp_path):
    """The official file converts through the CLI and loads strictly; the default config of
    a Co-DINO checkpoint with mask keys is the R50 instance config; EMA buffers are dropped
    and listed."""
    from mmengine.runner import load_checkpoint

    from tools.model_converters import official_to_mmdet3 as tool
    state = _official_state()
    state['ema_mask_head_stage_instance_logits_3_bias'] = torch.zeros(1)  # EMA hook buffer
    src, dst = tmp_path / 'official.pth', tmp_path / 'ours.pth'
    torch.save(dict(state_dict=state, meta={}), src)
    assert tool.main([str(src), str(dst), '--config', str(CONFIG)]) == 0
    net = build_model(load_cfg(CONFIG))
    load_checkpoint(net, str(dst), strict=True)
    assert torch.equal(net.mask_iou_head.convs[0].norm_layer.weight,
                       state['mask_iou_head.convs.0.norm_layer.weight'])
    meta = torch.load(dst, weights_only=False)['meta']
    assert 'EMA copy' in meta['dropped']['ema_mask_head_stage_instance_logits_3_bias']
    assert tool.default_config('co_dino', list(state), False) == tool.CO_DINO_INST_CONFIG


def test_r50_instance_model_sizes_and_official_keys():
    """configs/co_dino_5scale_r50_1x_coco_instance.py: 83,863,267 parameters = Co-DINO R50's
    65,204,005 + mask head 4,548,206 + mask-IoU head 14,111,056, and the mask keys and shapes
    of the spec's table (section 6.2), built without a forward pass."""
    cfg = load_cfg(ROOT / 'configs' / 'co_dino_5scale_r50_1x_coco_instance.py')
    net = build_model(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net) == 83_863_267
    assert count(net.mask_head) == 4_548_206 and count(net.mask_iou_head) == 14_111_056
    state = net.state_dict()
    shapes = {k: list(v.shape) for k, v in state.items() if k.startswith('mask_')}
    assert len(shapes) == 59 + 10
    for i, c in ((0, 256), (1, 128), (2, 64)):
        assert shapes[f'mask_head.stages.{i}.fuse_conv.0.weight'] == [c, 2 * c + 1, 1, 1]
        assert shapes[f'mask_head.stages.{i}.fuse_transform_out.weight'] == [c // 2 - 1, c, 1, 1]
        assert shapes[f'mask_head.stages.{i}.semantic_transform_in.weight'] == [c, 256, 1, 1]
    assert shapes['mask_head.stage_instance_logits.3.weight'] == [1, 32, 1, 1]
    assert shapes['mask_head.instance_convs.0.norm_layer.weight'] == [256]
    assert 'mask_head.instance_convs.0.conv.bias' not in shapes
    assert shapes['mask_iou_head.convs.0.conv.weight'] == [256, 257, 3, 3]
    assert 'mask_iou_head.convs.0.conv.bias' not in shapes
    assert shapes['mask_iou_head.fcs.0.weight'] == [1024, 12544]
    assert shapes['mask_iou_head.fc_mask_iou.weight'] == [80, 1024]
    # the official tiny checkpoint's mask keys are the same names
    official = {k for k in _official_state() if k.startswith('mask_')}
    assert official == set(shapes)


def test_mask_branch_on_the_deformable_detr_query_head():
    """Co-Deformable-DETR (4 encoder levels, strides 8..64) with the detector-level mask
    branch: it trains (finite mask losses reaching the mask head) and predicts masks."""
    from mmdet.structures.mask import BitmapMasks
    cfg = load_cfg(ROOT / 'tests' / 'configs' / 'co_deformable_detr_tiny.py')
    inst = load_cfg(CONFIG).model
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.mask_roi_extractor = dict(inst.mask_roi_extractor,
                                        featmap_strides=[8, 16, 32, 64], finest_scale=112)
    model_cfg.mask_head = dict(inst.mask_head, semantic_out_stride=8)
    model_cfg.mask_iou_head = inst.mask_iou_head
    model_cfg.train_cfg = [cfg.model.train_cfg[0], inst.train_cfg[1], *cfg.model.train_cfg[1:]]
    model_cfg.test_cfg = [cfg.model.test_cfg[0], inst.test_cfg[1], *cfg.model.test_cfg[1:]]
    cfg.model = model_cfg
    net = build_model(cfg)
    img = torch.randn(2, 3, 96, 128)
    samples = _data_samples(dict(
        img_metas=[dict(img_shape=(96, 128), ori_shape=(96, 128), pad_shape=(96, 128),
                        batch_input_shape=(96, 128))] * 2,
        gt_bboxes=[torch.tensor([[10., 12., 60., 70.]])] * 2,
        gt_labels=[torch.tensor([3])] * 2))
    mask = np.zeros((1, 96, 128), np.uint8)
    mask[0, 12:70, 10:60] = 1
    for sample in samples:
        sample.gt_instances.masks = BitmapMasks(mask, 96, 128)
    losses = net.loss(img, samples)
    assert torch.isfinite(losses['loss_mask']) and float(losses['loss_mask']) > 0
    losses['loss_mask'].backward()
    assert net.mask_head.semantic_convs[0].conv.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        out = net.predict(img, samples, rescale=True)
    assert out[0].pred_instances.masks.shape[1:] == (96, 128)
    assert len(out[0].pred_instances.mask_scores) == len(out[0].pred_instances)


def test_paste_of_boxes_outside_the_canvas():
    """A box wholly outside the canvas (LSJ padding) pastes an empty mask; the others paste
    as usual."""
    from projects.codetr.models.roi_heads.mask_heads import SimpleRefineMaskHead
    logits = torch.full((3, 1, 112, 112), 5.0)
    boxes = torch.tensor([[10., 10., 30., 40.], [120., 5., 150., 20.], [-40., 5., -2., 30.]])
    masks = SimpleRefineMaskHead.paste_masks(logits, boxes, 96, 110)
    assert masks.shape == (3, 96, 110)
    assert masks[0, 10:40, 10:30].all() and masks[0].sum() == 20 * 30
    assert not masks[1:].any()


def test_infer_tool_writes_mask_scores_and_draws_when_nothing_passes(model, official, tmp_path):
    """tools/infer.py on Co-DINO-Inst: ``mask_scores`` beside the RLE masks in
    detections.json; an upscaled drawing where no detection passes --score-thr still works
    (it failed on the empty mask tensor's size)."""
    import cv2

    from tools import infer
    ckpt = tmp_path / 'inst_tiny.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    image = official['inputs']['img'][0, :, :96, :128].permute(1, 2, 0).numpy()
    path = tmp_path / 'image.png'
    cv2.imwrite(str(path), np.clip(image * 58 + 115, 0, 255).astype(np.uint8))
    out = infer.main([str(path), str(CONFIG), str(ckpt), '--out-dir', str(tmp_path / 'a'),
                      '--score-thr', '0'])
    record = out['images'][0]
    assert len(record['mask_scores']) == len(record['masks']) == len(record['scores']) > 0
    assert record['mask_scores'] != record['scores']
    out = infer.main([str(path), str(CONFIG), str(ckpt), '--out-dir', str(tmp_path / 'b'),
                      '--score-thr', '0.99', '--min-side', '256'])
    assert out['images'][0]['scores'] == [] and (tmp_path / 'b' / 'image.png').is_file()
