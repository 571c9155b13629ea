"""Post-training INT8 quantisation of an exported Co-DETR graph.

- ONNX Runtime: its static quantisation (``onnxruntime.quantization.quantize_static``), QDQ
  format, int8 weights per output channel, uint8 activations, min/max calibration; the result
  is an ``.onnx`` file.
- OpenVINO: NNCF's post-training quantisation (``nncf.quantize``, mixed preset: symmetric
  weights, asymmetric activations); the result is OpenVINO IR (``.xml`` + ``.bin``).

Both quantise the convolutions and matrix products only, and keep these in fp32
(:data:`KEEP_FP32`, matched on node names): the stem convolution, the deformable attention's
sampling offsets and attention weights (they place the samples), the decoder's self-attention
(300 queries: little time, sensitive), the two-stage proposal layers and every class/box
branch. The sampling itself (``GridSample`` or the native operator), normalisations and
softmaxes stay fp32 too. The file records its precision in the metadata
(:data:`PRECISION_KEY` = 'int8') next to the export's own entries.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

from ..ops import native

PRECISION_KEY = 'codetr_precision'
QUANTIZED_OPS = ('Conv', 'MatMul', 'Gemm')
#: Regular expressions (searched in node names) of the layers kept in fp32.
KEEP_FP32 = (
    r'^/backbone/conv1/',         # the stem, on raw normalised pixels
    r'sampling_offsets',          # deformable attention: where the samples are taken
    r'attention_weights',         # ... and their weights
    r'/self_attn/attn/',          # the decoder's self-attention over the queries
    r'memory_trans_fc|pos_trans_fc',  # two-stage proposals and query positions
    r'cls_branches|reg_branches',     # class and box branches (all layers)
)


def nodes_kept_fp32(onnx_file: str | Path, patterns: Sequence[str] = KEEP_FP32) -> List[str]:
    """Names of the quantisable nodes (:data:`QUANTIZED_OPS`) that ``patterns`` keep in
    fp32."""
    import onnx
    model = onnx.load(str(onnx_file), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS
            and any(re.search(p, n.name) for p in patterns)]


def _read_metadata(onnx_file: str | Path) -> Dict[str, str]:
    import onnx
    model = onnx.load(str(onnx_file), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


@contextlib.contextmanager
def _native_ops_in_calibration(onnx_file: str | Path):
    """ONNX Runtime's calibrator opens its own session and takes no custom-operator library:
    while a graph with the native operator is calibrated, the session options it creates get
    the library registered (restored afterwards)."""
    import onnx
    from onnxruntime.quantization import calibrate
    model = onnx.load(str(onnx_file), load_external_data=False)
    if not any(n.domain == native.DOMAIN for n in model.graph.node):
        yield
        return
    library = native.native_library('onnxruntime', required=True)
    original = calibrate.onnxruntime.SessionOptions

    def session_options():
        options = original()
        options.register_custom_ops_library(str(library))
        return options

    calibrate.onnxruntime.SessionOptions = session_options
    try:
        yield
    finally:
        calibrate.onnxruntime.SessionOptions = original


def quantize_onnxruntime(onnx_file: str | Path, images: Iterable[np.ndarray],
                         out_file: str | Path,
                         keep_fp32: Sequence[str] = KEEP_FP32) -> List[str]:
    """ONNX Runtime static INT8 quantisation (QDQ), calibrated on ``images``.

    Args:
        onnx_file: The exported fp32 graph.
        images: Calibration inputs, each float32 (1, 3, H, W) BGR 0-255 pixels.
        out_file: The ``.onnx`` file to write.
        keep_fp32: Node-name patterns kept in fp32.

    Returns:
        list[str]: The quantisable nodes kept in fp32.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(images)

        def get_next(self):
            image = next(self.items, None)
            return None if image is None else {'images': image}

    kept = nodes_kept_fp32(onnx_file, keep_fp32)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with _native_ops_in_calibration(onnx_file):
        quantize_static(str(onnx_file), str(out_file), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=kept, calibrate_method=CalibrationMethod.MinMax)
    model = onnx.load(str(out_file))
    del model.metadata_props[:]
    for key, value in {**_read_metadata(onnx_file), PRECISION_KEY: 'int8'}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out_file))
    return kept


