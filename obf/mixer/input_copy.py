"""The copy expert of `paired` targets: each target byte is offered what its conversion writes
for the input byte it reads, as a pointer-generator network offers its source.

Why: a conversion is a function of its input. `upper` keeps every byte but the letters `a`-`z`,
`gray` keeps the BMP header (its size fields above all, which place every pixel after them) and
writes each pixel's luma, `hex` two digits per byte, `ascii` a character per pixel. The network
reads the input byte at its exact distance (`model.query_map`), yet after minutes of CPU training
it still writes a neighbouring byte often enough that few files came out whole. The offer: the
output of a map learned from the training pairs (`obf.mixer.input_map`: per slot, a table over
the read byte, a part of it, its place, or a weighted sum of its pixel; the raw byte where that
is best or the table has no key), so a raised letter, a hex digit, a grey level or an ASCII-art
character is offered as surely as a copied header byte. Without a map (a mixer saved before it)
the offer is the raw byte read.

Mixing: as the match model (`obf.mixer.match`), `w` is added to the logit of the offered byte,
`w` from a table (`CopyTable`) indexed by the pair of modalities (input x target) x the map's
confidence in this offer, the run of offers that came right just before (log2 buckets; a header
copied so far is copied on) and the network's probability of the offer over that of its first
choice. The table is fitted after training on training pairs the map was not fitted on
(`obf.mixer_fit.fit_model_mixer`), so it learns how far the map holds on pairs it never saw, with
the rest of the mixer, and applied after its match and stride biases, in teacher-forced scoring
(`obf.runtime.scoring.paired_log_probs`) and in generation (`Mixer.step`, `CopyState`) alike.
The read offset is `obf.formats.conversions.input_offsets`: the same offset for `upper`, `gray`
and pairs without a built-in conversion, the encoded byte for `hex`, the pixel for `ascii`; past
the input for a target's end, where the map may offer EOS.

Numpy only.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np

from obf.core.vocab import MODALITIES
from obf.mixer.input_map import CONFIDENCES, InputMap, reads
from obf.mixer.match import LENGTH_BUCKETS, MAX_LEN, MatchTable, fit_table

PAIRS = len(MODALITIES) ** 2  # pairs of modalities: input modality x target modality
ROWS = PAIRS * CONFIDENCES  # the table's first axis: pair of modalities x the map's confidence in its offer
CHUNK = 256  # target offsets whose reads `CopyState` computes at once


class CopyTable(MatchTable):
    """The copy expert's bias per (pair of modalities x the map's confidence, run of copies, bucket
    of `signal`): how far the offer lies below the network's first choice. Finer buckets than the
    match model's far below it: a letter `upper` must raise is a byte the network gives almost
    nothing, a punctuation mark it hesitates on is one it gives a little."""

    EDGES: ClassVar[tuple[float, ...]] = (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95)

    @staticmethod
    def signal(logits: np.ndarray, hints: np.ndarray) -> np.ndarray:
        """The network's probability of the offered byte over that of its first choice (1.0: the
        network would write it itself), from K rows of logits (K, V) and hints (K,)."""
        x = logits.astype(np.float64)
        return np.exp(x[np.arange(len(hints)), hints] - x.max(axis=-1))


class Copies(NamedTuple):
    """Per position: the byte offered (-1: none), the run of offers that came right before it and
    its row in the table (`row`); arrays of one leading shape."""

    hint: np.ndarray
    run: np.ndarray
    row: np.ndarray


def pair_index(source: str, target: str) -> int:
    """The index of a pair of modalities (input, target)."""
    return MODALITIES.index(source) * len(MODALITIES) + MODALITIES.index(target)


def row(pair: int | np.ndarray, confidence: int | np.ndarray) -> np.ndarray:
    """The table row of a pair of modalities and a confidence bucket of the map's offer."""
    return np.asarray(pair, dtype=np.int64) * CONFIDENCES + np.asarray(confidence, dtype=np.int64)


