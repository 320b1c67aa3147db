"""Which device and which precision: the one choice that training and the torch backend share.

`resolve_device("auto")` is CUDA when there is one, else the CPU. `use_bf16(device, precision)`
is True for `bf16`, False for `fp32`, and for `auto` decides by the hardware: bf16 on CUDA
devices that support it and on CPUs whose bf16 matrix products beat fp32 (AVX512-BF16 or AMX;
benchmarks/train_step.py measures the gain), fp32 elsewhere.
"""

from __future__ import annotations

import torch

from obf.core.errors import ObfError


def resolve_device(name: str, what: str = "device") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` -> a torch device; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ObfError(f"{what}: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def cpu_bf16_pays() -> bool:
    """bf16 matrix products beat fp32 on CPUs with AVX512-BF16 or AMX."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def use_bf16(device: torch.device, precision: str) -> bool:
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_pays()
