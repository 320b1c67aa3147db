"""One decode loop for every backend, with greedy / temperature / top-k / top-p sampling.

Imports no torch: backends hand back numpy logits. Built from small functions in the spirit of
litgpt: `sample_top_p` -> `sample` -> `next_tokens` -> `generate`.

A backend implements `Backend` (encode once, then step with an explicit cache). Output is always
real bytes: non-byte ids other than EOS are masked before sampling. Outputs longer than one
decoder window are produced window after window, each new window encoding the bytes before it
(the `continue` objective the model is trained on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obf.core.config import DECODING, GenerateSettings
from obf.core.vocab import BOS, EOS, N_BYTES, PAD, PAIRED_TAGS, encoder_input, paired_input
from obf.formats.conversions import input_offsets
from obf.mixer.match import modality_index
from obf.mixer.mix import RowHints, mixer_of
from obf.runtime.backend import Backend, input_end_of, meta_of, query_map_of
from obf.runtime.scoring import tail_log_probs


@dataclass(frozen=True)
class SamplingOptions:
    """How the decode loop picks each byte. The dataclass's own defaults are plain greedy;
    `for_task` gives what users get by default (`DECODING`)."""

    max_bytes: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    stop_at_eos: bool = True  # False: EOS is never sampled, so every row emits exactly max_bytes
    learn_from_output: bool = False  # the mixer's file-adaptive parts also learn from the bytes the row makes

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        if self.temperature < 0:
            raise ValueError("temperature must not be negative")
        if self.top_k < 0:
            raise ValueError("top_k must not be negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    @classmethod
    def of(cls, settings: GenerateSettings) -> SamplingOptions:
        """The decoding of `settings` (`obf generate`, batch-generate): its task's `DECODING` defaults
        where it leaves temperature, top_k or top_p unset."""
        r = settings.resolved()
        return cls(max_bytes=r.max_bytes, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, seed=r.seed)

    @classmethod
    def for_task(cls, task: str, *, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, **kw: Any) -> SamplingOptions:
        """Options for `task` (continue or paired): its `DECODING` defaults where an argument is None."""
        if task not in DECODING:
            raise ValueError(f"task {task!r} cannot generate files; use continue or paired")
        r = GenerateSettings(task=task, temperature=temperature, top_k=top_k, top_p=top_p).resolved()
        return cls(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, **kw)


@dataclass(frozen=True)
class RowSpec:
    """What one row must produce, when the file it ends up in has a declared size.

    `length`: exactly this many bytes (EOS is never sampled); None: up to `max_bytes`, stopping at
    EOS when `stop_at_eos`. `fixed`: output offsets whose byte the file format sets (a Y4M frame's
    `FRAME` marker); the row emits it instead of sampling and feeds it back to the model.
    """

    length: int | None = None
    fixed: Mapping[int, int] = field(default_factory=dict)


def mask_non_bytes(logits: np.ndarray, keep_eos: bool | np.ndarray = True) -> np.ndarray:
    """(B, V) logits with every id that is neither a byte nor (where `keep_eos`, a bool or a (B,)
    mask) EOS set to -inf."""
    out = np.full_like(logits, -np.inf)
    out[:, :N_BYTES] = logits[:, :N_BYTES]
    out[:, EOS] = np.where(keep_eos, logits[:, EOS], -np.inf)
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
                rng: np.random.Generator, keep_eos: bool | np.ndarray | None = None,
                adjust: Callable[[np.ndarray], np.ndarray] | None = None, shift: np.ndarray | None = None
                ) -> tuple[np.ndarray, Any]:
    """One decode step: (B,) ids in, (B,) sampled ids out. `keep_eos` (default `opts.stop_at_eos`)
    says, for all rows or per row, whether EOS may be sampled; `adjust` maps the step's (B, V)
    logits before sampling (the mixer); `shift` (B,) moves each row's query (`Backend.step`)."""
    logits, cache = backend.step(tokens, memory, cache) if shift is None else backend.step(tokens, memory, cache, shift)
    if adjust is not None:
        logits = adjust(logits)
    keep = opts.stop_at_eos if keep_eos is None else keep_eos
    return sample(mask_non_bytes(logits, keep_eos=keep), opts, rng), cache


def pad_batch(rows: Sequence[Sequence[int]], multiple: int = 1) -> np.ndarray:
    """Left-pad id lists with PAD to one length (a multiple of `multiple`, the patch size) ->
    (B, S) int64. Left, because the encoder's patch grid ends where the source ends: every row's
    last patch then ends right before its decoder window, as in training."""
    n = max(len(r) for r in rows)
    n += (-n) % multiple
    out = np.full((len(rows), n), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, n - len(r):] = r
    return out


def _row_hints(backend: Backend, files: list[bytes], modalities: Sequence[str], learn_from_output: bool
               ) -> list[RowHints]:
    """Each row's hints from the bytes its file holds before generation starts; for the mixer's
    file-adaptive parts, how scoring scores the last bytes held (one batched pass)."""

    mixer = mixer_of(meta_of(backend))
    tails = tail_log_probs(backend, files, list(modalities)) if mixer and mixer.needs_tail else [None] * len(files)
    return [RowHints(f, m, t, learn_from_output=learn_from_output) for f, m, t in zip(files, modalities, tails)]


