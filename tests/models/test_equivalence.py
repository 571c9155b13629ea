"""Numerical equivalence of the sensitive pieces with reference formulas from the spec.

Every reference below is written from DESIGN.md and the notes on the official code (seed
003), not from our modules. The last tests run an independent pure-PyTorch forward of the
official query head that reads the OFFICIAL (mmdet 2.x) key layout of the tiny model, and
compare it with our model loaded from the converted weights (to 1e-4).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CFG, build_model, make_batch

from projects.codetr.converters.co_deformable_detr import (
    convert_state_dict,
    expected_spec,
    invert_state_dict,
)
from projects.codetr.models.layers.aux_queries import (
    AuxPositives,
    AuxQueryTargets,
    build_aux_query_targets,
)

torch.set_num_threads(2)
PADDED = [(96, 128), (80, 112)]  # image 1 is padded: img_shape < batch_input_shape
TOL = dict(rtol=1e-4, atol=1e-4)


def sincos(v, n, temperature=10000.0):
    """(...,) -> (..., n): [sin(v/T^(0/n)), cos(v/T^(0/n)), sin(v/T^(2/n)), cos(..), ...]."""
    # float32 like the official code: in padded columns the normalised position is
    # -0.5 / eps * 2 pi, whose sin/cos are only reproducible in the same precision
    freq = temperature ** (2 * torch.arange(n // 2, dtype=torch.float32) / n)
    arg = v.float()[..., None] / freq
    return torch.stack([arg.sin(), arg.cos()], -1).flatten(-2)


def ref_sine_pos(mask, num_feats, offset=-0.5, eps=1e-6):
    """SinePositionalEncoding(normalize=True, offset=-0.5): (bs, h, w) -> (bs, 2n, h, w)."""
    valid = (~mask).float()
    y, x = valid.cumsum(1), valid.cumsum(2)
    y = (y + offset) / (y[:, -1:, :] + eps) * 2 * math.pi
    x = (x + offset) / (x[:, :, -1:] + eps) * 2 * math.pi
    return torch.cat([sincos(y, num_feats), sincos(x, num_feats)], -1).permute(0, 3, 1, 2)


def ref_proposal_pos(coords_unact, n):
    """(..., 4) unactivated boxes -> (..., 4n): n freqs per coordinate of sigmoid * 2 pi."""
    v = coords_unact.sigmoid() * 2 * math.pi
    return torch.cat([sincos(v[..., i], n) for i in range(4)], -1)


def inv_sigmoid(x, eps=1e-5):
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def ref_masks(img_shapes, batch_shape, feat_shapes):
    """Per-level padding masks (True = padding): nearest-resized image masks."""
    masks = torch.ones(len(img_shapes), *batch_shape)
    for b, (h, w) in enumerate(img_shapes):
        masks[b, :h, :w] = 0
    return [F.interpolate(masks[None], size=s)[0].bool() for s in feat_shapes]


def ref_valid_ratios(masks):
    """(bs, L, 2) as (valid_w / W, valid_h / H) per level."""
    return torch.stack([torch.stack([(~m[:, 0, :]).sum(1) / m.shape[2],
                                     (~m[:, :, 0]).sum(1) / m.shape[1]], -1) for m in masks], 1)


def ref_encoder_refs(shapes, ratios):
    """Pixel centres normalised by each level's valid size, then times every level's ratio."""
    refs = []
    for lvl, (h, w) in enumerate(shapes):
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing='ij')
        rx = xs.reshape(1, -1) / (ratios[:, None, lvl, 0] * w)
        ry = ys.reshape(1, -1) / (ratios[:, None, lvl, 1] * h)
        refs.append(torch.stack([rx, ry], -1))
    return torch.cat(refs, 1)[:, :, None] * ratios[:, None]  # (bs, sum hw, L, 2)


def ref_proposals(mask_flat, shapes):
    """Grid-centre proposals (cx, cy, 0.05 * 2^lvl, same) -> (unact with inf, keep)."""
    props, start = [], 0
    for lvl, (h, w) in enumerate(shapes):
        m = mask_flat[:, start:start + h * w].view(-1, h, w)
        vh, vw = (~m[:, :, 0]).sum(1), (~m[:, 0, :]).sum(1)
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing='ij')
        cx = xs.reshape(1, -1) / vw[:, None]
        cy = ys.reshape(1, -1) / vh[:, None]
        wh = torch.full_like(cx, 0.05 * 2 ** lvl)
        props.append(torch.stack([cx, cy, wh, wh], -1))
        start += h * w
    props = torch.cat(props, 1)
    keep = ((props > 0.01) & (props < 0.99)).all(-1) & ~mask_flat
    unact = torch.log(props / (1 - props)).masked_fill(~keep[..., None], float('inf'))
    return unact, keep


def random_feats(head, shapes, bs=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, head.embed_dims, h, w, generator=g) for h, w in shapes]


def tiny_inputs(model, shapes=PADDED):
    return make_batch(model, [[], []], shapes)


@pytest.fixture(scope='module')
def tiny():
    model = build_model(TINY_CFG, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial values everywhere (init zeroes attention weights)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_sine_positional_encoding_and_level_embed(tiny):
    head = tiny.query_head
    inputs, samples = tiny_inputs(tiny)
    feats = tiny.extract_feat(inputs)
    shapes = [f.shape[-2:] for f in feats]
    masks = ref_masks(PADDED, inputs.shape[-2:], shapes)
    assert masks[0][1].any() and not masks[0][0].any()
    enc_in, _ = head.pre_transformer(feats, samples)
    ref = [ref_sine_pos(m, head.embed_dims // 2) for m in masks]
    for m, r in zip(masks, ref):
        torch.testing.assert_close(head.positional_encoding(m), r, **TOL)
    ref_flat = torch.cat([(r.flatten(2) + head.level_embed[i][:, None]).transpose(1, 2)
                          for i, r in enumerate(ref)], 1)
    torch.testing.assert_close(enc_in['feat_pos'], ref_flat, **TOL)
    torch.testing.assert_close(enc_in['feat_mask'], torch.cat([m.flatten(1) for m in masks], 1))


def test_proposal_sine_embedding(tiny):
    x = torch.randn(2, 7, 4) * 3
    ours = tiny.query_head.get_proposal_pos_embed(x, num_pos_feats=128)  # R50: 4 x 128 = 512
    torch.testing.assert_close(ours, ref_proposal_pos(x, 128), **TOL)


def test_valid_ratios_and_encoder_reference_points(tiny):
    head = tiny.query_head
    inputs, samples = tiny_inputs(tiny)
    feats = tiny.extract_feat(inputs)
    shapes = [tuple(f.shape[-2:]) for f in feats]
    ratios = ref_valid_ratios(ref_masks(PADDED, inputs.shape[-2:], shapes))
    assert (ratios[1, 0] < 1).all() and (ratios[0] == 1).all()
    captured = {}
    hook = head.encoder.layers[0].self_attn.register_forward_pre_hook(
        lambda m, a, kw: captured.update(kw), with_kwargs=True)
    with torch.no_grad():
        enc_in, _ = head.pre_transformer(feats, samples)
        head.forward_encoder(**enc_in)
    hook.remove()
    torch.testing.assert_close(enc_in['valid_ratios'], ratios.float())
    torch.testing.assert_close(captured['reference_points'], ref_encoder_refs(shapes, ratios),
                               **TOL)


def test_two_stage_proposals_topk_and_mixed_selection(tiny):
    head = tiny.query_head
    inputs, samples = tiny_inputs(tiny)
    feats = tiny.extract_feat(inputs)
    enc_in, _ = head.pre_transformer(feats, samples)
    shapes = enc_in['spatial_shapes'].tolist()
    mask = enc_in['feat_mask']
    memory = torch.randn(2, mask.shape[1], head.embed_dims, requires_grad=True)
    out_mem, proposals = head.gen_encoder_output_proposals(memory, mask, enc_in['spatial_shapes'])
    ref_unact, keep = ref_proposals(mask, shapes)
    assert (~keep).any() and keep.any()
    torch.testing.assert_close(proposals, ref_unact, **TOL)  # inf where invalid / padded
    ref_mem = head.memory_trans_norm(head.memory_trans_fc(memory * keep[..., None]))
    torch.testing.assert_close(out_mem, ref_mem, **TOL)

    dec_in, head_out = head.pre_decoder(memory, mask, enc_in['spatial_shapes'])
    nl, c, nq = head.decoder.num_layers, head.embed_dims, head.num_query
    cls = head.cls_branches[nl](ref_mem)
    coord_unact = head.reg_branches[nl](ref_mem) + ref_unact
    idx = cls[..., 0].topk(nq, dim=1).indices  # class channel 0 only
    top = coord_unact.gather(1, idx[..., None].expand(-1, -1, 4))
    torch.testing.assert_close(head_out['enc_outputs_class'], cls, **TOL)
    torch.testing.assert_close(head_out['enc_outputs_coord'], coord_unact.sigmoid(), **TOL)
    torch.testing.assert_close(dec_in['reference_points'], top.sigmoid(), **TOL)
    assert not dec_in['reference_points'].requires_grad  # top-k boxes are detached
    pos = head.pos_trans_norm(head.pos_trans_fc(ref_proposal_pos(top.detach(), c // 2)))
    torch.testing.assert_close(dec_in['query_pos'], pos[..., :c], **TOL)  # first half
    torch.testing.assert_close(dec_in['query'], head.query_embedding.weight.expand(2, -1, -1))


def test_look_forward_twice_gradients(tiny):
    head = tiny.query_head
    _, samples = tiny_inputs(tiny)
    feats = random_feats(head, [(12, 16), (6, 8), (3, 4), (2, 2)])
    out = head.forward_transformer(feats, samples)
    _, coords = head(out['hidden_states'], out['references'])
    # the box of layer l equals the refined reference that layer l hands on
    for layer in range(coords.shape[0]):
        torch.testing.assert_close(coords[layer], out['references'][layer + 1], **TOL)
    reg0 = list(head.reg_branches[0].parameters())
    grads = torch.autograd.grad(coords[1].sum(), reg0, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)  # layer-1 box loss reaches layer 0's branch
    grads = torch.autograd.grad(out['hidden_states'][1].sum(), reg0, allow_unused=True,
                                retain_graph=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)  # next layer input detached
    assert not out['references'][0].requires_grad


@pytest.mark.parametrize('k', [0, 1])
def test_aux_query_embedding_and_head_pos_embed_scalar(tiny, k):
    head = tiny.query_head
    c = head.embed_dims
    assert head.head_pos_embed.weight.shape == (head.num_co_heads, 1)
    _, samples = tiny_inputs(tiny)
    feats = random_feats(head, [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)])
    g = torch.Generator().manual_seed(k)
    coords = torch.rand(2, 9, 4, generator=g) * 0.6 + 0.2
    aux = AuxQueryTargets(coords, torch.zeros(2, 9, dtype=torch.long), torch.ones(2, 9),
                          coords.clone(), torch.ones(2, 9, 4), torch.randn(2, 9, c, generator=g),
                          None)
    captured = {}
    hook = head.decoder.register_forward_pre_hook(
        lambda m, a, kw: captured.update(kw), with_kwargs=True)
    with torch.no_grad():
        head.head_pos_embed.weight.copy_(torch.tensor([[0.7], [-1.3]]))
        head.forward_aux(feats, aux, k, samples)
    hook.remove()
    with torch.no_grad():
        t = head.aux_pos_trans_norm[k](head.aux_pos_trans_fc[k](
            ref_proposal_pos(inv_sigmoid(coords), c // 2)))
        feat_q = head.pos_feats_norm[k](head.pos_feats_trans[k](aux.feats))
    shift = captured['query_pos'] - t[..., :c]
    torch.testing.assert_close(shift, torch.full_like(shift, (0.7, -1.3)[k]), **TOL)
    torch.testing.assert_close(captured['query'], t[..., c:] + feat_q, **TOL)
    torch.testing.assert_close(captured['reference_points'], coords)
    assert captured['value'].shape[1] == 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2  # not the 5th map


def test_aux_query_count_and_negative_padding():
    g = torch.Generator().manual_seed(0)
    labels = torch.full((2, 30), 5)
    labels[0, 3:] = 80  # image 0: 3 positives; image 1: 30 positives
    xy = torch.rand(2, 30, 2, generator=g) * 40
    coords = torch.cat([xy, xy + 10 + torch.rand(2, 30, 2, generator=g) * 20], -1)
    feats = torch.arange(60.).view(2, 30, 1)
    out = build_aux_query_targets(AuxPositives(coords, labels, coords + 1, feats),
                                  [(64, 80), (100, 50)], 80, max_pos_coords=12, generator=g)
    assert out.coords.shape == (2, 12, 4)  # N = clamp(max #pos = 30, 9, 12)
    for b, (h, w) in enumerate([(64, 80), (100, 50)]):
        idx = out.feats[b, :, 0].long() - 30 * b  # feats carry the candidate index
        assert len(set(idx.tolist())) == 12
        c = coords[b, idx] / torch.tensor([w, h, w, h])
        cxcywh = torch.cat([(c[:, :2] + c[:, 2:]) / 2, c[:, 2:] - c[:, :2]], -1)
        torch.testing.assert_close(out.coords[b], cxcywh)
        is_pos = labels[b, idx] < 80
        assert int(is_pos.sum()) == (3 if b == 0 else 12)
        assert torch.equal(out.labels[b], labels[b, idx])
        assert torch.equal(out.bbox_weights[b], is_pos[:, None].float().expand(-1, 4))
        assert (out.label_weights[b] == 1).all()


# ----------------------------------------------------------------------------- stretch
class OfficialReference:
    """The official query-head forward (mmdet 2.x, seed notes) on OFFICIAL-layout weights."""

    def __init__(self, sd, num_query, heads=8, points=4):
        self.sd, self.nq, self.heads, self.points = sd, num_query, heads, points
        self.t = 'query_head.transformer.'

    def lin(self, x, name):
        return F.linear(x, self.sd[f'{name}.weight'], self.sd[f'{name}.bias'])

    def ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.sd[f'{name}.weight'], self.sd[f'{name}.bias'])

    def reg(self, x, i):
        p = f'query_head.reg_branches.{i}'
        return self.lin(self.lin(self.lin(x, f'{p}.0').relu(), f'{p}.2').relu(), f'{p}.4')

    def msda(self, p, query, value, ref, shapes, mask):
        bs, nq, c = query.shape
        nh, nl, npt = self.heads, len(shapes), self.points
        v = self.lin(value, f'{p}.value_proj').masked_fill(mask[..., None], 0)
        off = self.lin(query, f'{p}.sampling_offsets').view(bs, nq, nh, nl, npt, 2)
        w = self.lin(query, f'{p}.attention_weights').view(bs, nq, nh, nl * npt).softmax(-1)
        w = w.view(bs, nq, nh, nl, npt)
        if ref.shape[-1] == 2:
            norm = torch.tensor([[sw, sh] for sh, sw in shapes], dtype=torch.float32)
            loc = ref[:, :, None, :, None] + off / norm[None, None, None, :, None]
        else:
            loc = ref[:, :, None, :, None, :2] + off / npt * ref[:, :, None, :, None, 2:] * 0.5
        out, start = 0, 0
        for lvl, (h, wd) in enumerate(shapes):  # bilinear, zeros outside, align_corners=False
            vl = v[:, start:start + h * wd].view(bs, h, wd, nh, c // nh).permute(0, 3, 4, 1, 2)
            grid = 2 * loc[:, :, :, lvl].transpose(1, 2).reshape(bs * nh, nq, npt, 2) - 1
            s = F.grid_sample(vl.reshape(bs * nh, c // nh, h, wd), grid, align_corners=False)
            wl = w[:, :, :, lvl].transpose(1, 2).reshape(bs * nh, 1, nq, npt)
            out = out + (s * wl).sum(-1)  # (bs * nh, d, nq)
            start += h * wd
        out = out.view(bs, nh, c // nh, nq).permute(0, 3, 1, 2).reshape(bs, nq, c)
        return self.lin(out, f'{p}.output_proj')

    def self_attn(self, p, x, pos, attn_mask=None):
        bs, n, c = x.shape
        wq, wk, wv = self.sd[f'{p}.in_proj_weight'].chunk(3)
        bq, bk, bv = self.sd[f'{p}.in_proj_bias'].chunk(3)

        def split(t):  # (bs, n, c) -> (bs, heads, n, c / heads)
            return t.view(bs, n, self.heads, -1).transpose(1, 2)

        q, k = split(F.linear(x + pos, wq, bq)), split(F.linear(x + pos, wk, bk))
        logits = q @ k.transpose(-1, -2) / math.sqrt(c // self.heads)
        if attn_mask is not None:
            logits = logits.masked_fill(attn_mask[:, None], float('-inf'))
        out = (logits.softmax(-1) @ split(F.linear(x, wv, bv))).transpose(1, 2).reshape(bs, n, c)
        return self.lin(out, f'{p}.out_proj')

    def ffn(self, x, p):
        return x + self.lin(self.lin(x, f'{p}.ffns.0.layers.0.0').relu(), f'{p}.ffns.0.layers.1')

    def inputs(self, feats, img_shapes, batch_shape):
        shapes = [tuple(f.shape[-2:]) for f in feats]
        masks = ref_masks(img_shapes, batch_shape, shapes)
        pos = [ref_sine_pos(m, feats[0].shape[1] // 2) for m in masks]
        flat = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)
        pos = torch.cat([(p.flatten(2) + self.sd[f'{self.t}level_embeds'][i][:, None])
                         .transpose(1, 2) for i, p in enumerate(pos)], 1)
        return flat, pos, torch.cat([m.flatten(1) for m in masks], 1), shapes, \
            ref_valid_ratios(masks).float()

    def decode(self, query, query_pos, ref, memory, mask, shapes, ratios, attn_mask=None):
        hs, refs, x = [], [], query
        for i in range(sum(k.endswith('norms.2.bias') for k in self.sd)):
            p = f'{self.t}decoder.layers.{i}'
            ref_in = ref[:, :, None] * torch.cat([ratios, ratios], -1)[:, None]
            x = self.ln(x + self.self_attn(f'{p}.attentions.0.attn', x, query_pos, attn_mask),
                        f'{p}.norms.0')
            x = self.ln(x + self.msda(f'{p}.attentions.1', x + query_pos, memory, ref_in,
                                      shapes, mask), f'{p}.norms.1')
            x = self.ln(self.ffn(x, p), f'{p}.norms.2')
            new_ref = (self.reg(x, i) + inv_sigmoid(ref)).sigmoid()
            hs.append(x)
            refs.append(new_ref)  # look-forward-twice: undetached
            ref = new_ref.detach()
        return hs, refs

    def predict_layers(self, hs, init_ref, refs):
        cls = [self.lin(h, f'query_head.cls_branches.{i}') for i, h in enumerate(hs)]
        boxes = [(self.reg(h, i) + inv_sigmoid(r)).sigmoid()
                 for i, (h, r) in enumerate(zip(hs, [init_ref] + refs[:-1]))]
        return torch.stack(cls), torch.stack(boxes)

    def forward(self, feats, img_shapes, batch_shape):
        flat, pos, mask, shapes, ratios = self.inputs(feats, img_shapes, batch_shape)
        x, ref = flat, ref_encoder_refs(shapes, ratios)
        for i in range(sum(k.endswith('attentions.0.value_proj.bias') and '.encoder.' in k
                           for k in self.sd)):
            p = f'{self.t}encoder.layers.{i}'
            x = self.ln(x + self.msda(f'{p}.attentions.0', x + pos, x, ref, shapes, mask),
                        f'{p}.norms.0')
            x = self.ln(self.ffn(x, p), f'{p}.norms.1')
        memory, c = x, x.shape[-1]
        unact, keep = ref_proposals(mask, shapes)
        out_mem = self.ln(self.lin(memory * keep[..., None], f'{self.t}enc_output'),
                          f'{self.t}enc_output_norm')
        nl = len([k for k in self.sd if k.startswith('query_head.cls_branches.')]) // 2 - 1
        enc_cls = self.lin(out_mem, f'query_head.cls_branches.{nl}')
        enc_unact = self.reg(out_mem, nl) + unact
        top = enc_unact.gather(1, enc_cls[..., 0].topk(self.nq, dim=1).indices[..., None]
                               .expand(-1, -1, 4))
        pos_q = self.ln(self.lin(ref_proposal_pos(top, c // 2), f'{self.t}pos_trans'),
                        f'{self.t}pos_trans_norm')[..., :c]
        query = self.sd['query_head.query_embedding.weight'].expand(len(feats[0]), -1, -1)
        hs, refs = self.decode(query, pos_q, top.sigmoid(), memory, mask, shapes, ratios)
        maps, start = [], 0
        for h, w in shapes:
            maps.append(memory[:, start:start + h * w].transpose(1, 2).reshape(-1, c, h, w))
            start += h * w
        down = F.conv2d(maps[-1], self.sd['query_head.downsample.0.weight'],
                        self.sd['query_head.downsample.0.bias'], stride=2, padding=1)
        maps.append(F.group_norm(down, 32, self.sd['query_head.downsample.1.weight'],
                                 self.sd['query_head.downsample.1.bias']))
        return (*self.predict_layers(hs, top.sigmoid(), refs), enc_cls, enc_unact.sigmoid(),
                maps)

    def forward_aux(self, maps, aux, k, img_shapes, batch_shape):
        flat, _, mask, shapes, ratios = self.inputs(maps[:-1], img_shapes, batch_shape)
        c = flat.shape[-1]
        t = self.ln(self.lin(ref_proposal_pos(inv_sigmoid(aux.coords), c // 2),
                             f'{self.t}aux_pos_trans.{k}'), f'{self.t}aux_pos_trans_norm.{k}')
        query = t[..., c:] + self.ln(self.lin(aux.feats, f'{self.t}pos_feats_trans.{k}'),
                                     f'{self.t}pos_feats_norm.{k}')
        query_pos = t[..., :c] + self.sd[f'{self.t}head_pos_embed.weight'][k]
        hs, refs = self.decode(query, query_pos, aux.coords, flat, mask, shapes, ratios)
        return self.predict_layers(hs, aux.coords, refs)


@pytest.fixture(scope='module')
def converted(tiny):
    """(official-layout weights of ``tiny``, a fresh tiny model loaded from their conversion)."""
    official = invert_state_dict({k: v.detach().clone() for k, v in tiny.state_dict().items()})
    model = build_model(TINY_CFG, seed=1).eval()
    model.load_state_dict(convert_state_dict(official, expected_spec(model)).state_dict)
    return official, model


@pytest.mark.parametrize('shapes', [PADDED, [(96, 128), (96, 128)]], ids=['padded', 'same'])
def test_official_reference_forward_matches(converted, shapes):
    official, model = converted
    head = model.query_head
    ref = OfficialReference(official, head.num_query)
    inputs, samples = tiny_inputs(model, shapes)
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        r_cls, r_box, r_enc_cls, r_enc_box, r_maps = ref.forward(feats, shapes,
                                                                 inputs.shape[-2:])
        out = head.forward_transformer(feats, samples)
        cls, box = head(out['hidden_states'], out['references'])
        maps = head.forward_encoder_maps(feats, samples)
        results = model.predict(inputs, samples)
    for a, b in zip(maps, r_maps):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(out['enc_outputs_class'], r_enc_cls, **TOL)
    torch.testing.assert_close(out['enc_outputs_coord'], r_enc_box, **TOL)
    torch.testing.assert_close(cls, r_cls, **TOL)
    torch.testing.assert_close(box, r_box, **TOL)
    for b, (res, (h, w)) in enumerate(zip(results, shapes)):  # top-100 of sigmoid, no NMS
        scores, idx = r_cls[-1, b].sigmoid().flatten().topk(100)
        xyxy = r_box[-1, b, idx // 80]
        xyxy = torch.cat([xyxy[:, :2] - xyxy[:, 2:] / 2, xyxy[:, :2] + xyxy[:, 2:] / 2], -1)
        xyxy = (xyxy * torch.tensor([w, h, w, h])).clamp(min=0)
        xyxy = torch.minimum(xyxy, torch.tensor([w, h, w, h], dtype=torch.float32))
        torch.testing.assert_close(res.pred_instances.scores, scores, **TOL)
        assert torch.equal(res.pred_instances.labels, idx % 80)
        torch.testing.assert_close(res.pred_instances.bboxes, xyxy, **TOL)


@pytest.mark.parametrize('k', [0, 1])
def test_official_reference_aux_branch_matches(converted, k):
    official, model = converted
    head = model.query_head
    inputs, samples = tiny_inputs(model)
    g = torch.Generator().manual_seed(10 + k)
    coords = torch.rand(2, 11, 4, generator=g) * 0.5 + 0.25
    aux = AuxQueryTargets(coords, torch.zeros(2, 11, dtype=torch.long), torch.ones(2, 11),
                          coords, torch.ones(2, 11, 4),
                          torch.randn(2, 11, head.embed_dims, generator=g), None)
    with torch.no_grad():
        maps = head.forward_encoder_maps(model.extract_feat(inputs), samples)
        cls, box = head.forward_aux(maps, aux, k, samples)
        r_cls, r_box = OfficialReference(official, head.num_query).forward_aux(
            maps, aux, k, PADDED, inputs.shape[-2:])
    torch.testing.assert_close(cls, r_cls, **TOL)
    torch.testing.assert_close(box, r_box, **TOL)
