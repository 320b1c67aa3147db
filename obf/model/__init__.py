"""The network (pure PyTorch, single device), its checkpoints and the device it runs on.

`from obf.model import OmniByteFormer` is the public model API (DESIGN.md).
"""

from obf.model.checkpoint import CheckpointError, load_model, read_config, save_checkpoint
from obf.model.devices import resolve_device, use_bf16
from obf.model.layers import KVCache, Memory, StaticKVCache, StepWeights
from obf.model.network import OmniByteFormer

__all__ = [
    "CheckpointError",
    "KVCache",
    "load_model",
    "Memory",
    "OmniByteFormer",
    "read_config",
    "resolve_device",
    "save_checkpoint",
    "StaticKVCache",
    "StepWeights",
    "use_bf16",
]
