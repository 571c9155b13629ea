"""Image loading that names the file when it is missing, empty, truncated or mis-sized."""

from __future__ import annotations

import logging
import os.path as osp

from mmcv.transforms import LoadImageFromFile
from mmdet.registry import TRANSFORMS
from mmengine.logging import print_log


class ImageLoadError(OSError):
    """An image file that cannot be decoded, or whose size contradicts its annotation."""


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """:class:`mmcv.transforms.LoadImageFromFile` with clear errors and an opt-in skip.

    The parent fails on a missing file with the backend's error, on an empty file with an
    OpenCV assertion that does not name the file, and on an undecodable (e.g. truncated) file
    with an ``assert`` that disappears under ``python -O``. Here every failure raises
    :class:`ImageLoadError` (or ``FileNotFoundError``) naming the file and the image id; the
    decoded size is also checked against the ``height``/``width`` of the annotation file, since
    boxes are in those coordinates (a mismatch usually means an EXIF rotation or a wrong file).

    Args:
        on_error: ``'raise'`` (default) stops training at the first bad file. ``'skip'``
            returns ``None``, so mmengine's dataset draws another image (training only; test
            datasets refuse ``None``); each bad file is logged once per worker process.
        check_shape: Compare the decoded size with the annotation ``height``/``width``.
        **kwargs: Arguments of :class:`mmcv.transforms.LoadImageFromFile`
            (``ignore_empty`` is not supported: use ``on_error='skip'``).
    """

    def __init__(self, on_error: str = 'raise', check_shape: bool = True, **kwargs) -> None:
        if on_error not in ('raise', 'skip'):
            raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
        if kwargs.get('ignore_empty'):
            raise ValueError("ignore_empty=True would silently drop images; use on_error='skip'")
        super().__init__(**kwargs)
        self.on_error = on_error
        self.check_shape = check_shape
        self._reported: set[str] = set()

    def _fail(self, results: dict, problem: str, exc: BaseException | None = None) -> None:
        """Raise, or log once and return, according to ``on_error``."""
        filename = results['img_path']
        msg = f'image {filename!r} (img_id={results.get("img_id")!r}): {problem}'
        if self.on_error == 'raise':
            error_cls = FileNotFoundError if isinstance(exc, FileNotFoundError) else ImageLoadError
            raise error_cls(f"{msg}; fix or remove it, or set on_error='skip' in the "
                            'loading transform to train without it') from exc
        if filename not in self._reported:
            self._reported.add(filename)
            print_log(f'{msg}; skipped (on_error="skip"), another image is drawn instead',
                      logger='current', level=logging.WARNING)

    def transform(self, results: dict) -> dict | None:
        """Load the image of ``results['img_path']``.

        Args:
            results: Data info with ``img_path`` and, from the dataset, ``height``/``width``.

        Returns:
            dict | None: ``results`` with ``img``, ``img_shape``, ``ori_shape``; ``None`` when
            the image is bad and ``on_error='skip'``.
        """
        error: BaseException | None = None
        problem = 'cannot be decoded (truncated or not an image)'
        try:
            out = super().transform(results)
        except FileNotFoundError as exc:
            out, error, problem = None, exc, 'file does not exist'
        except AssertionError as exc:  # mmcv: "failed to load image" (decoder returned None)
            out, error = None, exc
        except Exception as exc:  # decoder/backend errors of any type
            out, error, problem = None, exc, f'cannot be read or decoded ({exc!r:.200})'
            path = results['img_path']
            if '://' not in path and osp.isfile(path) and osp.getsize(path) == 0:
                problem = 'file is empty (0 bytes)'
        if out is not None and out.get('img') is not None:
            expected = (results.get('height'), results.get('width'))
            actual = tuple(out['img'].shape[:2])
            if not self.check_shape or None in expected or actual == expected:
                return out
            problem = (f'decoded size (h, w)={actual} differs from the annotation file\'s '
                       f'(height, width)={expected}')
            if actual == expected[::-1]:
                problem += ' (transposed: EXIF orientation?)'
        self._fail(results, problem, error)
        return None
