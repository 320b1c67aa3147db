"""Model runtimes behind the `obf.sampling.Backend` protocol: torch and ONNX Runtime.

`open_backend(model_dir)` picks the runtime from what the dir holds: an exported ONNX dir
(`obf.json`) runs on ONNX Runtime without importing torch; a training checkpoint dir
(`config.json` + `model.safetensors`) runs on torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from obf.errors import ObfError


def open_backend(model_dir: str | Path, *, provider: str = "auto", precision: str = "fp32") -> Any:
    """A backend over MODEL_DIR. `precision`: fp32 for both runtimes, int8 / fp16 for an ONNX export
    made with `export.int8` / `export.fp16`, bf16 for a checkpoint on torch."""
    d = Path(model_dir)
    if (d / "obf.json").is_file():
        from obf.backends.onnx import load as load_onnx

        return load_onnx(str(d), provider=provider, precision=precision)
    if (d / "config.json").is_file():
        from obf.backends.torch import load as load_torch

        device = {"auto": "auto", "cpu": "cpu", "cuda": "cuda"}.get(provider, "auto")
        return load_torch(str(d), device=device, precision=precision)
    if not d.exists():
        raise ObfError(f"{d}: model dir not found")
    raise ObfError(f"{d}: not a model dir (neither obf.json of `obf export` nor config.json of `obf train`)")
