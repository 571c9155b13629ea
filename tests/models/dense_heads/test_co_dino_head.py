"""CoDINOHead against references written from the spec (DESIGN_CODINO.md §1).

Denoising layout and mask, top-k by the maximum class logit, look-forward-twice, the
aux-query projections, quality-focal targets of the aux queries and the official soft-NMS
test path, each compared with a small re-implementation of the spec's words.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CO_DINO_TINY_CFG, build_model, make_batch

SHAPES = [(96, 128), (112, 96)]
NUM_DN = 10  # num_dn_queries of the tiny config
NUM_CLASSES = 80


@pytest.fixture(scope='module')
def model():
    return build_model(CO_DINO_TINY_CFG)


def _encoder_outputs(model, inputs, samples):
    head = model.query_head
    feats = model.extract_feat(inputs)
    enc_in, dec_in = head.pre_transformer(feats, samples)
    memory = head.forward_encoder(**enc_in)['memory']
    return memory, dec_in


def reference_dn_mask(num_dn, num_groups, num_matching):
    """Spec: matching rows block every DN column; each DN group blocks the other groups."""
    size = num_dn + num_matching
    mask = torch.zeros(size, size, dtype=torch.bool)
    group_len = num_dn // num_groups if num_groups else 0
    for r in range(size):
        for c in range(num_dn):
            if r >= num_dn:
                mask[r, c] = True
            elif c // group_len != r // group_len:
                mask[r, c] = True
    return mask


@pytest.mark.parametrize('gts', [
    [[], []],
    [[(30., 30., 70., 60., 3)], []],
    [[(30., 30., 70., 60., 3), (20., 40., 60., 80., 5), (50., 20., 80., 50., 1)],
     [(40., 30., 70., 70., 7)]],
], ids=['no_gt', 'one_gt', 'several_gts'])
def test_denoising_layout_mask_and_targets(model, gts):
    inputs, samples = make_batch(model, gts, SHAPES)
    memory, dec_in = _encoder_outputs(model, inputs, samples)
    head = model.query_head
    torch.manual_seed(0)
    dec, head_in = head.pre_decoder(memory, dec_in['memory_mask'], dec_in['spatial_shapes'],
                                    samples)
    num_gts = [len(g) for g in gts]
    m = max(num_gts)
    groups = 1 if m == 0 else max(1, NUM_DN // m)
    pad = 2 * groups * m
    nq = memory.size(1) if memory.size(1) < head.num_query else head.num_query
    assert head_in['dn_meta'] == dict(num_denoising_queries=pad, num_denoising_groups=groups)
    assert dec['query'].shape[1] == pad + nq
    assert torch.equal(dec['dn_mask'], reference_dn_mask(pad, groups, nq))

    label_table = head.dn_query_generator.label_embedding.weight
    checked = {True: 0, False: 0}
    for i, (boxes, sample) in enumerate(zip(gts, samples)):
        h, w = sample.img_shape
        for g in range(groups):
            for t in range(m):
                for slot, positive in ((2 * g * m + t, True), (2 * g * m + m + t, False)):
                    query, ref = dec['query'][i, slot], dec['reference_points'][i, slot]
                    if t >= len(boxes):  # padding: zero label query, zero box (ref 0.5)
                        assert query.abs().sum() == 0
                        torch.testing.assert_close(ref, torch.full_like(ref, 0.5))
                        continue
                    # a label embedding row (the true label or a random one)
                    assert (label_table - query).abs().sum(-1).min() < 1e-6
                    x1, y1, x2, y2 = (torch.tensor(boxes[t][:4]) /
                                      torch.tensor([w, h, w, h])).tolist()
                    cx, cy, bw, bh = ref.tolist()
                    moves = torch.tensor([cx - bw / 2 - x1, cy - bh / 2 - y1,
                                          cx + bw / 2 - x2, cy + bh / 2 - y2]).abs()
                    half = torch.tensor([x2 - x1, y2 - y1] * 2) / 2
                    corners = torch.tensor([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
                    if min(bw, bh) < 0.01 or corners.min() < 1e-3 or corners.max() > 1 - 1e-3:
                        continue  # clamped to the image, or corners crossed (w or h <= 0)
                    checked[positive] += 1
                    if positive:  # corners move by u * (w/2, h/2), u in [0, 1)
                        assert (moves <= half + 1e-4).all(), (slot, moves, half)
                    else:  # u in [1, 2)
                        assert (moves >= half - 1e-4).all() and (moves <= 2 * half + 1e-4).all()

    if m:
        assert checked[True] > 0 and checked[False] > 0

    # targets: slot 2gM + t is GT t; everything else is background with weight 1
    gt_instances = [s.gt_instances for s in samples]
    metas = [s.metainfo for s in samples]
    labels, label_w, box_t, box_w, num_pos, _ = head.get_dn_targets(
        gt_instances, metas, head_in['dn_meta'])
    for i, boxes in enumerate(gts):
        expected = torch.full((pad, ), NUM_CLASSES)
        for g in range(groups):
            for t, box in enumerate(boxes):
                expected[2 * g * m + t] = box[4]
        assert torch.equal(labels[i], expected)
        assert torch.equal(label_w[i], torch.ones(pad))
        assert torch.equal(box_w[i][:, 0] > 0, expected < NUM_CLASSES)
    assert num_pos == groups * sum(num_gts)


def test_matching_queries_do_not_see_denoising_queries(model):
    """The mask makes the matching part independent of the DN part."""
    gts = [[(30., 30., 70., 60., 3), (20., 40., 60., 80., 5)], [(40., 30., 70., 70., 7)]]
    inputs, samples = make_batch(model, gts, SHAPES)
    head = model.query_head
    feats = model.extract_feat(inputs)
    with torch.no_grad():
        torch.manual_seed(0)
        with_dn = head.forward_transformer(feats, samples, denoise=True)
        plain = head.forward_transformer(feats, samples, denoise=False)
    pad = with_dn['dn_meta']['num_denoising_queries']
    assert pad == 2 * 5 * 2  # M = 2, G = 10 // 2
    torch.testing.assert_close(with_dn['hidden_states'][:, :, pad:], plain['hidden_states'],
                               atol=1e-5, rtol=1e-5)
    for ref_dn, ref in zip(with_dn['references'], plain['references']):
        torch.testing.assert_close(ref_dn[:, pad:], ref, atol=1e-5, rtol=1e-5)


def test_two_stage_top_k_by_max_class_logit(model):
    inputs, samples = make_batch(model, [[], []], SHAPES)
    head = model.query_head
    memory, dec_in = _encoder_outputs(model, inputs, samples)
    num_query = 20
    head.num_query, old = num_query, head.num_query
    try:
        _, head_in = head.pre_decoder(memory, dec_in['memory_mask'], dec_in['spatial_shapes'])
    finally:
        head.num_query = old
    out_memory, proposals = head.gen_encoder_output_proposals(
        memory, dec_in['memory_mask'], dec_in['spatial_shapes'])
    logits = head.cls_branches[head.decoder.num_layers](out_memory)
    boxes = (head.reg_branches[head.decoder.num_layers](out_memory) + proposals).sigmoid()
    for i in range(len(samples)):
        idx = logits[i].max(-1).values.topk(num_query).indices
        torch.testing.assert_close(head_in['enc_outputs_class'][i], logits[i, idx])
        torch.testing.assert_close(head_in['enc_outputs_coord'][i], boxes[i, idx])
        by_channel0 = set(logits[i, :, 0].topk(num_query).indices.tolist())
        assert by_channel0 != set(idx.tolist())  # the two rules differ on this input
    assert head_in['enc_outputs_coord'].requires_grad  # the encoder loss trains the boxes


def test_look_forward_twice(model):
    """Layer l+1's box is an offset to layer l's undetached refined box."""
    inputs, samples = make_batch(model, [[], []], SHAPES)
    head = model.query_head
    model.zero_grad()
    out = head.forward_transformer(model.extract_feat(inputs), samples)
    _, coords = head(out['hidden_states'], out['references'])
    coords[1].sum().backward()
    # reg_branches[0] reaches layer 1's prediction only through references[1]
    assert head.reg_branches[0][-1].weight.grad.abs().sum() > 0
    assert out['references'][1].requires_grad  # returned undetached
    # refined boxes: sigmoid(reg(normed hidden) + inverse_sigmoid(ref, 1e-3)) per layer
    eps = 1e-3
    ref0 = out['references'][0].clamp(0, 1)
    inv = torch.log(ref0.clamp(min=eps) / (1 - ref0).clamp(min=eps))
    torch.testing.assert_close(
        coords[0], (head.reg_branches[0](out['hidden_states'][0]) + inv).sigmoid())


def sine_embed(coords, num_feats, temperature=10000):
    """Spec: 128 (here num_feats) frequencies per coordinate, order cx, cy, w, h, sin/cos
    interleaved, of sigmoid(inverse_sigmoid(coords)) * 2 pi."""
    dim_t = temperature ** (2 * (torch.arange(num_feats) // 2) / num_feats)
    parts = []
    for c in range(4):
        pos = coords[..., c, None] * 2 * math.pi / dim_t
        parts.append(torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], -1).flatten(-2))
    return torch.cat(parts, -1)


def test_aux_query_projection(model):
    """Content = LN_k(Linear_k(sine(coords))) (2C -> C); reference = the coords."""
    from projects.codetr.models.layers.aux_queries import AuxQueryTargets
    head = model.query_head
    inputs, samples = make_batch(model, [[], []], SHAPES)
    enc_maps = head.forward_encoder_maps(model.extract_feat(inputs), samples)
    g = torch.Generator().manual_seed(3)
    coords = torch.rand(2, 9, 4, generator=g) * 0.5 + 0.25
    aux = AuxQueryTargets(coords, torch.zeros(2, 9, dtype=torch.long), torch.ones(2, 9),
                          coords.clone(), torch.ones(2, 9, 4), None, None)
    seen = {}

    def grab(_, args, kwargs):
        seen.update(kwargs)

    handle = head.decoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for k in range(head.num_co_heads):
            with torch.no_grad():
                head.forward_aux(enc_maps, aux, k, samples)
            fc, norm = head.aux_pos_trans_fc[k], head.aux_pos_trans_norm[k]
            expected = F.layer_norm(F.linear(sine_embed(coords, 32), fc.weight, fc.bias), (64, ),
                                    norm.weight, norm.bias)
            torch.testing.assert_close(seen['query'], expected, atol=1e-5, rtol=1e-5)
            assert torch.equal(seen['reference_points'], coords)
            assert seen['self_attn_mask'] is None
    finally:
        handle.remove()
    assert fc.weight.shape == (64, 128)


def qfl_reference(logits, labels, quality, weights, avg_factor, beta=2.0):
    """Spec: BCE(sigmoid, t) * |t - sigmoid|^beta; t = IoU on the label's channel of
    positives, 0 elsewhere."""
    sig = logits.sigmoid()
    target = torch.zeros_like(logits)
    pos = labels < logits.size(1)
    target[pos, labels[pos]] = quality[pos]
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction='none') * (
        (target - sig).abs() ** beta)
    return (loss.sum(1) * weights).sum() / avg_factor


def iou_xyxy(a, b):
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_aux_loss_uses_quality_focal_targets(model):
    from projects.codetr.models.layers.aux_queries import AuxQueryTargets
    head = model.query_head
    g = torch.Generator().manual_seed(5)
    bs, n = 2, 9
    preds = torch.rand(bs, n, 4, generator=g) * 0.4 + 0.3
    targets = torch.rand(bs, n, 4, generator=g) * 0.4 + 0.3
    labels = torch.randint(0, NUM_CLASSES, (bs, n), generator=g)
    labels[:, 6:] = NUM_CLASSES  # negatives
    logits = torch.randn(bs, n, NUM_CLASSES, generator=g)
    aux = AuxQueryTargets(preds, labels, torch.ones(bs, n), targets,
                          (labels < NUM_CLASSES)[..., None].float().expand(-1, -1, 4),
                          None, None)
    metas = [dict(img_shape=s) for s in SHAPES]
    loss_cls, _, _ = head.loss_aux_single(logits, preds, aux, metas)

    def to_xyxy(b):
        return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)

    quality = iou_xyxy(to_xyxy(preds.reshape(-1, 4)), to_xyxy(targets.reshape(-1, 4)))
    num_pos = int((labels < NUM_CLASSES).sum())
    expected = qfl_reference(logits.reshape(-1, NUM_CLASSES), labels.reshape(-1), quality,
                             torch.ones(bs * n), num_pos) * head.lambda_1
    torch.testing.assert_close(loss_cls.reshape(()), expected, atol=1e-5, rtol=1e-5)


def soft_nms_reference(boxes, scores, labels, iou_thr, min_score=1e-3):
    """Spec (mmcv defaults): linear soft-NMS per class, score *= 1 - IoU above iou_thr."""
    boxes, scores, labels = boxes.clone(), scores.clone(), labels.clone()
    keep_boxes, keep_scores, keep_labels = [], [], []
    alive = torch.ones(len(scores), dtype=torch.bool)
    while alive.any():
        i = int(torch.where(alive, scores, torch.full_like(scores, -1)).argmax())
        keep_boxes.append(boxes[i])
        keep_scores.append(scores[i].clone())
        keep_labels.append(labels[i])
        alive[i] = False
        for j in torch.nonzero(alive).flatten().tolist():
            if labels[j] != labels[i]:
                continue
            iou = float(iou_xyxy(boxes[i:i + 1], boxes[j:j + 1]))
            if iou > iou_thr:
                scores[j] *= 1 - iou
            if scores[j] < min_score:
                alive[j] = False
    return torch.stack(keep_boxes), torch.stack(keep_scores), torch.stack(keep_labels)


def test_soft_nms_test_path():
    """Top num_query pairs -> pixels, clamp, rescale -> class-aware soft-NMS -> max_per_img.

    The 3 highest pairs are near-duplicates of one object; soft-NMS decays two of them below
    a 4th, distinct detection, which therefore survives max_per_img=3. Taking the top
    max_per_img before NMS (as mmdet 3.x's port does) would lose it.
    """
    model = build_model(CO_DINO_TINY_CFG)
    head = model.query_head
    head.test_cfg = copy.deepcopy(head.test_cfg)
    head.test_cfg.update(max_per_img=3)
    nq = 50
    cls = torch.full((nq, NUM_CLASSES), -10.0)
    boxes = torch.full((nq, 4), 0.2)
    cls[0, 3], cls[1, 3], cls[2, 3], cls[3, 5] = 4.0, 3.9, 3.8, 1.0
    boxes[0] = torch.tensor([0.50, 0.50, 0.40, 0.40])
    boxes[1] = torch.tensor([0.505, 0.50, 0.40, 0.40])
    boxes[2] = torch.tensor([0.50, 0.505, 0.40, 0.40])
    boxes[3] = torch.tensor([0.20, 0.20, 0.10, 0.10])
    meta = dict(img_shape=(100, 200), scale_factor=(2.0, 0.5))
    result = head._predict_by_feat_single(cls, boxes, meta, rescale=True)

    scores, index = cls.sigmoid().flatten().topk(nq)
    labels, chosen = index % NUM_CLASSES, boxes[index // NUM_CLASSES]
    pix = torch.cat([chosen[:, :2] - chosen[:, 2:] / 2, chosen[:, :2] + chosen[:, 2:] / 2], 1)
    pix = pix * torch.tensor([200., 100., 200., 100.])
    pix[:, 0::2] = pix[:, 0::2].clamp(0, 200)
    pix[:, 1::2] = pix[:, 1::2].clamp(0, 100)
    pix = pix / torch.tensor([2.0, 0.5, 2.0, 0.5])
    ref_boxes, ref_scores, ref_labels = soft_nms_reference(pix, scores, labels, 0.8)
    torch.testing.assert_close(result.bboxes, ref_boxes[:3])
    torch.testing.assert_close(result.scores, ref_scores[:3])
    assert torch.equal(result.labels, ref_labels[:3])
    assert 5 in result.labels.tolist()  # the distinct detection survives
