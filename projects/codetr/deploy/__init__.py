from .backend_model import BACKENDS, ONNXBackendDetector
from .cpu_inference import CPUInferenceHook, optimize_for_cpu_inference
from .onnx_export import (
    AUX_MODULE_NAMES,
    TARGETS,
    CoDETRDeployModel,
    check_onnx_graph,
    export_onnx,
)

__all__ = [
    'BACKENDS', 'ONNXBackendDetector', 'CPUInferenceHook', 'optimize_for_cpu_inference',
    'AUX_MODULE_NAMES', 'TARGETS', 'CoDETRDeployModel', 'check_onnx_graph', 'export_onnx'
]
