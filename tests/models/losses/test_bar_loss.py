"""BAR loss of Co-DINO-Inst's refine mask head (shared/DESIGN_MASKS.md section 4.2): the block
targets on hand-made masks, and the official ``loss_mask`` on the official stage logits and
targets (``tests/data/official_masks_a/official_codino_inst_bar.pt``)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from projects.codetr.models.losses import BARLoss, generate_block_target

FIXTURE = Path(__file__).resolve().parents[2] / 'data' / 'official_masks_a'


def test_block_target_width_1_by_hand():
    """A 2x2 square in a 6x6 RoI: every foreground pixel sees background in its 3x3 window
    (band); background pixels touching it are band too; the rest is background."""
    mask = torch.zeros(1, 6, 6)
    mask[0, 2:4, 2:4] = 1
    expected = torch.zeros(6, 6)
    expected[1:5, 1:5] = 1  # the square and its 8-neighbourhood
    assert torch.equal(generate_block_target(mask, 1)[0], expected)


def test_block_target_width_2_by_hand():
    """A full 6x6 mask: the zero padding counts as background, so the pixels within 2 of the
    RoI border that see >= 3 padding pixels in their 5x5 window are band; the centre 2x2 is
    interior (2). A corner pixel of a 4x4 square sees 9 foreground pixels of 25 (> 10%)."""
    full = torch.ones(1, 6, 6)
    block = generate_block_target(full, 2)[0]
    expected = torch.ones(6, 6)
    expected[2:4, 2:4] = 2
    assert torch.equal(block, expected)
    square = torch.zeros(1, 8, 8)
    square[0, 2:6, 2:6] = 1
    block = generate_block_target(square, 2)[0]
    window_fg = np.array([[square[0, max(i - 2, 0):i + 3, max(j - 2, 0):j + 3].sum()
                           for j in range(8)] for i in range(8)])
    fg = square[0].numpy() > 0
    band = (fg & (25 - window_fg > 2.5)) | (~fg & (window_fg > 2.5))
    reference = np.where(band, 1, np.where(fg, 2, 0))
    assert np.array_equal(block.numpy(), reference)


def _official():
    ref = torch.load(FIXTURE / 'official_codino_inst_bar.pt', weights_only=True)
    inverse = ref['inverse']
    preds = [p[inverse] for p in ref['stage_preds']]
    targets = []
    for packed, size in zip(ref['stage_targets'], ref['sizes']):
        bits = np.unpackbits(packed.numpy(), axis=1, count=size * size)
        targets.append(torch.from_numpy(bits.reshape(-1, size, size).astype(np.float32))[inverse])
    return ref, preds, targets


def test_official_loss_mask():
    """The official loss_mask (90.66698, weight 1.33 x 4) from its own stage logits/targets."""
    ref, preds, targets = _official()
    assert len(preds[0]) == 63
    loss = BARLoss(loss_weight=ref['loss_weight'])(preds, targets)
    assert float(loss) == pytest.approx(ref['loss_mask'], rel=1e-5)


def test_refined_stages_only_see_the_band():
    """Changing stage-3 logits away from every boundary band leaves the loss unchanged;
    changing stage-0 logits anywhere changes it."""
    _, preds, targets = _official()
    loss = BARLoss()
    base = float(loss(preds, targets))

    def resize(x, size):
        return torch.nn.functional.interpolate(x[:, None], size=(size, size), mode='bilinear',
                                               align_corners=True)[:, 0]

    def band(x, width):
        return (generate_block_target(x, width) == 1).float()

    # stage 3 is supervised where the bands of stage 2's refined prediction or target reach
    p1 = (preds[1][:, 0].sigmoid() >= 0.5).float()
    refined2 = torch.where(resize(band(p1, 1), 56) >= 0.5, preds[2][:, 0],
                           resize(preds[1][:, 0], 56))
    p2 = (refined2.sigmoid() >= 0.5).float()
    far = resize(torch.maximum(band(p2, 2), band(targets[2], 2)), 112) < 0.5
    assert far.any()
    moved = [p.clone() for p in preds]
    moved[3][:, 0][far] += 5.0
    assert float(loss(moved, targets)) == pytest.approx(base, rel=1e-6)
    moved[0] += 1.0
    assert float(loss(moved, targets)) != pytest.approx(base, rel=1e-3)


def test_empty_batch_is_zero_with_gradient():
    preds = [torch.zeros(0, 1, s, s, requires_grad=True) for s in (14, 28, 56, 112)]
    loss = BARLoss(loss_weight=5.32)(preds, [torch.zeros(0, s, s) for s in (14, 28, 56, 112)])
    assert float(loss) == 0.0
    loss.backward()
    assert all(p.grad is not None for p in preds)
