"""Export to ONNX: the encoder and the KV-cached decoder graphs, parity against torch, and the
optional int8 / fp16 graphs.
"""

from obf.export.onnx_export import ExportError, dataset_samples, export

__all__ = [
    "dataset_samples",
    "export",
    "ExportError",
]
