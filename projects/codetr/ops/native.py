"""The native deformable-attention operator of the runtimes (``codetr::MSDeformAttn``).

``csrc/`` holds one CPU kernel (``msda_kernel.h``: mmcv's bilinear sampling, nothing
materialised) and its two wrappers: an ONNX Runtime custom-op library and an OpenVINO
extension. ``tools/misc/build_native_ops.py`` (run by ``tools/install.sh``) builds them into
``projects/codetr/ops/lib/``, or ``$CODETR_NATIVE_OPS_DIR`` when that is set. A graph exported
with ``--target native`` holds the operator instead of ``GridSample``; the runtimes load the
library for it (:func:`native_library`). Without the libraries the standard-operator graphs
(``--target onnxruntime|openvino``) remain, and asking for the native ones is an error that
says how to build them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

DOMAIN, OP_NAME = 'codetr', 'MSDeformAttn'
ENV_DIR = 'CODETR_NATIVE_OPS_DIR'
LIBRARIES = {'onnxruntime': 'libcodetr_msda_onnxruntime.so',
             'openvino': 'libcodetr_msda_openvino.so'}
BUILD_HINT = ('build it with `python tools/misc/build_native_ops.py` (part of `make install`; '
              'needs cmake and a C++ compiler, and npm for the ONNX Runtime headers), or '
              'export with --target onnxruntime / openvino (standard operators only)')


class NativeOpsMissingError(RuntimeError):
    """The native operator library a graph or an export needs is not built."""


def native_ops_dir() -> Path:
    """Where the libraries are looked for: ``$CODETR_NATIVE_OPS_DIR`` or ``ops/lib``."""
    return Path(os.environ.get(ENV_DIR) or Path(__file__).resolve().parent / 'lib')


def native_library(runtime: str, required: bool = False) -> Optional[Path]:
    """The operator library for ``runtime`` (``'onnxruntime'`` or ``'openvino'``).

    Returns None when it is not built, unless ``required``.

    Raises:
        ValueError: For another runtime.
        NativeOpsMissingError: With ``required``, when the library is missing (naming the
            path and how to build it).
    """
    if runtime not in LIBRARIES:
        raise ValueError(f'runtime={runtime!r}: expected one of {tuple(LIBRARIES)}')
    path = native_ops_dir() / LIBRARIES[runtime]
    if path.is_file():
        return path
    if required:
        raise NativeOpsMissingError(f'the native {DOMAIN}::{OP_NAME} operator for {runtime} '
                                    f'is not built ({path} does not exist); {BUILD_HINT}')
    return None


class MSDeformAttnNative(torch.autograd.Function):
    """Exports as one ``codetr::MSDeformAttn`` node; computes mmcv's formulation in PyTorch
    (:func:`~.ms_deform_attn.multi_scale_deformable_attn_onnx`), so the traced model's values
    are PyTorch's.

    Inputs as :func:`~.ms_deform_attn.ms_deform_attn_core`: value (N, S, M, D), spatial_shapes
    (L, 2) int64, level_start_index (L, ) int64, sampling_locations (N, Q, M, L, P, 2),
    attention_weights (N, Q, M, L, P); output (N, Q, M * D).
    """

    @staticmethod
    def forward(ctx, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
        from .ms_deform_attn import multi_scale_deformable_attn_onnx
        # computed untraced, as a compiled kernel would be: the node replaces these ops
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return multi_scale_deformable_attn_onnx(value, spatial_shapes, level_start_index,
                                                    sampling_locations, attention_weights)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g, value, spatial_shapes, level_start_index, sampling_locations,
                 attention_weights):
        output = g.op(f'{DOMAIN}::{OP_NAME}', value, spatial_shapes, level_start_index,
                      sampling_locations, attention_weights)
        # rank 3, value's dtype: spares the exporter's missing-shape-inference warning
        output.setType(value.type().with_sizes([None, None, None]))
        return output