def quantize_openvino(onnx_file: str | Path, images: Sequence[np.ndarray],
                      out_file: str | Path,
                      keep_fp32: Sequence[str] = KEEP_FP32) -> List[str]:
    """NNCF INT8 quantisation for OpenVINO, calibrated on ``images``; writes IR
    (``out_file`` .xml and its .bin).

    Returns:
        list[str]: The quantisable nodes kept in fp32.
    """
    import nncf
    import openvino as ov
    core = ov.Core()
    library = native.native_library('openvino')
    if library is not None:
        core.add_extension(str(library))
    model = core.read_model(str(onnx_file))
    kept = nodes_kept_fp32(onnx_file, keep_fp32)
    ov_names = {op.get_friendly_name() for op in model.get_ops()}
    ignored = nncf.IgnoredScope(names=[name for name in kept if name in ov_names],
                                validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(list(images)),
                              preset=nncf.QuantizationPreset.MIXED, subset_size=len(images),
                              model_type=nncf.ModelType.TRANSFORMER, ignored_scope=ignored)
    for key, value in {**_read_metadata(onnx_file), PRECISION_KEY: 'int8'}.items():
        quantized.set_rt_info(value, ['framework', key])
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out_file), compress_to_fp16=False)
    return kept


#: The quantiser and the output file suffix of each backend.
QUANTIZERS = {'onnxruntime': (quantize_onnxruntime, '.onnx'),
              'openvino': (quantize_openvino, '.xml')}


def quantize(backend: str, onnx_file: str | Path, images: Sequence[np.ndarray],
             out_file: str | Path) -> List[str]:
    """:func:`quantize_onnxruntime` or :func:`quantize_openvino` by ``backend``; returns the
    nodes kept in fp32.

    Raises:
        ValueError: For another backend, or an ``out_file`` without the backend's suffix.
    """
    if backend not in QUANTIZERS:
        raise ValueError(f'backend={backend!r}: expected one of {tuple(QUANTIZERS)}')
    quantizer, suffix = QUANTIZERS[backend]
    if Path(out_file).suffix != suffix:
        raise ValueError(f'--out {out_file}: --backend {backend} writes a {suffix} file')
    return quantizer(onnx_file, images, out_file)


def calibration_images(cfg, num: int, split: str = 'train') -> List[np.ndarray]:
    """``num`` images of the config's dataset through its test pipeline, as graph inputs.

    Args:
        cfg (Config): The model's config.
        num (int): How many images (evenly spaced over the dataset; all if it has fewer).
        split (str): ``'train'`` (the innermost dataset of ``train_dataloader``, with the
            test pipeline: calibration apart from the evaluation images) or ``'test'``.

    Returns:
        list[np.ndarray]: float32 (1, 3, H, W) BGR 0-255 pixels at the test size.
    """
    import copy

    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope
    if split not in ('train', 'test'):
        raise ValueError(f'split={split!r}: expected train or test')
    if num < 1:
        raise ValueError(f'--calib-images {num}: expected at least 1')
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset_cfg = copy.deepcopy(cfg[f'{split}_dataloader'].dataset)
    while 'dataset' in dataset_cfg:  # wrappers (class balancing, mixing, repeats)
        dataset_cfg = dataset_cfg.dataset
    dataset_cfg.pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
    dataset_cfg.pop('filter_cfg', None)
    dataset_cfg.test_mode = True
    dataset = DATASETS.build(dataset_cfg)
    if len(dataset) == 0:
        raise ValueError(f'{split}_dataloader.dataset ({dataset_cfg.get("ann_file")}) has no '
                         'images to calibrate with')
    indices = np.linspace(0, len(dataset) - 1, min(num, len(dataset))).round().astype(int)
    return [dataset[int(i)]['inputs'][None].float().numpy() for i in indices]
