"""Run an exported ONNX model with ONNX Runtime or OpenVINO inside mmengine's test loop.

:class:`ONNXBackendDetector` is an mmengine model whose ``predict`` feeds the test pipeline's
images (uint8 BGR, already resized as the config says) to the exported graph and maps the boxes
back to the original images exactly as :class:`CoDETR.predict` with ``rescale=True`` does, so
``tools/test.py --backend`` reports the same COCO metrics (and ``--out`` dumps) as PyTorch.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.structures import InstanceData
from torch import Tensor

from ..ops import native
from .onnx_export import MASK_THRESHOLD_KEY, TARGET_KEY
from .quantize import PRECISION_KEY

BACKENDS = ('onnxruntime', 'openvino')
# OpenVINO's precision hints; int8 = a graph quantised by tools/deployment/quantize.py (its
# INT8 layers run in int8 whatever the hint, the others in fp32)
PRECISIONS = {'fp32': 'f32', 'bf16': 'bf16', 'fp16': 'f16', 'int8': 'f32'}


class _Runner:
    """``images`` (N, 3, H, W) float32 -> [boxes, scores, labels] with one backend.

    ``target`` is the runtime the graph was arranged for (``export_onnx``'s metadata; None
    for a graph without it); a graph arranged for the other runtime runs, with a warning
    unless ``warn_target`` is False. The native operator library of the backend
    (:func:`~projects.codetr.ops.native.native_library`) is loaded when it is built; a
    ``target='native'`` graph without it is refused with how to build it.
    """

    def __init__(self, onnx_file: str, backend: str, threads: Optional[int] = None,
                 precision: str = 'fp32', warn_target: bool = True) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision={precision!r}: expected one of {tuple(PRECISIONS)}')
        if precision in ('bf16', 'fp16') and backend != 'openvino':
            raise ValueError(f'precision={precision!r} needs backend=\'openvino\' '
                             f'(backend {backend!r} computes in fp32)')
        if backend == 'onnxruntime':
            import onnxruntime as ort
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            library = native.native_library('onnxruntime')
            if library is not None:
                options.register_custom_ops_library(str(library))
            try:
                self._session = ort.InferenceSession(onnx_file, options,
                                                     providers=['CPUExecutionProvider'])
            except Exception as error:
                self._explain_native(error, onnx_file, backend, library)
                raise
            shape = self._session.get_inputs()[0].shape
            metadata = self._session.get_modelmeta().custom_metadata_map
            self.target = metadata.get(TARGET_KEY)
            mask_threshold = metadata.get(MASK_THRESHOLD_KEY)
            graph_precision = metadata.get(PRECISION_KEY)
            self.output_names = [o.name for o in self._session.get_outputs()]
            self.run = lambda images: self._session.run(None, {'images': images})
        elif backend == 'openvino':
            import openvino as ov
            core = ov.Core()
            # explicit: the CPU plugin otherwise computes in bf16 where the CPU supports it
            config = {'INFERENCE_PRECISION_HINT': PRECISIONS[precision]}
            if threads:
                config['INFERENCE_NUM_THREADS'] = threads
            library = native.native_library('openvino')
            if library is not None:
                core.add_extension(str(library))
            try:
                model = core.read_model(onnx_file)
            except Exception as error:
                self._explain_native(error, onnx_file, backend, library)
                raise

            def metadata(name):  # where the ONNX frontend puts metadata_props
                key = ['framework', name]
                return model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None

            self.target = metadata(TARGET_KEY)
            mask_threshold = metadata(MASK_THRESHOLD_KEY)
            graph_precision = metadata(PRECISION_KEY)
            compiled = core.compile_model(model, 'CPU', config)
            self.hint = compiled.get_property('INFERENCE_PRECISION_HINT').to_string()
            shape = [d.get_length() if d.is_static else None
                     for d in compiled.input(0).get_partial_shape()]
            outputs = list(compiled.outputs)  # in the graph's order
            self.output_names = [o.get_any_name() for o in outputs]

            def run(images):
                result = compiled(images)
                return [result[o] for o in outputs]

            self.run = run
        else:
            raise ValueError(f'backend={backend!r}: expected one of {BACKENDS}')
        if (graph_precision == 'int8') != (precision == 'int8'):
            raise ValueError(
                f'{onnx_file} is an INT8 model (tools/deployment/quantize.py): run it with '
                '--precision int8' if graph_precision == 'int8' else
                f'--precision int8 runs an INT8 model, and {onnx_file} is not one: quantise '
                'it first with tools/deployment/quantize.py CONFIG MODEL.onnx --out ...')
        # the test_cfg mask threshold of a graph with masks (export_onnx's metadata)
        self.mask_threshold = float(mask_threshold) if mask_threshold is not None else 0.5
        if (warn_target and self.target is not None and self.target != 'native'
                and self.target != backend):
            print_log(f'{onnx_file} was exported with --target {self.target}; '
                      f'--target {backend} arranges the deformable attention faster for '
                      f'{backend} (tools/deployment/export_onnx.py)', logger='current',
                      level=logging.WARNING)
        # None where the axis is dynamic
        self.batch, self.height, self.width = (d if isinstance(d, int) else None
                                               for d in (shape[0], shape[2], shape[3]))

    @staticmethod
    def _explain_native(error: Exception, onnx_file: str, backend: str,
                        library: Optional[Path]) -> None:
        """Re-raise a load failure caused by a missing native operator with how to fix it."""
        if library is None and native.OP_NAME in str(error):
            raise native.NativeOpsMissingError(
                f'{onnx_file} uses the native {native.DOMAIN}::{native.OP_NAME} operator '
                f'(exported with --target native), but its {backend} library '
                f'{native.native_ops_dir() / native.LIBRARIES[backend]} does not exist; '
                f'{native.BUILD_HINT}') from error

    def __call__(self, images: np.ndarray) -> List[np.ndarray]:
        """Run ``images``, in chunks of the graph's batch size if that is fixed."""
        step = self.batch or len(images)
        parts = [self.run(images[i:i + step]) for i in range(0, len(images), step)]
        return [np.concatenate(outs) for outs in zip(*parts)]


