"""Checkpoints: weights in safetensors + config.json, and one atomic train-state file to resume.

MODEL_DIR layout::

    model.safetensors   the weights (what evaluate / export / serving read)
    config.json         {"model": ModelConfig, "vocab": Vocab, "step": N}
    train_state.pt      weights + optimizer + step + RNG states + data position, for exact resume

A checkpoint is one atomic step (`_commit`): the new files are written beside the old ones under
temp names and fsynced, then a commit record (`checkpoint.json`: each file's temp name and
sha256) is renamed into place, which is the atomic step, then the files are renamed over the old
ones, with the folder fsynced after each step. A crash before the record leaves the old set
whole; a crash after it is rolled forward by the next reader (`recover`, called by every loader),
so weights, config and train state always belong to one step. config.json also names the
weights' sha256, which `load_model` checks. Nothing is loaded with pickle:
`torch.load(..., weights_only=True)` only accepts tensors and plain containers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from obf.core.config import ModelConfig
from obf.core.errors import ObfError
from obf.core.storage import write_temp_beside
from obf.core.vocab import Vocab
from obf.model.network import OmniByteFormer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "train_state.pt"


class CheckpointError(ObfError):
    """A model dir or train state is missing, corrupt or does not match."""


COMMIT = "checkpoint.json"


def check_fresh_output(model_dir: Path, data_dir: Path | None = None) -> None:
    """Refuse, with one line and nothing touched, a fresh training's output dir that would replace
    what obf did not write: a file, the dataset itself (or a dir holding it or inside it), or a dir
    that holds a file of a model's names without the commit record that every obf checkpoint
    leaves. A dir an earlier `obf train` wrote (or one it left before its first checkpoint, holding
    none of those names) is trained into again; other files in it are left as they are. No mark
    file is added: the model dir's files are the model's (DVC hashes them)."""
    out = model_dir.resolve()
    if data_dir is not None:
        src = data_dir.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise CheckpointError(f"{model_dir}: the output dir {'is' if out == src else 'holds or lies in'} the "
                                  f"dataset {data_dir}; choose another --out")
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckpointError(f"{model_dir}: exists and is not a directory; obf train writes its model dir there")
    try:
        if isinstance(json.loads((out / COMMIT).read_bytes()).get("files"), dict):
            return
    except (OSError, ValueError, AttributeError):
        pass
    theirs = [n for n in (WEIGHTS, CONFIG, STATE, "train_summary.json") if (out / n).exists()]
    if theirs:
        raise CheckpointError(f"{model_dir}: holds {theirs[0]}, which obf train did not write (no {COMMIT}); "
                              "remove it or choose another --out")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)  # a rename is durable only once its folder is
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(d: Path, name: str, write) -> str:
    """Write one file under a temp name in `d` (fsynced); return the temp name."""
    return Path(write_temp_beside(d / name, write)).name


def _sha_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _commit(d: Path, writers: dict[str, Any]) -> dict[str, str]:
    """Replace the files named in `writers` ({name: write(path)}) as one atomic step; return their sha256."""
    d.mkdir(parents=True, exist_ok=True)
    temps: dict[str, str] = {}
    try:
        for name, write in writers.items():
            temps[name] = _write_temp(d, name, write)
    except BaseException:
        for t in temps.values():
            (d / t).unlink(missing_ok=True)
        raise
    files = {name: {"temp": t, "sha256": _sha_file(d / t)} for name, t in temps.items()}
    record = _write_temp(d, COMMIT, lambda p: Path(p).write_text(json.dumps({"files": files}, sort_keys=True)))
    os.replace(d / record, d / COMMIT)  # the atomic step: from here on, the new set is the checkpoint
    _fsync_dir(d)
    recover(d)
    return {name: f["sha256"] for name, f in files.items()}


def recover(model_dir: str | Path) -> None:
    """Finish a checkpoint whose commit record was written but whose files were not all renamed
    into place (a crash in between): roll it forward. A no-op on a whole checkpoint."""
    d = Path(model_dir)
    try:
        files = json.loads((d / COMMIT).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    moved = False
    for name, f in files.items():
        if (d / f["temp"]).is_file():
            os.replace(d / f["temp"], d / name)
            moved = True
    if moved:
        _fsync_dir(d)
    for stale in d.glob(".*.tmp"):  # temps of a checkpoint that crashed before its record: never committed
        if any(stale.name.startswith(f".{n}.") for n in (WEIGHTS, CONFIG, STATE, COMMIT)):
            stale.unlink(missing_ok=True)


def weights_sha256(model_dir: str | Path) -> str | None:
    """sha256 of model.safetensors in `model_dir` (None when there is none)."""
    path = Path(model_dir) / WEIGHTS
    return _sha_file(path) if path.is_file() else None


def _clean_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without wrappers' prefixes (DDP `module.`, compile `_orig_mod.`), contiguous, on CPU."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("module.", "", 1) if k.startswith("module.") else k
        k = k.replace("_orig_mod.", "")
        out[k] = v.detach().to("cpu").contiguous()
    return out


def _model_writers(model: torch.nn.Module, cfg: ModelConfig, step: int, extra: dict[str, Any] | None
                   ) -> tuple[dict[str, Any], str]:
    """Writers of model.safetensors and config.json (which names the weights' sha256)."""
    sd = _clean_state_dict(model)
    blob = save(sd, metadata={"format": "pt"})
    sha = hashlib.sha256(blob).hexdigest()
    meta = {"model": cfg.to_dict(), "vocab": Vocab().to_dict(), "step": step, "weights_sha256": sha, **(extra or {})}
    return {WEIGHTS: lambda p: Path(p).write_bytes(blob),
            CONFIG: lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")}, sha


def save_model(model_dir: str | Path, model: torch.nn.Module, cfg: ModelConfig, *, step: int = 0,
               extra: dict[str, Any] | None = None) -> str:
    """Write model.safetensors and config.json as one atomic step; return the weights' sha256."""
    writers, sha = _model_writers(model, cfg, step, extra)
    _commit(Path(model_dir), writers)
    return sha


def save_checkpoint(model_dir: str | Path, model: torch.nn.Module, cfg: ModelConfig, state: dict[str, Any], *,
                    step: int, extra: dict[str, Any] | None = None) -> str:
    """Weights, config.json and the train state as one atomic step (the state names the weights'
    sha256 too); return that sha256."""
    writers, sha = _model_writers(model, cfg, step, extra)
    state = {**state, "weights_sha256": sha}
    _commit(Path(model_dir), {**writers, STATE: lambda p: torch.save(state, p)})
    return sha


def read_config(model_dir: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    d = Path(model_dir)
    _recover_quietly(d)
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

    cfg, meta = read_config(model_dir)
    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: missing {WEIGHTS}")
    try:
        sd = load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: corrupt weights ({str(e).splitlines()[0]})") from None
    if meta.get("weights_sha256") and weights_sha256(model_dir) != meta["weights_sha256"]:
        raise CheckpointError(f"{path}: does not match config.json (changed after obf wrote it)")
    model = OmniByteFormer(cfg).to(device)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match config.json "
                              f"(missing {len(missing)}, unexpected {len(unexpected)})")
    return model


def _recover_quietly(d: Path) -> None:
    """Roll an interrupted checkpoint forward where the folder is writable (a read-only copy of a
    whole checkpoint needs nothing)."""
    try:
        recover(d)
    except OSError:
        pass


def load_train_state(model_dir: str | Path) -> dict[str, Any]:
    _recover_quietly(Path(model_dir))
    path = Path(model_dir) / STATE
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: nothing to resume (no {STATE})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt train state ({str(e).splitlines()[0][:200]})") from None
