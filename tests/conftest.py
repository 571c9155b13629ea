"""Shared fixtures: registries, configs and tiny inputs for the model tests; and the run's
skip policy: a skipped test fails the run unless its reason is on :data:`ALLOWED_SKIPS`."""
import copy
import os
import sys
from pathlib import Path

# Before torch is imported, which reads them once (setting them later has no effect).
os.environ.setdefault('OMP_NUM_THREADS', '2')
os.environ.setdefault('MKL_NUM_THREADS', os.environ['OMP_NUM_THREADS'])

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Skip reasons that may appear in a green run (substring match): checks that need hardware
#: this machine does not have. Any other skip turns the run red (see pytest_sessionfinish).
ALLOWED_SKIPS = ('needs CUDA', 'torchvision is installed')
_disallowed_skips: list[str] = []


def pytest_addoption(parser):
    parser.addoption('--full', action='store_true',
                     help='`make test-full`: also the long variants (the config matrix at the '
                     "configs' own query, proposal and RoI-sample counts)")


@pytest.fixture(scope='session')
def full_run(request) -> bool:
    """Whether ``--full`` (``make test-full``) was given."""
    return request.config.getoption('--full')


def pytest_runtest_logreport(report):
    """Collect skips whose reason is not on the allow-list."""
    if report.skipped and not hasattr(report, 'wasxfail'):
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple)
                     else report.longrepr)
        if not any(allowed in reason for allowed in ALLOWED_SKIPS):
            _disallowed_skips.append(f'{report.nodeid}: {reason}')


def pytest_sessionfinish(session, exitstatus):
    """A skip outside the allow-list fails the run: a missing fixture file or package must
    not turn into a silent pass."""
    if _disallowed_skips and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _disallowed_skips:
        terminalreporter.section('skips that fail the run (not on conftest.ALLOWED_SKIPS)')
        for line in _disallowed_skips:
            terminalreporter.write_line(line)

TINY_CFG = ROOT / 'tests' / 'configs' / 'co_deformable_detr_tiny.py'
R50_CFG = ROOT / 'configs' / 'co_deformable_detr_r50_1x_coco.py'
BASELINE_CFG = ROOT / 'configs' / 'deformable_detr_pp_r50_1x_coco.py'
CO_DINO_TINY_CFG = ROOT / 'tests' / 'configs' / 'co_dino_tiny.py'
CO_DINO_R50_CFG = ROOT / 'configs' / 'co_dino_5scale_r50_1x_coco.py'


@pytest.fixture(scope='session', autouse=True)
def _register():
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    import projects.codetr  # noqa: F401


def load_cfg(path=TINY_CFG):
    """Config object of ``path``."""
    from mmengine.config import Config
    return Config.fromfile(str(path))


def perturbed_model(cfg_or_path, seed=0, scale=0.02):
    """:func:`build_model` with every parameter moved by N(0, ``scale``) noise (no tied
    scores, as in a trained model), in eval mode: the export tests' model."""
    model = build_model(cfg_or_path, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def build_model(cfg_or_path=TINY_CFG, seed=0, **model_overrides):
    """Build and initialise the model of a config (CPU, train mode)."""
    from mmdet.registry import MODELS
    cfg = load_cfg(cfg_or_path) if isinstance(cfg_or_path, (str, Path)) else cfg_or_path
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.update(model_overrides)
    model_cfg.backbone.init_cfg = None  # no pretrained download in tests
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model


def make_batch(model, gt_boxes, image_shapes, num_classes=80, seed=0):
    """Preprocessed (inputs, data_samples) with the given GT boxes per image.

    Args:
        gt_boxes (list[list[tuple]]): Per image, (x1, y1, x2, y2, label).
        image_shapes (list[tuple]): Per image (h, w); images are padded.
    """
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for boxes, (h, w) in zip(gt_boxes, image_shapes):
        inputs.append(torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             scale_factor=(1.0, 1.0), img_id=len(samples)))
        gt = InstanceData()
        gt.bboxes = torch.tensor([b[:4] for b in boxes], dtype=torch.float32).reshape(-1, 4)
        gt.labels = torch.tensor([b[4] for b in boxes], dtype=torch.long)
        sample.gt_instances = gt
        samples.append(sample)
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
    return data['inputs'], data['data_samples']
