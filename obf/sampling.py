"""One decode loop for every backend, with greedy / temperature / top-k / top-p sampling.

Imports no torch: backends hand back numpy logits. Built from small functions in the spirit of
litgpt: `sample_top_p` -> `sample` -> `next_tokens` -> `generate`.

A backend implements `Backend` (encode once, then step with an explicit cache). Output is always
real bytes: non-byte ids other than EOS are masked before sampling. Outputs longer than one
decoder window are produced window after window, each new window encoding the bytes before it
(the `continue` objective the model is trained on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from obf.vocab import BOS, EOS, N_BYTES, PAD, encoder_input, paired_input


class Backend(Protocol):
    """What the decode loop needs from a model runtime (torch or ONNX Runtime)."""

    max_src_len: int  # encoder context in ids (tags included)
    max_tgt_len: int  # decoder window in ids (BOS included)
    vocab_size: int
    patch_size: int  # encoder patch size: source batches are padded to a multiple of it

    def encode(self, src_ids: np.ndarray) -> Any:
        """src_ids (B, S) int64, right-padded with PAD -> an opaque memory handle."""

    def init_cache(self, memory: Any) -> Any:
        """An empty self-attention cache for the batch of `memory`."""

    def step(self, tokens: np.ndarray, memory: Any, cache: Any) -> tuple[np.ndarray, Any]:
        """tokens (B,) int64 -> logits (B, V) float32 for the next id, and the updated cache."""


@dataclass(frozen=True)
class SamplingOptions:
    max_bytes: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    stop_at_eos: bool = True  # False: EOS is never sampled, so every row emits exactly max_bytes

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        if self.temperature < 0:
            raise ValueError("temperature must not be negative")
        if self.top_k < 0:
            raise ValueError("top_k must not be negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


def mask_non_bytes(logits: np.ndarray, keep_eos: bool = True) -> np.ndarray:
    """(B, V) logits with every id that is neither a byte nor (with `keep_eos`) EOS set to -inf."""
    out = np.full_like(logits, -np.inf)
    out[:, :N_BYTES] = logits[:, :N_BYTES]
    if keep_eos:
        out[:, EOS] = logits[:, EOS]
    return out


def sample_top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of ids whose probability reaches top_p (per row); renormalise."""
    order = np.argsort(-probs, axis=-1)
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    cum = np.cumsum(sorted_p, axis=-1)
    drop_sorted = (cum - sorted_p) >= top_p  # the first id is always kept
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    probs = np.where(drop, 0.0, probs)
    return probs / probs.sum(axis=-1, keepdims=True)


def sample(logits: np.ndarray, opts: SamplingOptions, rng: np.random.Generator) -> np.ndarray:
    """(B, V) logits -> (B,) ids under greedy / temperature / top-k / top-p."""
    if opts.temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / opts.temperature
    if opts.top_k:
        k = min(opts.top_k, z.shape[-1])
        kth = np.partition(z, -k, axis=-1)[:, -k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    if opts.top_p < 1.0:
        probs = sample_top_p(probs, opts.top_p)
    u = rng.random((probs.shape[0], 1))
    ids = (np.cumsum(probs, axis=-1) < u).sum(axis=-1)
    return np.minimum(ids, probs.shape[-1] - 1)


def next_tokens(backend: Backend, tokens: np.ndarray, memory: Any, cache: Any, opts: SamplingOptions,
                rng: np.random.Generator) -> tuple[np.ndarray, Any]:
    logits, cache = backend.step(tokens, memory, cache)
    return sample(mask_non_bytes(logits, keep_eos=opts.stop_at_eos), opts, rng), cache


def pad_batch(rows: Sequence[Sequence[int]], multiple: int = 1) -> np.ndarray:
    """Right-pad id lists with PAD to one length (a multiple of `multiple`) -> (B, S) int64."""
    n = max(len(r) for r in rows)
    n += (-n) % multiple
    out = np.full((len(rows), n), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def generate(backend: Backend, contexts: Sequence[bytes], modalities: Sequence[str], *, task: str = "continue",
             target_modalities: Sequence[str] | None = None, opts: SamplingOptions = SamplingOptions()) -> list[bytes]:
    """Generate up to `opts.max_bytes` bytes for each input; a batch of inputs of any lengths.

    `continue`: the bytes that follow each context. `paired`: the target file for each input
    (of `target_modalities`, default the input's); its first window is conditioned on the input,
    later windows continue the target's own bytes. Returns the generated bytes per input. A row
    stops at EOS (when `stop_at_eos`) or at `max_bytes`; the batch stops when every row has.
    """
    if len(contexts) != len(modalities):
        raise ValueError("contexts and modalities differ in length")
    if task not in ("continue", "paired"):
        raise ValueError(f"task {task!r} cannot generate files; use continue or paired")
    targets = list(target_modalities) if target_modalities is not None else list(modalities)
    rng = np.random.default_rng(opts.seed)
    n = len(contexts)
    out = [bytearray() for _ in range(n)]
    done = np.full(n, opts.max_bytes == 0)
    contexts = [bytes(c) for c in contexts]
    history = list(contexts)  # what the next window's encoder sees
    window = backend.max_tgt_len  # ids one decoder window emits (BOS in, max_tgt_len out)
    first_window = True
    while not done.all():
        active = np.flatnonzero(~done)
        rows = []
        for i in active:
            if task == "paired" and first_window:
                rows.append(paired_input(contexts[i], modalities[i], targets[i], backend.max_src_len))
            else:
                m = targets[i] if task == "paired" else modalities[i]
                rows.append(encoder_input(m, "continue", history[i], backend.max_src_len))
        src = pad_batch(rows, backend.patch_size)
        memory = backend.encode(src)
        cache = backend.init_cache(memory)
        tokens = np.full(len(active), BOS, dtype=np.int64)
        finished = np.zeros(len(active), dtype=bool)
        for _ in range(window):
            tokens, cache = next_tokens(backend, tokens, memory, cache, opts, rng)
            for j, i in enumerate(active):
                if finished[j]:
                    continue
                t = int(tokens[j])
                if t == EOS and opts.stop_at_eos:
                    finished[j] = done[i] = True
                elif t < N_BYTES:
                    out[i].append(t)
                if len(out[i]) >= opts.max_bytes:
                    finished[j] = done[i] = True
            if finished.all():
                break
        first_window = False
        for i in active:
            history[i] = bytes(out[i]) if task == "paired" else bytes(contexts[i]) + bytes(out[i])
    return [bytes(o) for o in out]
