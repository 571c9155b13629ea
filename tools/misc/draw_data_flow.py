"""Draw docs/images/data_flow.png: the modules of Co-DETR and what flows between them.

    python tools/misc/draw_data_flow.py --out docs/images/data_flow.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

# (x, y, width, height, text, colour): training-only boxes are orange
BOXES = [
    (0.2, 4.6, 1.8, 0.8, 'images\n(B, 3, H, W)', '#dddddd'),
    (2.5, 4.6, 1.8, 0.8, 'backbone\n(ResNet / Swin)', '#cfe2f3'),
    (4.8, 4.6, 1.8, 0.8, 'neck\nChannelMapper', '#cfe2f3'),
    (7.1, 4.6, 2.2, 0.8, 'encoder\n(deformable attn)', '#cfe2f3'),
    (9.8, 4.6, 2.4, 0.8, 'two-stage proposals\ntop-k queries', '#cfe2f3'),
    (9.8, 3.0, 2.4, 0.8, 'decoder (look-\nforward-twice)', '#cfe2f3'),
    (9.8, 1.4, 2.4, 0.8, 'one-to-one loss /\ntop-k detections', '#cfe2f3'),
    (7.1, 3.0, 2.2, 0.8, 'encoder maps\n(+ stride-2 level)', '#fce5cd'),
    (4.6, 3.0, 2.0, 0.8, 'RPN + RoI head\n(Faster R-CNN)', '#fce5cd'),
    (4.6, 1.8, 2.0, 0.8, 'ATSS head', '#fce5cd'),
    (2.1, 0.9, 2.0, 0.8, 'positives ->\naux queries', '#fce5cd'),
    (7.1, 1.4, 2.2, 0.8, 'aux query groups\n(same decoder)', '#fce5cd'),
]
ARROWS = [((2.0, 5.0), (2.5, 5.0)), ((4.3, 5.0), (4.8, 5.0)), ((6.6, 5.0), (7.1, 5.0)),
          ((9.3, 5.0), (9.8, 5.0)), ((11.0, 4.6), (11.0, 3.8)), ((11.0, 3.0), (11.0, 2.2)),
          ((8.2, 4.6), (8.2, 3.8)), ((7.1, 3.4), (6.6, 3.4)), ((7.1, 3.2), (6.6, 2.2)),
          ((4.6, 3.1), (3.4, 1.7)), ((4.6, 2.0), (4.1, 1.5)), ((4.1, 1.2), (7.1, 1.6)),
          ((9.3, 1.8), (9.8, 1.8)), ((9.3, 1.6), (9.8, 1.6))]


def draw(out: Path) -> Path:
    """Draw the figure and save it as PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(12.5, 5.6), dpi=110)
    for x, y, w, h, text, colour in BOXES:
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle='round,pad=0.03', fc=colour,
                                    ec='#444444'))
        ax.text(x + w / 2, y + h / 2, text, ha='center', va='center', fontsize=9)
    for start, end in ARROWS:
        ax.annotate('', xy=end, xytext=start, arrowprops=dict(arrowstyle='->', color='#333333'))
    ax.text(0.2, 0.55, 'blue: inference path (the query head; all that predict() and the ONNX '
            'graph run)\norange: training only (the K auxiliary heads on the encoder maps and '
            'their positives as extra decoder queries)', fontsize=9, va='top')
    ax.set_xlim(0, 12.4)
    ax.set_ylim(-0.2, 5.7)
    ax.axis('off')
    ax.set_title('Co-DETR data flow (projects/codetr)', fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches='tight')
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='docs/images/data_flow.png', help='PNG to write')
    return draw(Path(parser.parse_args(argv).out))


if __name__ == '__main__':
    print(main())