def _offers(data: bytes, source: str, target: str, n: int, end: bool, imap: InputMap | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """The byte offered to each target position 0..n-1 (-1 past the input) and its table row."""
    r = reads(data, source, target, n, end)
    pair = pair_index(source, target)
    if imap is None:  # the raw byte read, trusted as the map's surest offer (a mixer saved before maps)
        return r.byte, row(pair, np.full(n, CONFIDENCES - 1))
    hint, conf = imap.offers(pair, r)
    return hint, row(pair, conf)


def copy_hints(data: bytes, source: str, target: bytes, target_modality: str, end: bool,
               imap: InputMap | None = None) -> Copies:
    """For every position 0..n of a `paired` target (n bytes; position n: where EOS is the target),
    the byte offered (`imap`'s output for what it reads, or the input byte it reads; -1: none), the
    run of positions just before it whose byte was their offer (capped at `MAX_LEN`) and its table
    row -> Copies of (n+1,) int64 arrays. `end`: the model's `input_end`."""
    n = len(target)
    hints, rows = _offers(data, source, target_modality, n + 1, end, imap)
    hit = np.frombuffer(bytes(target), np.uint8).astype(np.int64) == hints[:n]  # (n,)
    runs = np.zeros(n + 1, dtype=np.int64)
    if n:
        idx = np.arange(1, n + 1)
        last_miss = np.maximum.accumulate(np.where(hit, 0, idx))  # 1 + the latest miss at or before i-1
        runs[1:] = np.minimum(idx - last_miss, MAX_LEN)
    return Copies(hints, runs, rows)


class CopyState:
    """The offer, run and table row of the next byte of a `paired` target being written, byte by
    byte; equal to `copy_hints` of the whole target at every position."""

    def __init__(self, data: bytes, source: str, target_modality: str, end: bool, imap: InputMap | None = None
                 ) -> None:
        self.data, self.source, self.target, self.end, self.imap = bytes(data), source, target_modality, end, imap
        self.n = 0  # target bytes so far
        self.run = 0
        self.hints = self.rows = np.zeros(0, dtype=np.int64)

    def predict(self) -> tuple[int, int, int]:
        """(byte offered, run, table row) of the next target byte; the byte is -1 where it reads nothing."""
        if self.n >= len(self.hints):  # the next chunk of offsets (a slot counts earlier reads: all from 0)
            self.hints, self.rows = _offers(self.data, self.source, self.target, len(self.hints) + CHUNK, self.end,
                                            self.imap)
        return int(self.hints[self.n]), self.run, int(self.rows[self.n])

    def update(self, byte: int) -> None:
        hint, _, _ = self.predict()
        self.run = min(self.run + 1, MAX_LEN) if byte == hint else 0
        self.n += 1


def fit(rows: np.ndarray, run: np.ndarray, p: np.ndarray, signal: np.ndarray, hit: np.ndarray) -> CopyTable:
    """The table on K offered positions of training pairs (each argument (K,): table row, run,
    the network's probability of the offer and `CopyTable.signal`, 1.0 where it came), as the match
    table is fitted (`obf.mixer.match.fit_table`); a row without training positions gets no bias."""
    table = fit_table(rows, run, p, hit, groups=ROWS, kind=CopyTable, signal=signal)
    table.weights[np.bincount(rows, minlength=ROWS) == 0] = 0.0
    return table


def to_dict(table: CopyTable, imap: InputMap | None) -> dict[str, Any]:
    pairs = {f"{s}->{t}": np.round(table.weights[row(pair_index(s, t), 0):row(pair_index(s, t) + 1, 0)], 6).tolist()
             for s in MODALITIES for t in MODALITIES}
    d = {"length_buckets": LENGTH_BUCKETS, "prob_edges": list(CopyTable.EDGES), "weights": pairs}
    return d if imap is None else {**d, "map": imap.to_dict()}


def from_dict(d: dict[str, Any]) -> tuple[CopyTable, InputMap | None]:
    """The table and map saved by `to_dict`. A mixer saved before maps (one row per pair of
    modalities) serves its raw copies as it did: its row stands for every confidence."""
    if (d.get("length_buckets"), tuple(d.get("prob_edges", ()))) != (LENGTH_BUCKETS, CopyTable.EDGES):
        raise ValueError("the mixer's copy expert was made with other buckets than this obf uses")
    weights = []
    for s in MODALITIES:
        for t in MODALITIES:
            w = np.array(d["weights"][f"{s}->{t}"], dtype=np.float64)
            weights.append(w if w.ndim == 3 else np.broadcast_to(w, (CONFIDENCES, *w.shape)))
    imap = InputMap.from_dict(d["map"]) if d.get("map") else None
    return CopyTable(np.concatenate(weights)), imap
