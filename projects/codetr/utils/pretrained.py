"""``torchvision://`` checkpoints without torchvision installed.

The configs initialise the backbone from ``torchvision://resnet50`` like the
official Co-DETR. mmengine resolves that prefix by importing torchvision to
read its model URLs, and there is no CPU build of torchvision on some
machines. When torchvision is missing, this module resolves the name through
the URL table that mmengine itself ships (``mmengine/hub/torchvision_0.12.json``)
and downloads through the usual torch hub cache (``$TORCH_HOME/hub/checkpoints``),
so a file placed there beforehand is used offline.
"""
import importlib.util
import os.path as osp
from typing import Dict, Optional

import mmengine
from mmengine.runner.checkpoint import CheckpointLoader, load_from_http

PREFIX = 'torchvision://'


def torchvision_model_urls() -> Dict[str, str]:
    """Name -> URL table of the torchvision ImageNet weights (mmengine's copy)."""
    return mmengine.load(osp.join(mmengine.__path__[0], 'hub', 'torchvision_0.12.json'))


def load_from_torchvision_table(filename: str, map_location: Optional[str] = None) -> dict:
    """Load ``torchvision://NAME`` through mmengine's URL table.

    Raises:
        KeyError: ``NAME`` is not a known torchvision model.
    """
    name = filename[len(PREFIX):]
    urls = torchvision_model_urls()
    if name not in urls:
        raise KeyError(f'{filename!r}: unknown torchvision model {name!r}; known names '
                       f'include {sorted(urls)[:8]}...')
    return load_from_http(urls[name], map_location=map_location)


def register_torchvision_fallback() -> bool:
    """Resolve ``torchvision://`` without torchvision when it is not installed.

    Returns:
        bool: True if the fallback loader was registered.
    """
    if importlib.util.find_spec('torchvision') is not None:
        return False  # mmengine's own loader works
    CheckpointLoader.register_scheme(PREFIX, load_from_torchvision_table, force=True)
    return True
