from .backend_model import BACKENDS, ONNXBackendDetector
from .onnx_export import AUX_MODULE_NAMES, CoDETRDeployModel, check_onnx_graph, export_onnx

__all__ = [
    'BACKENDS', 'ONNXBackendDetector', 'AUX_MODULE_NAMES', 'CoDETRDeployModel',
    'check_onnx_graph', 'export_onnx'
]