def generate(backend: Backend, contexts: Sequence[bytes], modalities: Sequence[str], *, task: str = "continue",
             target_modalities: Sequence[str] | None = None, opts: SamplingOptions = SamplingOptions(),
             specs: Sequence[RowSpec | None] | None = None) -> list[bytes]:
    """Generate bytes for each input; a batch of inputs of any lengths.

    `continue`: the bytes that follow each context. `paired`: the target file for each input
    (of `target_modalities`, default the input's), window after window, each with the whole input
    in the encoder and aligned with the input bytes at its own offset, each byte's query moved to
    the input byte the pair's conversion reads for a model with `query_map` (as `paired` is
    trained), with an EOS id after the input for a model with `input_end` (an input longer than
    `paired_room(backend.max_input_len)` is a ValueError). A row stops at
    EOS (when `stop_at_eos`) or at `max_bytes`, or, with a `RowSpec` of a length, after exactly
    that many bytes; the batch stops when every row has. A finished row leaves the batch at the
    end of its decoder window (each window encodes only the rows still going), so rows of
    different lengths cost at most one window more than their own. Returns the generated bytes per input.

    A model with a mixer (`obf.mixer`) samples from the network's logits mixed with the hints of
    the bytes each row's file holds so far (a `continue` context and what the row made; a `paired`
    target's own bytes, its stride hint from when its header is written), as evaluation scores
    it; by default the parts that learn from the file learn from the context only
    (`SamplingOptions.learn_from_output`).
    """
    if len(contexts) != len(modalities):
        raise ValueError("contexts and modalities differ in length")
    if task not in ("continue", "paired"):
        raise ValueError(f"task {task!r} cannot generate files; use continue or paired")
    row_specs = [s or RowSpec() for s in (specs if specs is not None else [None] * len(contexts))]
    if len(row_specs) != len(contexts):
        raise ValueError("specs and contexts differ in length")
    targets = list(target_modalities) if target_modalities is not None else list(modalities)
    rng = np.random.default_rng(opts.seed)
    n = len(contexts)
    limit = np.array([opts.max_bytes if s.length is None else s.length for s in row_specs])
    may_end = np.array([opts.stop_at_eos and s.length is None for s in row_specs])  # may EOS be sampled
    out = [bytearray() for _ in range(n)]
    done = limit == 0
    contexts = [bytes(c) for c in contexts]
    history = list(contexts)  # what the next window's encoder sees
    window = backend.max_tgt_len  # ids one decoder window emits (BOS in, max_tgt_len out)
    end = input_end_of(backend)  # an EOS id after each paired input
    if task == "paired":  # the input is every window's source: one that does not fit is refused before any work
        for c, m, t in zip(contexts, modalities, targets):
            paired_input(c, m, t, backend.max_input_len, end)
    moves = task == "paired" and query_map_of(backend)  # queries read where the conversion maps them
    mixer = mixer_of(meta_of(backend))
    file_modalities = targets if task == "paired" else modalities
    row_hints = (_row_hints(backend, [b"" if task == "paired" else c for c in contexts], file_modalities,
                            opts.learn_from_output) if mixer else [])
    mods = modality_index(file_modalities)
    while not done.all():
        active = np.flatnonzero(~done)
        if task == "paired":  # window k of a target aligns with the input at its offset k * window
            rows = [paired_input(contexts[i], modalities[i], targets[i], backend.max_input_len, end) for i in active]
            offsets = [PAIRED_TAGS + len(out[i]) for i in active]
        else:
            rows = [encoder_input(modalities[i], "continue", history[i], backend.max_src_len) for i in active]
        src = pad_batch(rows, backend.patch_size)
        align = None
        if task == "paired":
            align = np.array([src.shape[1] - len(r) + o for r, o in zip(rows, offsets)], dtype=np.int64)
        memory = backend.encode(src, align)
        cache = backend.init_cache(memory)
        tokens = np.full(len(active), BOS, dtype=np.int64)
        finished = np.zeros(len(active), dtype=bool)
        keep_eos = may_end[active]
        adjust = None
        if mixer is not None:
            def adjust(logits: np.ndarray, active: np.ndarray = active) -> np.ndarray:
                return mixer.step(logits, [row_hints[i] for i in active], mods[active])
        shifts = None  # (B, window): how far the query of each row's target byte moves from its own offset
        if moves:
            at = {i: np.arange(len(out[i]), len(out[i]) + window) for i in active}  # this window's target offsets
            shifts = np.stack([input_offsets(modalities[i], targets[i], contexts[i], u, end) - u
                               for i, u in at.items()])
        for j in range(window):
            shift = None if shifts is None else np.ascontiguousarray(shifts[:, j])
            tokens, cache = next_tokens(backend, tokens, memory, cache, opts, rng, keep_eos, adjust, shift)
            for j, i in enumerate(active):
                if finished[j]:
                    continue
                forced = row_specs[i].fixed.get(len(out[i]))
                if forced is not None:
                    tokens[j] = forced  # the format's byte, fed back to the model as its own
                t = int(tokens[j])
                if t == EOS and may_end[i]:
                    finished[j] = done[i] = True
                elif t < N_BYTES:
                    out[i].append(t)
                    if mixer is not None:
                        row_hints[i].update(t)
                if len(out[i]) >= limit[i]:
                    finished[j] = done[i] = True
            if finished.all():
                break
        for i in active:
            history[i] = bytes(contexts[i]) + bytes(out[i])
    return [bytes(o) for o in out]
