"""Model runtimes: the `Backend` protocol, the ONNX Runtime backend, and scoring files with the
model as served (network + mixer).

The torch backend (`obf.runtime.torch_backend`) is not imported here: the serving path runs
without torch, and `open_backend` loads it only for a training checkpoint.
"""

from obf.runtime.backend import Backend, input_end_of, layout_input_of, meta_of, open_backend, query_map_of
from obf.runtime.onnx_backend import OnnxBackend
from obf.runtime.scoring import paired_log_probs, served_log_probs, tail_log_probs, whole_file_bits

__all__ = [
    "Backend",
    "input_end_of",
    "layout_input_of",
    "meta_of",
    "OnnxBackend",
    "open_backend",
    "query_map_of",
    "paired_log_probs",
    "served_log_probs",
    "tail_log_probs",
    "whole_file_bits",
]
