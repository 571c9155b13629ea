"""Positive samples of the auxiliary heads -> padded auxiliary decoder queries.

Co-DETR (Zong et al., "DETRs with Collaborative Hybrid Assignments Training",
ICCV 2023) turns the positives that each one-to-many auxiliary head assigns into
an extra group of decoder queries ("customized positive queries"). This module is
pure tensor code: it takes the per-image candidates of one head and returns a
fixed-size, batched set of query boxes with their fixed (unmatched) targets.

The batch is processed without a Python loop over images: per-image random
subsampling is done by sorting random keys, which gives every image its own
random subset of the right size in one ``sort`` call.
"""
from typing import NamedTuple, Optional, Sequence

import torch
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from torch import Tensor


class AuxPositives(NamedTuple):
    """Candidates of one auxiliary head, batched over images.

    Attributes:
        coords (Tensor): Candidate boxes (sampled RoIs or anchors), pixel
            xyxy, shape (B, M, 4).
        labels (Tensor): Assigned labels, ``num_classes`` means background,
            shape (B, M).
        targets (Tensor): Assigned GT boxes, pixel xyxy (zeros for
            negatives), shape (B, M, 4).
        feats (Tensor, optional): Per-candidate content feature, shape
            (B, M, C). RoI heads give the RoIAlign feature averaged over the
            7x7 grid; dense heads give the encoder-map feature at the anchor.
    """
    coords: Tensor
    labels: Tensor
    targets: Tensor
    feats: Optional[Tensor] = None


class AuxQueryTargets(NamedTuple):
    """Padded auxiliary queries and their fixed targets.

    Attributes:
        coords (Tensor): Query reference boxes, normalised cxcywh in [0, 1],
            shape (B, N, 4).
        labels (Tensor): Target labels, shape (B, N).
        label_weights (Tensor): Classification weights, shape (B, N).
        bbox_targets (Tensor): Target boxes, normalised cxcywh, (B, N, 4).
        bbox_weights (Tensor): Box-loss weights (1 for positives), (B, N, 4).
        feats (Tensor, optional): Content features of the queries, (B, N, C).
        attn_mask (Tensor, optional): Self-attention mask for the decoder,
            ``True`` = may not attend, shape (B, N, N); only in zero-padding
            mode.
    """
    coords: Tensor
    labels: Tensor
    label_weights: Tensor
    bbox_targets: Tensor
    bbox_weights: Tensor
    feats: Optional[Tensor]
    attn_mask: Optional[Tensor]


def _pad_candidates(positives: AuxPositives, num_classes: int,
                    min_len: int) -> AuxPositives:
    """Pad every image to at least ``min_len`` background candidates.

    Only needed when a head yields fewer candidates than queries (tiny images
    or RoI heads with few proposals). The padding rows are zero boxes with a
    background label, so they can only be used as negatives.
    """
    num = positives.coords.size(1)
    if num >= min_len:
        return positives
    extra = min_len - num
    bs = positives.coords.size(0)
    coords = torch.cat([positives.coords, positives.coords.new_zeros(bs, extra, 4)], 1)
    labels = torch.cat(
        [positives.labels, positives.labels.new_full((bs, extra), num_classes)], 1)
    targets = torch.cat([positives.targets, positives.targets.new_zeros(bs, extra, 4)], 1)
    feats = positives.feats
    if feats is not None:
        feats = torch.cat([feats, feats.new_zeros(bs, extra, feats.size(-1))], 1)
    return AuxPositives(coords, labels, targets, feats)


