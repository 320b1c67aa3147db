"""One decode loop for every backend: greedy or sampled (temperature, top-k, top-p, min-p), with a
thermostat (`SurpriseControl`) and a share guard (`ShareGuard`) per row.

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
from typing import Any, NamedTuple

import numpy as np

from obf.core.config import DECODING, GenerateSettings
from obf.core.vocab import BOS, EOS, N_BYTES, PAD, PAIRED_TAGS, encoder_input, paired_input
from obf.formats.conversions import input_offsets
from obf.formats.layouts import MEDIA, bmp_layout
from obf.formats.places import HEAD, NO_PLACE, Places, places_of
from obf.mixer.input_copy import CopyState
from obf.mixer.match import modality_index
from obf.mixer.mix import TAIL, RowHints, Tail, mixer_of
from obf.runtime.backend import Backend, input_end_of, layout_input_of, meta_of, paired_places_of, query_map_of
from obf.runtime.scoring import tail_log_probs


@dataclass(frozen=True)
class SamplingOptions:
    """How the decode loop picks each byte. The dataclass's own defaults are plain greedy;
    `for_task` gives what users get by default (`DECODING`)."""

    max_bytes: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off; else never sample an id under min_p x the likeliest one's probability (as sampled)
    seed: int = 0
    stop_at_eos: bool = True  # False: EOS is never sampled, so every row emits exactly max_bytes
    learn_from_output: bool = False  # the mixer's file-adaptive parts also learn from the bytes the row makes
    match_surprise: bool = False  # a thermostat per row keeps its surprise near what its context's end cost
    share_guard: float = 0.0  # 0 = off; else a byte a row over-uses against its context's end loses logits

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        if self.temperature < 0:
            raise ValueError("temperature must not be negative")
        if self.top_k < 0:
            raise ValueError("top_k must not be negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not 0 <= self.min_p < 1:
            raise ValueError("min_p must be in [0, 1)")
        if self.share_guard < 0:
            raise ValueError("share_guard must not be negative")

    @classmethod
    def of(cls, settings: GenerateSettings) -> SamplingOptions:
        """The decoding of `settings` (`obf generate`, batch-generate): its task's `DECODING` defaults
        where it leaves temperature, top_k, top_p, min_p, share_guard or match_surprise unset."""
        r = settings.resolved()
        return cls(max_bytes=r.max_bytes, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                   min_p=r.min_p, share_guard=r.share_guard, seed=r.seed, match_surprise=bool(r.match_surprise))

    @classmethod
    def for_task(cls, task: str, *, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, share_guard: float | None = None,
                 match_surprise: bool | None = None, **kw: Any) -> SamplingOptions:
        """Options for `task` (continue or paired): its `DECODING` defaults where an argument is None."""
        if task not in DECODING:
            raise ValueError(f"task {task!r} cannot generate files; use continue or paired")
        r = GenerateSettings(task=task, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                             share_guard=share_guard, match_surprise=match_surprise).resolved()
        return cls(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, min_p=r.min_p,
                   share_guard=r.share_guard, match_surprise=bool(r.match_surprise), **kw)


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


class SurpriseControl:
    """A thermostat per row: keeps the surprise of what each row samples, in bits under the model
    as served (before any temperature), near a target, the bits per byte the model spent on the
    last bytes its file held before generation started (`surprise_targets`). After each byte the
    row's temperature is multiplied by exp(-eta * (its surprise - target)), within [1/20, 2] of
    the temperature asked for.

    Why: no one temperature suits every file. At a fixed temperature a small model's images come
    out flatter than the images they continue (an image row sampled at 1.0 costs the model ~2
    bits per byte where the real rest costs ~4.7) and its text and recordings noisier; cooler
    settings loop. A continuation that costs the model what the file so far cost it is as
    predictable as the file, per file; and a row that falls into a loop (its surprise far below
    the target) heats up until it samples its way out, so it cannot settle into one byte
    (benchmarks/samples.py; benchmarks/README.md, "Decoding"). Arrays are over all rows of a
    `generate` call, indexed by the rows still going."""

    ETA = 0.05  # per byte and bit of error: a few hundred bytes settle a row (obf generate writes 1,024 by default)
    LOWEST, HIGHEST = np.log(1 / 20), np.log(2.0)  # the range of a row's temperature factor (log)

    def __init__(self, target_bits: np.ndarray) -> None:
        self.target = np.asarray(target_bits, dtype=np.float64)  # (N,) bits per byte; inf: no target
        self.log_factor = np.zeros_like(self.target)  # (N,) log of each row's temperature factor

    def factor(self, rows: np.ndarray) -> np.ndarray:
        """(B,) what multiplies the asked temperature of `rows` at this step."""
        return np.exp(self.log_factor[rows])

    def observe(self, bits: np.ndarray, rows: np.ndarray) -> None:
        """Move the temperature of `rows` after each sampled a byte of `bits` (B,) surprise."""
        err = np.where(np.isfinite(self.target[rows]), bits - self.target[rows], 0.0)
        self.log_factor[rows] = np.clip(self.log_factor[rows] - self.ETA * err, self.LOWEST, self.HIGHEST)


class GuardGrid(NamedTuple):
    """Which file offsets a share guard counts and steers: offset o >= `start` with
    (o - start) % `stride` < `span` and a multiple of `step` there. Every byte by default; a BMP's
    pixel starts (`guard_grid`)."""

    start: int = 0
    stride: int = 1
    span: int = 1
    step: int = 1


def guard_grid(held: bytes, modality: str) -> GuardGrid:
    """A BMP image's pixels are guarded by their first byte only, and the pixel's other bytes are
    left to the network: it steers a third of the bytes for the same likeness targets as a guard on
    every byte (benchmarks/README.md, "Decoding"). Every other file is guarded byte by byte."""
    lay = bmp_layout(held) if modality == "image" else None
    if lay is None:
        return GuardGrid()
    width = lay.bpp // 8
    return GuardGrid(lay.offset, lay.stride, lay.width * width, width)


class ShareGuard:
    """A guard per row against one byte taking over: each byte's share of what the row has written
    (counted with a prior of `PRIOR` bytes at the reference shares) is compared with its share of
    the bytes the row's file held at its end before generation started (the tail the thermostat
    reads, `obf.mixer.TAIL` bytes); where the row uses a byte more than `MARGIN` above that share,
    the byte's logit loses `strength` times the excess before sampling. Only the offsets of each
    row's `GuardGrid` are counted and steered (a BMP's pixel starts; every byte elsewhere).

    Why: a continuation that leans on one byte (a background colour, zero bytes, a silence level)
    is cheap for the model, so the thermostat cannot see it as a loop; the row's own histogram
    can. The penalty only ever lowers a byte the row over-uses by a wide margin, and vanishes as
    its share comes back, so it leaves the ordinary give and take of a continuation alone (a byte
    the context's end lacks may still take a tenth of the row) and steers only against takeover.
    Arrays are over all rows of a `generate` call, indexed by the rows still going; each row's
    next file offset moves on with every byte it samples."""

    PRIOR = 64.0  # bytes at the reference shares that each row starts with: the first bytes move little
    MARGIN = 0.1  # share above the reference that costs nothing (the likeness target allows +0.2)

    def __init__(self, held: Sequence[bytes], strength: float, grids: Sequence[GuardGrid] | None = None) -> None:
        self.strength = strength
        grids = list(grids) if grids is not None else [GuardGrid()] * len(held)
        self.grid = np.array(grids, dtype=np.int64).reshape(len(held), 4)  # (N, 4) start, stride, span, step
        self.offset = np.array([len(h) for h in held], dtype=np.int64)  # (N,) the file offset each row writes next
        ref = np.zeros((len(held), N_BYTES), dtype=np.float64)
        for i, h in enumerate(held):
            at = np.arange(max(len(h) - TAIL, 0), len(h))
            guarded = np.frombuffer(h, dtype=np.uint8)[at[self._on(at, self.grid[i])]]
            ref[i] = np.bincount(guarded, minlength=N_BYTES) / max(len(guarded), 1)
        self.reference = ref  # (N, 256) each byte's share of the row's reference bytes
        self.counts = ref * self.PRIOR  # (N, 256) the row's written bytes, prior included
        self.total = np.full(len(held), self.PRIOR)  # (N,)

    @staticmethod
    def _on(offsets: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """(K,) offsets, grid (4,) or (K, 4) -> (K,) which offsets the grid guards."""
        r = (offsets - grid[..., 0]) % grid[..., 1]
        return (offsets >= grid[..., 0]) & (r < grid[..., 2]) & (r % grid[..., 3] == 0)

    def steer(self, z: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(B, V) logits of `rows` -> the same array with each over-used byte's logit lowered,
        where the row's next offset is on its grid (non-bytes and bytes within their margin keep
        theirs)."""
        on = np.flatnonzero(self._on(self.offset[rows], self.grid[rows]))  # which of the B rows
        if len(on):
            r = rows[on]
            excess = self.counts[r] / self.total[r, None] - self.reference[r] - self.MARGIN  # (b, 256)
            z[on, :N_BYTES] -= self.strength * np.maximum(excess, 0.0)
        return z

    def observe(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Count the ids (B,) that `rows` sampled where on their grid, and move each row's offset
        on; non-byte ids (EOS) count for nothing."""
        byte = ids < N_BYTES
        on = byte & self._on(self.offset[rows], self.grid[rows])
        np.add.at(self.counts, (rows[on], ids[on]), 1.0)
        self.total[rows[on]] += 1.0
        self.offset[rows[byte]] += 1


def sample(logits: np.ndarray, opts: SamplingOptions, rng: np.random.Generator,
           control: SurpriseControl | None = None, rows: np.ndarray | None = None,
           guard: ShareGuard | None = None) -> np.ndarray:
    """(B, V) logits -> (B,) ids under greedy / temperature / top-k / top-p / min-p; where `control`
    is given, each row's temperature is scaled by its thermostat (`rows`: which of its rows these are).
    min-p cuts the tail of the distribution as sampled, after the temperature: a row its thermostat
    heats keeps more candidates, so it can still sample its way out of a loop (cut before the
    temperature, images and binaries collapse into one colour or byte: benchmarks/README.md, "Decoding").
    Where `guard` is given, each row's over-used bytes lose logits in the distribution as sampled
    (after the temperature, before min-p), and the guard counts what was sampled."""
    if opts.temperature == 0:
        return logits.argmax(axis=-1)
    assert (control is None and guard is None) or rows is not None, "a thermostat or guard needs the rows it steps"
    z = logits.astype(np.float64) / opts.temperature
    if control is not None:
        z = z / control.factor(rows)[:, None]
    if guard is not None:
        z = guard.steer(z, rows)  # z is this call's own array
    if opts.min_p > 0:  # in the distribution sampled: a heated row keeps more of the tail
        z = np.where(z >= z.max(axis=-1, keepdims=True) + np.log(opts.min_p), z, -np.inf)
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
    ids = np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)
    if control is not None:
        control.observe(surprise_bits(logits, ids), rows)
    if guard is not None:
        guard.observe(ids, rows)
    return ids


def surprise_bits(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(B, V) logits, (B,) ids -> (B,) -log2 p of each id under the logits as they are."""
    top = logits.max(axis=-1, keepdims=True)  # (B, 1)
    log_total = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]  # (B,) log of the softmax's denominator
    picked = np.take_along_axis(logits, ids[:, None], axis=-1)[:, 0]
    return (log_total - picked).astype(np.float64) / np.log(2)


def next_tokens(backend: Backend, tokens: np.ndarray, memory: Any, cache: Any, opts: SamplingOptions,
                rng: np.random.Generator, keep_eos: bool | np.ndarray | None = None,
                adjust: Callable[[np.ndarray], np.ndarray] | None = None, shift: np.ndarray | None = None,
                control: SurpriseControl | None = None, rows: np.ndarray | None = None,
                guard: ShareGuard | None = None, places: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
    """One decode step: (B,) ids in, (B,) sampled ids out. `keep_eos` (default `opts.stop_at_eos`)
    says, for all rows or per row, whether EOS may be sampled; `adjust` maps the step's (B, V)
    logits before sampling (the mixer); `shift` (B,) moves each row's query and `places` (B, 3)
    gives the place ids of the byte each row writes (`Backend.step`)."""
    kw: dict[str, np.ndarray] = {} if places is None else {"places": places}  # backends without places take none
    logits, cache = (backend.step(tokens, memory, cache, **kw) if shift is None
                     else backend.step(tokens, memory, cache, shift, **kw))
    if adjust is not None:
        logits = adjust(logits)
    keep = opts.stop_at_eos if keep_eos is None else keep_eos
    return sample(mask_non_bytes(logits, keep_eos=keep), opts, rng, control, rows, guard), cache


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


def _tails(backend: Backend, files: list[bytes], modalities: Sequence[str], surprise: bool) -> list[Tail | None]:
    """How scoring scores the last bytes each row's file holds before generation starts (one
    batched pass), where the mixer's file-adaptive parts or the surprise control need it."""
    mixer = mixer_of(meta_of(backend))
    if surprise or (mixer and mixer.needs_tail):
        return list(tail_log_probs(backend, files, list(modalities)))
    return [None] * len(files)


class FileGeometry:
    """Each row's file layout as generation writes it (`obf.formats.places`): a row's file is what it
    holds before it writes (a `continue` context; nothing for a `paired` target) and what it made.
    A header the row holds only in part (a short context, a target's first bytes) is read again at
    every step until it is whole, or until the file is past `HEAD` bytes and so never will be."""

    def __init__(self, held: Sequence[bytes], modalities: Sequence[str]) -> None:
        self.held = held
        self.modalities = modalities
        self.places: list[Places | None] = [None] * len(held)
        self.open = [m in MEDIA for m in modalities]  # a row whose header may still be read

    def next_ids(self, out: Sequence[bytearray], active: np.ndarray) -> np.ndarray:
        """(B, 3) place ids of the byte each active row writes next: read from its file's bytes
        before it, as training reads them from the whole file."""
        ids = np.tile(NO_PLACE, (len(active), 1))
        for j, i in enumerate(active):
            if self.open[i]:
                head = self.held[i][:HEAD]
                head += bytes(out[i][:HEAD - len(head)])
                self.places[i] = places_of(head, self.modalities[i])
                self.open[i] = self.places[i] is None and len(head) < HEAD
            if self.places[i] is not None:
                ids[j] = self.places[i].next_ids(self.held[i], out[i])
        return ids


def surprise_targets(tails: Sequence[Tail | None]) -> np.ndarray:
    """(N,) bits per byte scoring gives each row's held tail (`Tail.lp`: the network with its
    stride hint, before the mixer's file-adaptive parts); inf, no target, where a row holds none."""
    return np.array([-float(t.lp.mean()) / np.log(2) if t is not None and len(t.lp) else np.inf for t in tails])


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
    target's own bytes, without a stride hint (`obf.mixer.mix.paired_hints`), and the input byte
    each of its bytes reads for the copy expert), as evaluation scores it; by default the parts
    that learn from the file learn from the context only (`SamplingOptions.learn_from_output`).
    A model with `layout_input` reads, at each `continue` step, the place of the byte it writes
    (`obf.formats.places`), from the header and the bytes before it, as in training; one with
    `paired_places` too at each `paired` step, from the target's header once it has written it.
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
    held = [b"" if task == "paired" else c for c in contexts]  # what each row's file holds before it writes
    surprise = opts.match_surprise and opts.temperature > 0 and task == "continue"
    tails = _tails(backend, held, file_modalities, surprise)
    copies = ([CopyState(c, m, t, end, mixer.copy_map) for c, m, t in zip(contexts, modalities, targets)]
              if task == "paired" and mixer is not None and mixer.copy is not None else [None] * n)
    row_hints = ([RowHints(f, m, t, learn_from_output=opts.learn_from_output, copy=c, sparse=mixer.sparse,
                           stride=task != "paired")
                  for f, m, t, c in zip(held, file_modalities, tails, copies)] if mixer else [])
    control = SurpriseControl(surprise_targets(tails)) if surprise else None
    guard = (ShareGuard(held, opts.share_guard, [guard_grid(h, m) for h, m in zip(held, file_modalities)])
             if opts.share_guard > 0 and opts.temperature > 0 and task == "continue" else None)
    mods = modality_index(file_modalities)
    # the decoder reads each byte's place: a continue row's from its file, a paired row's from its target
    placed = paired_places_of(backend) if task == "paired" else layout_input_of(backend)
    geometry = FileGeometry(held, file_modalities) if placed else None
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
            places = geometry.next_ids(out, active) if geometry is not None else None
            tokens, cache = next_tokens(backend, tokens, memory, cache, opts, rng, keep_eos, adjust, shift,
                                        control, active, guard, places)
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
