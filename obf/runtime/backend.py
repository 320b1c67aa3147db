"""The `Backend` protocol the decode loop and scoring run on, and `open_backend`, which picks
the runtime from what a model dir holds.

An exported ONNX dir (`obf.json`) runs on ONNX Runtime without importing torch; a training
checkpoint dir (`config.json` + `model.safetensors`) runs on torch, imported only then.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from obf.core.errors import ObfError
from obf.core.system import require_torch


class Backend(Protocol):
    """What generation and scoring need from a model runtime (torch or ONNX Runtime)."""

    max_src_len: int  # encoder context in ids (tags included)
    max_input_len: int  # the longest `paired` source in ids (tags included)
    max_tgt_len: int  # decoder window in ids (BOS included)
    vocab_size: int
    patch_size: int  # encoder patch size: source batches are padded to a multiple of it
    query_map: bool  # `paired` queries read where the pair's conversion maps them (`input_offsets`)
    input_end: bool  # `paired` sources end with an EOS id after the input (`model.input_end`)
    layout_input: bool  # the decoder reads its targets' place ids (`model.layout_input`, `obf.formats.places`)
    paired_places: bool  # `paired` targets' bytes read their places too (`model.paired_places`, with layout_input)
    # What the model recorded beside its weights (checkpoint config.json or export obf.json):
    # the mixer, the ingest settings it was trained on, ...; None when it was built in memory.
    meta: Mapping[str, Any] | None

    def encode(self, src_ids: np.ndarray, align: np.ndarray | None = None) -> Any:
        """src_ids (B, S) int64, left-padded with PAD (`pad_batch`) -> an opaque memory handle;
        align (B,): the source position each row's first target lies at (default S, `continue`)."""

    def init_cache(self, memory: Any) -> Any:
        """An empty self-attention cache for the batch of `memory`."""

    def step(self, tokens: np.ndarray, memory: Any, cache: Any, shift: np.ndarray | None = None,
             places: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        """tokens (B,) int64 -> logits (B, V) float32 for the next id, and the updated cache.
        shift (B,) int64: how far this step's query moves from align + the ids before it (a
        `paired` target byte reading the input byte its conversion maps it to). places (B, 3)
        int64: the place ids of the byte this step predicts (`layout_input`; None: no place)."""

    def logits(self, src_ids: np.ndarray, dec_ids: np.ndarray, align: np.ndarray | None = None,
               places: np.ndarray | None = None) -> np.ndarray:
        """Teacher-forced logits (B, T, V) for src (B, S) and decoder input (B, T) (scoring);
        places (B, T, 3) the targets' place ids."""

    def window_logits(self, src_ids: np.ndarray, dec_ids: np.ndarray, rows: np.ndarray,
                      visible: np.ndarray, align: np.ndarray | None = None,
                      shift: np.ndarray | None = None, places: np.ndarray | None = None) -> np.ndarray:
        """Teacher-forced logits (N, T, V) of many decoder windows over one encoder run: window n
        reads source row rows[n], masked to its first visible[n] ids, its queries at align[n] + t
        + shift[n, t] (`OmniByteFormer.forward_windows`), places (N, T, 3) its targets' place ids."""


def meta_of(backend: Backend) -> Mapping[str, Any]:
    """What `backend` recorded beside its weights; empty for one built in memory (tests and
    benchmarks make backends that carry no `meta`)."""
    return getattr(backend, "meta", None) or {}


def query_map_of(backend: Backend) -> bool:
    """Whether `backend` places `paired` queries where the conversion reads (`Backend.query_map`);
    False for one that does not say (tests and benchmarks make backends without it)."""
    return bool(getattr(backend, "query_map", False))


def layout_input_of(backend: Backend) -> bool:
    """Whether `backend`'s decoder reads its targets' place ids (`Backend.layout_input`); False
    for one that does not say, as `query_map_of`."""
    return bool(getattr(backend, "layout_input", False))


def paired_places_of(backend: Backend) -> bool:
    """Whether `backend`'s `paired` targets read their place ids (`Backend.paired_places`, with
    `layout_input`); False for one that does not say, as `query_map_of`."""
    return layout_input_of(backend) and bool(getattr(backend, "paired_places", False))


def input_end_of(backend: Backend) -> bool:
    """Whether `backend`'s `paired` sources end with an EOS id after the input
    (`Backend.input_end`); False for one that does not say, as `query_map_of`."""
    return bool(getattr(backend, "input_end", False))


def open_backend(model_dir: str | Path, *, provider: str = "auto", precision: str = "fp32") -> Backend:
    """A backend over MODEL_DIR. `precision`: fp32 for both runtimes, int8 / fp16 for an ONNX export
    made with `export.int8` / `export.fp16`, bf16 for a checkpoint on torch."""
    d = Path(model_dir)
    if (d / "obf.json").is_file():
        from obf.runtime.onnx_backend import load as load_onnx

        return load_onnx(str(d), provider=provider, precision=precision)
    if (d / "config.json").is_file():
        require_torch(f"{d}: a checkpoint (obf train's model dir; an `obf export` dir runs without torch)")
        from obf.runtime.torch_backend import load as load_torch

        device = {"auto": "auto", "cpu": "cpu", "cuda": "cuda"}.get(provider, "auto")
        return load_torch(str(d), device=device, precision=precision)
    if not d.exists():
        raise ObfError(f"{d}: model dir not found")
    raise ObfError(f"{d}: not a model dir (neither obf.json of `obf export` nor config.json of `obf train`)")
