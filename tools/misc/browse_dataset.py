"""Save (or show) dataset samples after the config's pipeline, with their ground-truth boxes.

Example::

    python tools/misc/browse_dataset.py CONFIG --output-dir vis/train --not-show --max-images 20

Images are drawn as the model sees them (after resize / flip / other augmentations).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so that `projects` and `tools.misc` import

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='Browse a dataset')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--output-dir', help='save the annotated samples here as PNGs')
    parser.add_argument('--not-show', action='store_true', help='do not open a window')
    parser.add_argument('--show-interval', type=float, default=2,
                        help='seconds each sample is shown')
    parser.add_argument('--split', choices=('train', 'val', 'test'), default='train',
                        help='which dataloader dataset to browse')
    parser.add_argument('--max-images', type=int, default=None,
                        help='stop after this many samples (default: all)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Draw the ground truth of the chosen split.

    Returns:
        list[Path]: The written PNG files.
    """
    args = parse_args(argv)

    from mmdet.models.utils import mask2ndarray
    from mmdet.registry import DATASETS, VISUALIZERS
    from mmdet.structures.bbox import BaseBoxes
    from mmengine.registry import init_default_scope
    from mmengine.utils import ProgressBar

    from tools.misc.tool_utils import check_dataset_paths, load_config, setup_modules

    setup_modules()
    cfg = load_config(args.config, args.cfg_options)
    if args.output_dir is None and args.not_show:
        raise ValueError('nothing to do: give --output-dir, or drop --not-show')
    show = not args.not_show
    if show and not os.environ.get('DISPLAY'):
        print('no display ($DISPLAY unset): not showing, only saving')
        show = False
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    loader_key = f'{args.split}_dataloader'
    check_dataset_paths(cfg, (loader_key,))
    dataset = DATASETS.build(cfg[loader_key].dataset)
    # Samples are written with out_file; no vis backend (they would need a save_dir).
    visualizer = VISUALIZERS.build(dict(cfg.visualizer, vis_backends=None))
    visualizer.dataset_meta = dataset.metainfo

    num = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    progress = ProgressBar(num)
    for idx in range(num):
        item = dataset[idx]
        img = item['inputs'].permute(1, 2, 0).numpy()[..., [2, 1, 0]]  # (C,H,W) BGR -> HWC RGB
        data_sample = item['data_samples'].numpy()
        gt_instances = data_sample.gt_instances
        gt_bboxes = gt_instances.get('bboxes', None)
        if isinstance(gt_bboxes, BaseBoxes):
            gt_instances.bboxes = gt_bboxes.tensor
        gt_masks = gt_instances.get('masks', None)
        if gt_masks is not None:
            gt_instances.masks = mask2ndarray(gt_masks).astype(bool)
        data_sample.gt_instances = gt_instances
        name = Path(data_sample.img_path).stem
        out_file = str(out_dir / f'{name}.png') if out_dir is not None else None
        visualizer.add_datasample(name, img, data_sample, draw_pred=False, show=show,
                                  wait_time=args.show_interval, out_file=out_file)
        if out_file is not None:
            written.append(Path(out_file))
        progress.update()
    return written


if __name__ == '__main__':
    main()