@MODELS.register_module()
class ONNXBackendDetector(BaseModel):
    """Detector backed by an exported graph (``tools/deployment/export_onnx.py``).

    Args:
        onnx_file (str): The exported model.
        backend (str): ``'onnxruntime'`` or ``'openvino'``.
        threads (int, optional): CPU threads of the backend (its default when None).
        precision (str): ``'fp32'``, or with OpenVINO ``'bf16'``/``'fp16'`` (faster on CPUs
            with AMX; detections differ from PyTorch's by more than rounding).
    """

    def __init__(self, onnx_file: str, backend: str = 'onnxruntime',
                 threads: Optional[int] = None, precision: str = 'fp32',
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        suffixes = ('.onnx', '.xml') if backend == 'openvino' else ('.onnx', )
        if not str(onnx_file).endswith(suffixes):
            raise ValueError(f'backend {backend!r} runs an exported {" or ".join(suffixes)} '
                             f'model, got {onnx_file!r} (export with '
                             'tools/deployment/export_onnx.py, quantise with '
                             'tools/deployment/quantize.py)')
        if not Path(onnx_file).is_file():
            raise FileNotFoundError(f'ONNX model {onnx_file!r} does not exist')
        self.backend = _Runner(str(onnx_file), backend, threads, precision)

    def forward(self, inputs: List[Tensor], data_samples: Optional[List[DetDataSample]] = None,
                mode: str = 'predict'):
        """Only ``mode='predict'``: detections in the original image frame."""
        if mode != 'predict':
            raise ValueError(f'{type(self).__name__} only predicts (mode={mode!r})')
        if self.backend.height is None:  # dynamic H and W: each image at its own size
            outputs = [self.backend(img[None].float().numpy()) for img in inputs]
            return self._to_samples([np.concatenate(o) for o in zip(*outputs)], data_samples)
        h, w = self.backend.height, self.backend.width
        batch = np.zeros((len(inputs), 3, h, w), np.float32)
        for i, img in enumerate(inputs):
            ih, iw = img.shape[-2:]
            if (ih, iw) != (h, w):
                # zero padding would differ from PyTorch, which masks padding: refuse
                raise ValueError(
                    f'the ONNX model has a fixed {h}x{w} input (exported with --static) but '
                    f'this image is {ih}x{iw} after the test pipeline; export without --static '
                    f'(dynamic height and width, the default) or with --static --shape {ih} '
                    f'{iw} for images of that one size')
            batch[i] = img.float().numpy()
        return self._to_samples(self.backend(batch), data_samples)

    def _to_samples(self, outputs: List[np.ndarray],
                    data_samples: List[DetDataSample]) -> List[DetDataSample]:
        """Graph outputs -> ``pred_instances`` in the original image frame; a graph with
        ``masks`` has them pasted on the original image as ``CoDETR.predict`` does."""
        from ..models.roi_heads.mask_heads import SimpleRefineMaskHead
        outputs = dict(zip(self.backend.output_names, outputs))

        def tensor(name, i):
            return torch.from_numpy(np.ascontiguousarray(outputs[name][i]))

        for i, sample in enumerate(data_samples):
            ih, iw = sample.img_shape
            bboxes = tensor('boxes', i)
            bboxes[:, 0::2].clamp_(0, iw)
            bboxes[:, 1::2].clamp_(0, ih)
            if 'scale_factor' in sample:
                bboxes /= bboxes.new_tensor(sample.scale_factor).repeat(2)
            results = InstanceData(bboxes=bboxes, scores=tensor('scores', i),
                                   labels=tensor('labels', i).long())
            if 'masks' in outputs:
                oh, ow = sample.ori_shape[:2] if 'ori_shape' in sample else (ih, iw)
                results.masks = SimpleRefineMaskHead.paste_mask_probs(
                    tensor('masks', i)[:, None], bboxes, oh, ow, self.backend.mask_threshold)
            if 'mask_scores' in outputs:
                results.mask_scores = tensor('mask_scores', i)
            sample.pred_instances = results
        return data_samples
