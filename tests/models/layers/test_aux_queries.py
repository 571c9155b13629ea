"""Positives -> padded auxiliary queries (DESIGN.md section 3)."""
import pytest
import torch

from projects.codetr.models.layers.aux_queries import AuxPositives, build_aux_query_targets

NUM_CLASSES = 5


def make_positives(pos_counts, num_cand=40, feat_dim=8, seed=0):
    """Random candidates with ``pos_counts[i]`` positives in image i."""
    g = torch.Generator().manual_seed(seed)
    bs = len(pos_counts)
    xy = torch.rand(bs, num_cand, 2, generator=g) * 50
    wh = torch.rand(bs, num_cand, 2, generator=g) * 40 + 2
    coords = torch.cat([xy, xy + wh], -1)
    targets = coords + torch.rand(bs, num_cand, 4, generator=g)
    labels = torch.full((bs, num_cand), NUM_CLASSES)
    for i, n in enumerate(pos_counts):
        idx = torch.randperm(num_cand, generator=g)[:n]
        labels[i, idx] = torch.randint(0, NUM_CLASSES, (n, ), generator=g)
    targets[labels == NUM_CLASSES] = 0
    feats = torch.randn(bs, num_cand, feat_dim, generator=g)
    return AuxPositives(coords, labels, targets, feats)


def test_normalisation_and_padding_with_negatives():
    pos = make_positives([3, 12])
    img_shapes = [(100, 200), (80, 60)]
    aux = build_aux_query_targets(pos, img_shapes, NUM_CLASSES)
    # N = clamp(max positives = 12, 9, 300)
    assert aux.coords.shape == (2, 12, 4)
    assert aux.feats.shape == (2, 12, 8)
    # image 0: its 3 positives first (original order), then 9 negatives
    is_pos = aux.labels < NUM_CLASSES
    assert is_pos.sum(1).tolist() == [3, 12]
    assert is_pos[0, :3].all() and not is_pos[0, 3:].any()
    assert torch.equal(aux.bbox_weights[..., 0], is_pos.float())
    assert torch.equal(aux.label_weights, torch.ones(2, 12))
    # pixel xyxy -> normalised cxcywh with the image's own (h, w)
    src = torch.nonzero(pos.labels[0] < NUM_CLASSES).squeeze(1)
    x1, y1, x2, y2 = pos.coords[0, src].unbind(-1)
    h, w = img_shapes[0]
    expected = torch.stack([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w,
                            (y2 - y1) / h], -1)
    torch.testing.assert_close(aux.coords[0, :3], expected)
    torch.testing.assert_close(aux.feats[0, :3], pos.feats[0, src])
    tx1, ty1, tx2, ty2 = pos.targets[0, src].unbind(-1)
    torch.testing.assert_close(aux.bbox_targets[0, :3, 2], (tx2 - tx1) / w)
    # padding negatives are real negatives of the same image
    neg_coords = aux.coords[0, 3:]
    all_neg = pos.coords[0, pos.labels[0] == NUM_CLASSES]
    all_neg = torch.stack([(all_neg[:, 0] + all_neg[:, 2]) / 2 / w,
                           (all_neg[:, 1] + all_neg[:, 3]) / 2 / h], -1)
    dist = (neg_coords[:, None, :2] - all_neg[None]).abs().amax(-1).min(1).values
    assert (dist < 1e-6).all()


@pytest.mark.parametrize('counts,expected', [([0, 0], 9), ([2, 4], 9), ([20, 1], 20),
                                             ([400, 3], 300)])
def test_query_count_is_clamped(counts, expected):
    pos = make_positives(counts, num_cand=500)
    aux = build_aux_query_targets(pos, [(64, 64)] * 2, NUM_CLASSES)
    assert aux.coords.shape[1] == expected
    assert (aux.labels < NUM_CLASSES).sum(1).tolist() == [min(c, expected) for c in counts]


def test_subsampling_is_seeded_and_device_agnostic():
    pos = make_positives([60, 30], num_cand=100)
    shapes = [(64, 64)] * 2
    a = build_aux_query_targets(pos, shapes, NUM_CLASSES, max_pos_coords=20,
                                generator=torch.Generator().manual_seed(1))
    b = build_aux_query_targets(pos, shapes, NUM_CLASSES, max_pos_coords=20,
                                generator=torch.Generator().manual_seed(1))
    c = build_aux_query_targets(pos, shapes, NUM_CLASSES, max_pos_coords=20,
                                generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.coords, b.coords)
    assert not torch.equal(a.coords, c.coords)
    assert (a.labels < NUM_CLASSES).all()  # 20 of the positives, no padding
    # the global generator is honoured too
    torch.manual_seed(5)
    d = build_aux_query_targets(pos, shapes, NUM_CLASSES, max_pos_coords=20)
    torch.manual_seed(5)
    e = build_aux_query_targets(pos, shapes, NUM_CLASSES, max_pos_coords=20)
    assert torch.equal(d.coords, e.coords)


def test_zero_padding_mask_hides_padding_and_stays_finite():
    pos = make_positives([2, 0, 11])
    aux = build_aux_query_targets(pos, [(64, 64)] * 3, NUM_CLASSES, use_zero_padding=True)
    n = aux.coords.shape[1]
    assert n == 11
    real = aux.label_weights.bool()
    assert real.sum(1).tolist() == [2, 0, 11]
    assert (aux.coords[~real] == 0).all() and (aux.labels[~real] == NUM_CLASSES).all()
    mask = aux.attn_mask
    assert mask.shape == (3, n, n)
    for b in range(3):
        for i in range(n):
            allowed = ~mask[b, i]
            assert allowed.any(), 'a fully masked row would give NaN'
            if real[b, i]:
                assert torch.equal(allowed, real[b])  # real queries see real ones only
            else:
                assert allowed.nonzero().squeeze(1).tolist() == [i]  # padding sees itself
    # through real attention: finite outputs
    attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    q = torch.randn(3, n, 8)
    out, _ = attn(q, q, q, attn_mask=mask.repeat_interleave(2, 0))
    assert torch.isfinite(out).all()


def test_fewer_candidates_than_queries_pads_with_zero_boxes():
    pos = make_positives([2, 1], num_cand=4)
    aux = build_aux_query_targets(pos, [(32, 32)] * 2, NUM_CLASSES)
    assert aux.coords.shape == (2, 9, 4)
    assert (aux.coords[:, 4:] == 0).all()
    assert (aux.bbox_weights[:, 4:] == 0).all()
