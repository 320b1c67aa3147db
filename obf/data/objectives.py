"""Training objectives -> examples -> batches: `continue`, `denoise` (T5 span corruption),
`paired`, drawn by `ExampleSampler` from one split of a `Dataset`, padded by `collate`.

Sample `i` is a pure function of (seed, i), which is what makes resume exact and DDP ranks
disjoint.

`paired` trains every decoder window of the target with the whole input visible: an example is
the input (one encoder pass) and up to `PAIRED_WINDOWS` consecutive windows of its target, each
aligned (cross positions, `obf.model`) with the input bytes at its own offset, so a long target
follows its input all the way (generation does the same, window after window). With
`model.query_map` each target byte's query then moves (`shift`) to the input byte the pair's
conversion reads for it (`obf.formats.conversions.input_offsets`: a hex character to the byte it
encodes, an ascii character to its pixel); with `model.input_end` an EOS id after the input tells
where it stops, and the target's end reads it. `continue` and `denoise` have no shift. The files of
pairs serve `paired` only; `continue` and `denoise` draw from the other files.

With `model.layout_input` each `continue` window also carries the place ids of its targets
(`obf.formats.places`: where each byte lies in its file's BMP, Y4M or WAV layout), read from the
whole file; with `model.paired_places` so do `paired` windows, from the target; `denoise` windows
carry none (`NO_PLACE` in the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from obf.core.vocab import (
    BOS,
    EOS,
    MODALITIES,
    N_SENTINELS,
    PAD,
    PAIRED_TAGS,
    encoder_input,
    modality_id,
    paired_input,
    paired_room,
    sentinel_id,
    task_id,
)
from obf.data.dataset import DataError, Dataset, Record
from obf.formats.conversions import input_offsets
from obf.formats.places import NO_PLACE, place_ids

PAIRED_WINDOWS = 4  # target windows of one `paired` example at most (a 16x16 BMP needs 4 of 256 bytes)


class Window(NamedTuple):
    """A decoder window of an example besides its last: `visible` source ids lie before it (all
    of them for `paired`), its first target lies at source position `align`, and target t's
    query at align + t + shift[t] (`shift` None: no move)."""

    visible: int
    targets: list[int]
    align: int
    shift: np.ndarray | None = None
    places: np.ndarray | None = None  # (len(targets), 3) place ids of the targets (`model.layout_input`)


@dataclass(frozen=True)
class Example:
    """One training example: encoder ids and the decoder window that follows them (targets, EOS
    included when the file ends), plus, for a `continue` chunk, the earlier windows that start
    inside the source, and for `paired`, the target's other windows. One encoder pass over `src`
    serves all of them (`forward_windows`). `align`: the source position of the last window's
    first target (None: right after the source, `continue`)."""

    src: list[int]
    tgt: list[int]
    task: str
    modality: str
    index: int  # global sample index it was drawn for
    earlier: tuple[Window, ...] = ()
    align: int | None = None
    shift: np.ndarray | None = None  # the last window's query moves (`Window.shift`)
    places: np.ndarray | None = None  # the last window's place ids (`Window.places`)


@dataclass
class Batch:
    """B examples, N >= B decoder windows (each example's earlier windows, then its last one)."""

    src: np.ndarray  # (B, S) int64, left-padded with PAD to a multiple of the patch size
    dec: np.ndarray  # (N, T) int64: [BOS] + tgt[:-1], PAD after the end
    tgt: np.ndarray  # (N, T) int64, PAD where there is no target (ignored by the loss)
    rows: np.ndarray  # (N,) int64, the example (row of src) of each window
    visible: np.ndarray  # (N,) int64, ids of the padded row before the window's start (on the patch grid)
    align: np.ndarray  # (N,) int64, position in the padded row of the window's first target
    shift: np.ndarray  # (N, T) int64, how far each target's query moves from align + t (0: none)
    places: np.ndarray | None  # (N, T, 3) int64 place ids of the targets (`obf.formats.places`), None: none
    modalities: list[str]  # per example
    tasks: list[str]
    indices: list[int]

    @property
    def moved(self) -> np.ndarray | None:
        """`shift`, or None when no query moves (no mapped `paired` window): what the model and
        the backends take, so that a batch without one costs nothing extra."""
        return self.shift if self.shift.any() else None


def _random_segmentation(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """`parts` positive ints summing to `total` (total >= parts), uniformly at random."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def span_corrupt(window: np.ndarray, rng: np.random.Generator, density: float, mean_span: float
                 ) -> tuple[list[int], list[int]]:
    """T5-style span corruption of a byte window -> (encoder payload ids, target ids incl. EOS)."""
    n = len(window)
    noise = min(max(1, round(n * density)), n - 1)
    spans = max(1, min(N_SENTINELS, round(noise / mean_span), n - noise))
    noise_lens = _random_segmentation(rng, noise, spans)
    keep_lens = _random_segmentation(rng, n - noise, spans)
    src: list[int] = []
    tgt: list[int] = []
    pos = 0
    for i in range(spans):
        src.extend(window[pos:pos + keep_lens[i]].tolist())
        pos += keep_lens[i]
        src.append(sentinel_id(i))
        tgt.append(sentinel_id(i))
        tgt.extend(window[pos:pos + noise_lens[i]].tolist())
        pos += noise_lens[i]
    tgt.append(EOS)
    return src, tgt


def denoise_window_len(tgt_len: int, density: float, mean_span: float) -> int:
    """Largest window whose corrupted spans + sentinels + EOS fit in `tgt_len` targets."""
    n = int((tgt_len - 2) / (density * (1 + 1 / mean_span)))
    while (
        n > 2 and min(max(1, round(n * density)), n - 1) + max(1, round(round(n * density) / mean_span)) + 1 > tgt_len
    ):
        n -= 1
    return max(2, n)


class ExampleSampler:
    """Draws examples of the `continue`, `denoise` and `paired` objectives from one split.

    Sample `i` is a pure function of (seed, i): resuming at a sample index reproduces the data
    exactly, and DDP ranks that take distinct indices see disjoint samples.
    """

    def __init__(
        self,
        ds: Dataset,
        split: str,
        *,
        max_src_len: int,
        max_tgt_len: int,
        task_weights: dict[str, float],
        balance_modalities: bool = True,
        modality_weights: dict[str, float] | None = None,
        noise_density: float = 0.15,
        mean_span: float = 3.0,
        seed: int = 0,
        random_bytes_weight: float = 0.0,
        windows: int = 1,
        max_input_len: int | None = None,
        query_map: bool = False,
        input_end: bool = False,
        layout_input: bool = False,
        paired_places: bool = False,
    ) -> None:
        self.layout_input = layout_input  # `continue` windows carry their targets' place ids
        self.paired_places = paired_places  # and so do `paired` ones
        self.query_map = query_map  # `paired` queries read where the pair's conversion maps them
        self.input_end = input_end  # `paired` sources end with an EOS id after the input
        self.ds = ds
        self.windows = windows  # decoder windows per `continue` example (a chunk; see continue_chunk)
        self.random_bytes_weight = random_bytes_weight
        self.split = split
        self.max_src_len, self.max_tgt_len = max_src_len, max_tgt_len
        self.max_input_len = max_input_len or max_src_len  # a `paired` source, tags included
        self.noise_density, self.mean_span = noise_density, mean_span
        self.seed = seed
        records = ds.select(split=split, paired=False)
        pairs = [(i, t) for i, t in ds.pairs(split) if i.length <= paired_room(self.max_input_len, input_end)]
        if not records and not pairs:
            raise DataError(f"{ds.root}: no file in split {split!r}")
        self.by_modality = {m: [r for r in records if r.modality == m] for m in MODALITIES}
        self.by_modality = {m: rs for m, rs in self.by_modality.items() if rs}
        # pairs grouped by (input modality, target modality), each group drawn equally often
        groups: dict[tuple[str, str], list[tuple[Record, Record]]] = {}
        for i, t in pairs:
            groups.setdefault((i.modality, t.modality), []).append((i, t))
        self.pair_groups = [groups[k] for k in sorted(groups)]
        self.pairs = [p for g in self.pair_groups for p in g]
        self.long_inputs = len(ds.pairs(split)) - len(pairs)  # inputs over max_input_len: left out

        if modality_weights:
            for m, w in modality_weights.items():
                if w > 0 and m not in self.by_modality:
                    raise DataError(f"train.modality_weights.{m} > 0 but split {split!r} has no {m} file")
            mw = {m: float(modality_weights.get(m, 0.0)) for m in self.by_modality}
        elif balance_modalities:
            mw = {m: 1.0 for m in self.by_modality}
        else:
            mw = {m: float(sum(r.length for r in rs)) for m, rs in self.by_modality.items()}
        if sum(mw.values()) <= 0:
            raise DataError("train.modality_weights: no positive weight for a modality present in the data")
        self.modalities = list(mw)
        self.modality_p = np.array([mw[m] for m in self.modalities]) / sum(mw.values())
        # Within a modality, files are drawn by length so that every byte is equally likely.
        self.file_p = {
            m: np.array([r.length for r in rs], float) / sum(r.length for r in rs) for m, rs in self.by_modality.items()
        }

        tw = {t: float(w) for t, w in task_weights.items() if w > 0}
        if "paired" in tw and not self.pairs:
            raise DataError(
                f"train.task_weights.paired > 0 but split {split!r} has no paired files "
                "(inputs/ + targets/ folders or pairs.jsonl)"
            )
        self.tasks = list(tw)
        self.task_p = np.array([tw[t] for t in self.tasks]) / sum(tw.values())
        self.denoise_len = denoise_window_len(max_tgt_len, noise_density, mean_span)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def example(self, index: int, task: str | None = None) -> Example:
        rng = self.rng(index)
        task = task or self.tasks[rng.choice(len(self.tasks), p=self.task_p)]
        if task == "paired":
            group = self.pair_groups[rng.integers(len(self.pair_groups))]
            inp, tgt = group[rng.integers(len(group))]
            return self._paired(inp, tgt, rng, index)
        m = self.modalities[rng.choice(len(self.modalities), p=self.modality_p)]
        rs = self.by_modality[m]
        r = rs[rng.choice(len(rs), p=self.file_p[m])]
        data = self.ds.file_bytes(r)
        if task == "denoise":
            return self._denoise(r, data, rng, index)
        if self.random_bytes_weight and rng.random() < self.random_bytes_weight:
            return self._random_bytes(data, rng, index)
        start = 0 if rng.random() < 0.1 else int(rng.integers(0, len(data) + 1))
        return continue_chunk(data, start, r.modality, self.max_src_len, self.max_tgt_len, self.windows, index,
                              self.layout_input)

    def _denoise(self, r: Record, data: np.ndarray, rng: np.random.Generator, index: int) -> Example:
        n = min(len(data), self.max_src_len - 2, self.denoise_len)
        if n < 2:
            return continue_example(data, 0, r.modality, self.max_src_len, self.max_tgt_len, index)
        start = int(rng.integers(0, len(data) - n + 1))
        payload, tgt = span_corrupt(np.asarray(data[start : start + n]), rng, self.noise_density, self.mean_span)
        return Example([modality_id(r.modality), task_id("denoise"), *payload], tgt, "denoise", r.modality, index)

    def _random_bytes(self, data: np.ndarray, rng: np.random.Generator, index: int) -> Example:
        """A `continue` example over uniform random bytes behind the real start (up to 64 bytes) of a
        file: what a compressed or encrypted payload looks like to a byte model. The context always
        holds some of the random bytes, so the lesson is "after bytes that look random, expect any
        byte" (about 8 bits each), not "after this header". This is what keeps the model calibrated
        on payloads it cannot predict instead of confidently wrong (worse than storing them)."""
        head = bytes(data[: int(rng.integers(0, 65))])
        noise = rng.integers(0, 256, self.max_src_len + self.max_tgt_len, dtype=np.uint8).tobytes()
        start = len(head) + int(rng.integers(16, self.max_src_len))
        return continue_example(
            np.frombuffer(head + noise, np.uint8), start, "binary", self.max_src_len, self.max_tgt_len, index
        )

    def _paired(self, inp: Record, tgt: Record, rng: np.random.Generator, index: int) -> Example:
        """The input and up to PAIRED_WINDOWS consecutive windows of its target (all of them when
        it has no more; else a random run of them)."""
        data = self.ds.file_bytes(tgt)
        n_windows = len(data) // self.max_tgt_len + 1  # the last holds EOS
        first = int(rng.integers(0, max(1, n_windows - PAIRED_WINDOWS + 1)))
        return paired_example(
            bytes(self.ds.file_bytes(inp)),
            inp.modality,
            data,
            tgt.modality,
            self.max_input_len,
            self.max_tgt_len,
            range(first, min(n_windows, first + PAIRED_WINDOWS)),
            index,
            self.query_map,
            self.input_end,
            self.paired_places,
        )

    def batch(self, indices: list[int]) -> Batch:
        return collate([self.example(i) for i in indices])


def paired_example(
    inp: bytes,
    modality: str,
    target: np.ndarray | bytes,
    target_modality: str,
    max_input_len: int,
    max_tgt_len: int,
    windows: range,
    index: int = 0,
    query_map: bool = False,
    input_end: bool = False,
    places: bool = False,
) -> Example:
    """`paired`: the whole input in the source (and an EOS id after it with `input_end`), and the
    given windows (k = 0, 1, ...: target bytes from k * max_tgt_len) of the target, each aligned
    with the input byte at its own offset; with `query_map`, each target byte's query moved to the
    input byte its conversion reads; with `places` (`model.paired_places`), each window carries its
    targets' place ids in the target's layout, which generation reads from the header it writes."""
    src = paired_input(inp, modality, target_modality, max_input_len, input_end)
    parts = []
    for k in windows:
        start = k * max_tgt_len
        targets = window_targets(target, start, max_tgt_len)
        offsets = np.arange(start, start + len(targets))
        shift = None
        if query_map:
            shift = input_offsets(modality, target_modality, bytes(inp), offsets, input_end) - offsets
        ids = place_ids(target, target_modality, offsets) if places else None
        parts.append(Window(len(src), targets, PAIRED_TAGS + start, shift, ids))
    last = parts[-1]
    return Example(src, last.targets, "paired", target_modality, index, tuple(parts[:-1]), last.align, last.shift,
                   last.places)


def window_targets(data: np.ndarray | bytes, start: int, max_tgt_len: int) -> list[int]:
    """Targets of the decoder window at `start`: up to max_tgt_len bytes, EOS if the file ends."""
    chunk = list(bytes(data[start : start + max_tgt_len]))
    if start + max_tgt_len > len(data):
        chunk.append(EOS)
    return chunk


def windows_example(
    data: np.ndarray | bytes, starts: list[int], modality: str, max_src_len: int, max_tgt_len: int, index: int = 0,
    places: bool = False,
) -> Example:
    """`continue` windows of `data` at ascending `starts` over one source: the bytes before the
    last start, at most `max_src_len` ids with the tags, so the last window sees what generation
    would give it and each earlier one the same bytes up to its own start. Earlier windows must
    start inside that source (last - first <= max_src_len - 2); with a causal encoder one pass
    serves them all (`forward_windows`). With `places`, each window carries its targets' place
    ids (`model.layout_input`), read from the whole file as generation reads them from the bytes
    it has."""
    last = starts[-1]
    if last - starts[0] > max_src_len - 2:
        raise ValueError(f"windows from {starts[0]} to {last} do not fit one source of {max_src_len} ids")
    src = encoder_input(modality, "continue", bytes(data[max(0, last - (max_src_len - 2)) : last]), max_src_len)
    windows = []
    for s in starts:
        targets = window_targets(data, s, max_tgt_len)
        ids = place_ids(data, modality, np.arange(s, s + len(targets))) if places else None
        windows.append(Window(len(src) - (last - s), targets, len(src) - (last - s), None, ids))
    final = windows[-1]
    return Example(src, final.targets, "continue", modality, index, tuple(windows[:-1]), places=final.places)


def continue_example(
    data: np.ndarray, start: int, modality: str, max_src_len: int, max_tgt_len: int, index: int = 0,
    places: bool = False,
) -> Example:
    """The `continue` objective: encoder sees the bytes before `start`, decoder predicts from `start`."""
    return windows_example(data, [start], modality, max_src_len, max_tgt_len, index, places)


def continue_chunk(
    data: np.ndarray, start: int, modality: str, max_src_len: int, max_tgt_len: int, windows: int, index: int = 0,
    places: bool = False,
) -> Example:
    """`continue` over up to `windows` consecutive decoder windows from `start` (fewer where the
    file ends), for one causal encoder pass (`windows_example`)."""
    starts = [start]
    while len(starts) < windows and starts[-1] + max_tgt_len <= len(data):  # the next still has a byte or EOS
        starts.append(starts[-1] + max_tgt_len)
    return windows_example(data, starts, modality, max_src_len, max_tgt_len, index, places)


def collate(examples: list[Example], multiple: int = 8) -> Batch:
    """Pad examples into arrays: sources left-padded (the patch grid ends where a source ends, so
    the last patch ends at its window) to a length rounded up to `multiple`, which must be a
    multiple of the patch size; windows one per row. Earlier windows of a chunk lie on the patch
    grid when the window length is a multiple of the patch size (checked by the config)."""
    s = max(len(e.src) for e in examples)
    s += (-s) % multiple
    windows = [
        (i, w)
        for i, e in enumerate(examples)
        for w in (*e.earlier, Window(len(e.src), e.tgt, len(e.src) if e.align is None else e.align, e.shift, e.places))
    ]
    t = max(len(w.targets) for _, w in windows)
    src = np.full((len(examples), s), PAD, dtype=np.int64)
    dec = np.full((len(windows), t), PAD, dtype=np.int64)
    tgt = np.full((len(windows), t), PAD, dtype=np.int64)
    rows = np.array([i for i, _ in windows], dtype=np.int64)
    visible = np.zeros(len(windows), dtype=np.int64)
    align = np.zeros(len(windows), dtype=np.int64)
    shift = np.zeros((len(windows), t), dtype=np.int64)
    placed = any(w.places is not None for _, w in windows)
    places = np.tile(NO_PLACE, (len(windows), t, 1)) if placed else None  # (N, T, 3)
    for i, e in enumerate(examples):
        src[i, s - len(e.src) :] = e.src
    for n, (i, w) in enumerate(windows):
        pad = s - len(examples[i].src)
        visible[n] = pad + w.visible  # the window's start in the padded row
        align[n] = pad + w.align
        if w.shift is not None:
            shift[n, : len(w.shift)] = w.shift
        if places is not None and w.places is not None:
            places[n, : len(w.places)] = w.places
        tg = w.targets
        tgt[n, : len(tg)] = tg
        dec[n, 0] = BOS
        dec[n, 1 : len(tg)] = tg[:-1]
    return Batch(
        src,
        dec,
        tgt,
        rows,
        visible,
        align,
        shift,
        places,
        [e.modality for e in examples],
        [e.task for e in examples],
        [e.index for e in examples],
    )
