"""Checkpoints: weights in safetensors + config.json, and one atomic train-state file to resume.

MODEL_DIR layout::

    model.safetensors   the weights (what evaluate / export / serving read)
    config.json         {"model": ModelConfig, "vocab": Vocab, "step": N}
    train_state.pt      weights + optimizer + step + RNG states + data position, for exact resume

Every file is written to a temp file, fsynced and renamed, and the folder is fsynced after the
rename. A checkpoint writes the weights, then config.json (with the weights' sha256), then the
train state (with the same sha256) last: the state is the commit point. A crash in between leaves
a pair whose hashes disagree, which `load_model` refuses with a clear error and a resume repairs
(it rewrites the weights of the state it resumes from). Nothing is loaded with pickle:
`torch.load(..., weights_only=True)` only accepts tensors and plain containers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from obf.config import ModelConfig
from obf.errors import ObfError
from obf.vocab import Vocab

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "train_state.pt"


class CheckpointError(ObfError):
    """A model dir or train state is missing, corrupt or does not match."""


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)  # the rename itself is durable only once the folder is
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def weights_sha256(model_dir: str | Path) -> str | None:
    """sha256 of model.safetensors in `model_dir` (None when there is none)."""
    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _clean_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without wrappers' prefixes (DDP `module.`, compile `_orig_mod.`), contiguous, on CPU."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("module.", "", 1) if k.startswith("module.") else k
        k = k.replace("_orig_mod.", "")
        out[k] = v.detach().to("cpu").contiguous()
    return out


def save_model(model_dir: str | Path, model: torch.nn.Module, cfg: ModelConfig, *, step: int = 0,
               extra: dict[str, Any] | None = None) -> str:
    """Write model.safetensors, then config.json naming its sha256, each atomically; return the sha256."""
    d = Path(model_dir)
    sd = _clean_state_dict(model)
    _atomic(d / WEIGHTS, lambda p: save_file(sd, p, metadata={"format": "pt"}))
    sha = weights_sha256(d)
    meta = {"model": cfg.to_dict(), "vocab": Vocab().to_dict(), "step": step, "weights_sha256": sha, **(extra or {})}
    _atomic(d / CONFIG, lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
    return sha


def read_config(model_dir: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    d = Path(model_dir)
    path = d / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{d}: not a model dir (no {CONFIG}); train one with `obf train`")
    try:
        meta = json.loads(path.read_text())
        Vocab.check(meta["vocab"])
        return ModelConfig.from_dict(meta["model"]), meta
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt or incompatible config ({e})") from None


def load_model(model_dir: str | Path, device: str | torch.device = "cpu"):
    """Load an OmniByteFormer from model.safetensors + config.json (no pickle)."""
    from obf.model import OmniByteFormer

    cfg, meta = read_config(model_dir)
    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: missing {WEIGHTS}")
    if meta.get("weights_sha256") and weights_sha256(model_dir) != meta["weights_sha256"]:
        raise CheckpointError(f"{path}: does not match config.json (a checkpoint was interrupted); "
                              "`obf train ... --resume` repairs it")
    try:
        sd = load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: corrupt weights ({str(e).splitlines()[0]})") from None
    model = OmniByteFormer(cfg).to(device)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match config.json (missing {len(missing)}, unexpected {len(unexpected)})")
    return model


def save_train_state(model_dir: str | Path, state: dict[str, Any]) -> None:
    _atomic(Path(model_dir) / STATE, lambda p: torch.save(state, p))


def load_train_state(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / STATE
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: nothing to resume (no {STATE})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt train state ({str(e).splitlines()[0][:200]})") from None