def build_aux_query_targets(positives: AuxPositives,
                            img_shapes: Sequence[Sequence[int]],
                            num_classes: int,
                            max_pos_coords: int = 300,
                            min_pos_coords: int = 9,
                            use_zero_padding: bool = False,
                            generator: Optional[torch.Generator] = None
                            ) -> AuxQueryTargets:
    """Select, pad and normalise the positives of one auxiliary head.

    Per image, positives are the candidates with ``0 <= label < num_classes``.
    ``N = clamp(max #positives over the batch, min_pos_coords, max_pos_coords)``.
    An image with more than ``N`` positives keeps ``N`` of them at random; an
    image with fewer is padded up to ``N`` with randomly chosen negatives of
    the same head (background labels, box weight 0), or, in zero-padding mode,
    with zero boxes that carry no loss and are hidden from the real queries by
    the self-attention mask.

    The random draws come from a CPU generator (the global one by default) and
    are moved to the tensors' device afterwards, so the selection is the same
    on CPU and GPU for the same seed.

    Args:
        positives (AuxPositives): Candidates of one head, (B, M, ...).
        img_shapes (Sequence): ``(h, w)`` of each image (``img_shape``).
        num_classes (int): Number of foreground classes.
        max_pos_coords (int): Upper bound of ``N``. Defaults to 300.
        min_pos_coords (int): Lower bound of ``N``. Defaults to 9.
        use_zero_padding (bool): Pad with zeros plus an attention mask
            instead of negatives. Defaults to False.
        generator (torch.Generator, optional): CPU generator for the random
            selection. Defaults to the global CPU generator.

    Returns:
        AuxQueryTargets: Queries and targets, each with ``N`` entries/image.
    """
    labels = positives.labels
    bs, num_cand = labels.shape
    device = labels.device
    is_pos = (labels >= 0) & (labels < num_classes)  # (B, M)
    num_pos = is_pos.sum(1)  # (B, )
    num_queries = int(num_pos.max()) if bs > 0 and num_cand > 0 else 0
    num_queries = max(min(num_queries, max_pos_coords), min_pos_coords)

    positives = _pad_candidates(positives, num_classes, num_queries)
    labels = positives.labels
    is_pos = (labels >= 0) & (labels < num_classes)
    num_cand = labels.size(1)

    # Random keys: positives in [0, 1) sort before negatives in [1, 2), so the
    # first N keys are a random subset of the positives, topped up with
    # random negatives (zeroed afterwards in zero-padding mode).
    rand = torch.rand(bs, num_cand, generator=generator).to(device)
    keys = rand + (~is_pos).to(rand.dtype)
    order = keys.topk(num_queries, dim=1, largest=False).indices  # (B, N), smallest first
    # Restore the original candidate order inside each group, so the result
    # does not depend on the random permutation when nothing is subsampled.
    picked_pos = is_pos.gather(1, order)
    order = order.gather(1, (order + (~picked_pos).long() * num_cand).argsort(dim=1))
    picked_pos = is_pos.gather(1, order)  # (B, N), positives first

    def take(t: Tensor) -> Tensor:
        index = order.view(bs, num_queries, *([1] * (t.dim() - 2)))
        return t.gather(1, index.expand(-1, -1, *t.shape[2:]))

    coords, targets = take(positives.coords), take(positives.targets)
    labels = take(labels)
    feats = take(positives.feats) if positives.feats is not None else None

    # pixel xyxy -> normalised cxcywh, per image
    factors = coords.new_tensor([[w, h, w, h] for h, w in
                                 (tuple(s[:2]) for s in img_shapes)])  # (B, 4)
    coords = bbox_xyxy_to_cxcywh(coords / factors[:, None])
    bbox_targets = bbox_xyxy_to_cxcywh(targets / factors[:, None])
    bbox_weights = picked_pos[..., None].expand(-1, -1, 4).to(coords.dtype)

    attn_mask = None
    if use_zero_padding:
        keep = picked_pos.to(coords.dtype)
        coords = coords * keep[..., None]
        bbox_targets = bbox_targets * keep[..., None]
        labels = torch.where(picked_pos, labels, torch.full_like(labels, num_classes))
        if feats is not None:
            feats = feats * keep[..., None]
        label_weights = keep
        # Real queries never see padding; a padding query sees only itself,
        # so no attention row is fully masked (which would produce NaN).
        real_pair = picked_pos[:, :, None] & picked_pos[:, None, :]  # (B, N, N)
        eye = torch.eye(num_queries, dtype=torch.bool, device=device)[None]
        attn_mask = ~(real_pair | eye)
    else:
        label_weights = coords.new_ones(bs, num_queries)
    return AuxQueryTargets(coords, labels, label_weights, bbox_targets,
                           bbox_weights, feats, attn_mask)
