"""The copy expert of `paired` targets: each target byte is offered the input byte its conversion
reads, as a pointer-generator network offers its source.

Why: a conversion keeps much of its input as it is: `upper` every byte but the letters `a`-`z`,
`gray` the BMP header (its size fields above all, which place every pixel after them). The
network reads that input byte at its exact distance (`model.query_map`), yet after minutes of CPU
training it still writes a neighbouring byte often enough that few files come out whole:
measured on the validation pairs of the default model, 106 of the 127 bytes `upper` got wrong
were bytes the input already held, and every `gray` picture whose header came out wrong had
copied it wrong. A copy of the read byte is what those positions need, and the network's own
prediction tells where it is not (a letter to raise, a pixel to convert, a hex digit).

Mixing: as the match model (`obf.mixer.match`), `w` is added to the logit of the copied byte,
`w` from a table (`CopyTable`) indexed by the pair of modalities (input x target), the run of
copies that came right just before (log2 buckets; a header copied so far is copied on) and the
network's probability of the copied byte over that of its first choice (so a letter the network
raises is left to it). Chosen on the validation pairs (`benchmarks/copy_expert.py`): with that
ratio `gray` got 21.9% of its pixels exact, with the probability itself 10.0%. The table is
fitted after training on training pairs (`obf.train.fit_model_mixer`) with the rest of the mixer
and applied after its match and stride biases, in teacher-forced scoring
(`obf.runtime.scoring.paired_log_probs`) and in generation (`Mixer.step`, `CopyState`) alike.
The read offset is `obf.formats.conversions.input_offsets`: the same offset for `upper`, `gray`
and pairs without a built-in conversion, the encoded byte for `hex`, the pixel for `ascii`;
nothing past the input.

Numpy only.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np

from obf.core.vocab import MODALITIES
from obf.formats.conversions import input_offsets
from obf.mixer.match import LENGTH_BUCKETS, MAX_LEN, MatchTable, fit_table

PAIRS = len(MODALITIES) ** 2  # the table's first axis: input modality x target modality
CHUNK = 256  # target offsets whose reads `CopyState` computes at once


class CopyTable(MatchTable):
    """The copy expert's bias per (pair of modalities, run of copies, bucket of `signal`): how far
    the copy lies below the network's first choice. Finer buckets than the match model's far below
    it: a letter `upper` must raise is a byte the network gives almost nothing, a punctuation mark
    it hesitates on is one it gives a little."""

    EDGES: ClassVar[tuple[float, ...]] = (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95)

    @staticmethod
    def signal(logits: np.ndarray, hints: np.ndarray) -> np.ndarray:
        """The network's probability of the copied byte over that of its first choice (1.0: the
        network would write the copy itself), from K rows of logits (K, V) and hints (K,)."""
        x = logits.astype(np.float64)
        return np.exp(x[np.arange(len(hints)), hints] - x.max(axis=-1))


class Copies(NamedTuple):
    """Per position: the input byte read (-1: none), the run of copies before it and the row of
    its pair of modalities in the table; arrays of one leading shape."""

    hint: np.ndarray
    run: np.ndarray
    pair: np.ndarray


def pair_index(source: str, target: str) -> int:
    """The table row of a pair of modalities (input, target)."""
    return MODALITIES.index(source) * len(MODALITIES) + MODALITIES.index(target)


def _reads(data: bytes, source: str, target: str, t: np.ndarray, end: bool) -> np.ndarray:
    """The input byte each target offset t (n,) reads, -1 past the input -> (n,) int64."""
    raw = np.frombuffer(bytes(data), np.uint8).astype(np.int64)
    if not len(raw):
        return np.full(len(t), -1, dtype=np.int64)
    at = input_offsets(source, target, bytes(data), t, end)
    return np.where(at < len(raw), raw[np.minimum(at, len(raw) - 1)], -1)


def copy_hints(data: bytes, source: str, target: bytes, target_modality: str, end: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """For every position 0..n of a `paired` target (n bytes; position n: where EOS is the target),
    the input byte it reads (-1: none) and the run of positions just before it whose byte was
    their copy (capped at `MAX_LEN`) -> ((n+1,), (n+1,)) int64. `end`: the model's `input_end`."""
    n = len(target)
    hints = _reads(data, source, target_modality, np.arange(n + 1), end)
    hit = np.frombuffer(bytes(target), np.uint8).astype(np.int64) == hints[:n]  # (n,)
    runs = np.zeros(n + 1, dtype=np.int64)
    if n:
        idx = np.arange(1, n + 1)
        last_miss = np.maximum.accumulate(np.where(hit, 0, idx))  # 1 + the latest miss at or before i-1
        runs[1:] = np.minimum(idx - last_miss, MAX_LEN)
    return hints, runs


class CopyState:
    """The copy hint and run of the next byte of a `paired` target being written, byte by byte;
    equal to `copy_hints` of the whole target at every position."""

    def __init__(self, data: bytes, source: str, target_modality: str, end: bool) -> None:
        self.data, self.source, self.target, self.end = bytes(data), source, target_modality, end
        self.pair = pair_index(source, target_modality)
        self.n = 0  # target bytes so far
        self.run = 0
        self.reads = np.zeros(0, dtype=np.int64)

    def predict(self) -> tuple[int, int]:
        """(input byte read, run) of the next target byte; (-1, run) where it reads nothing."""
        if self.n >= len(self.reads):  # the next chunk of offsets
            t = np.arange(len(self.reads), len(self.reads) + CHUNK)
            self.reads = np.concatenate([self.reads, _reads(self.data, self.source, self.target, t, self.end)])
        return int(self.reads[self.n]), self.run

    def update(self, byte: int) -> None:
        hint, _ = self.predict()
        self.run = min(self.run + 1, MAX_LEN) if byte == hint else 0
        self.n += 1


def fit(pair: np.ndarray, run: np.ndarray, p: np.ndarray, signal: np.ndarray, hit: np.ndarray) -> CopyTable:
    """The table on K copy-hinted positions of training pairs (each argument (K,): pair row, run,
    the network's probability of the copied byte and `CopyTable.signal`, 1.0 where it came), as the
    match table is fitted (`obf.mixer.match.fit_table`); a pair of modalities without training
    pairs gets no bias."""
    table = fit_table(pair, run, p, hit, groups=PAIRS, kind=CopyTable, signal=signal)
    table.weights[np.bincount(pair, minlength=PAIRS) == 0] = 0.0
    return table


def to_dict(table: CopyTable) -> dict[str, Any]:
    pairs = {f"{s}->{t}": np.round(table.weights[pair_index(s, t)], 6).tolist()
             for s in MODALITIES for t in MODALITIES}
    return {"length_buckets": LENGTH_BUCKETS, "prob_edges": list(CopyTable.EDGES), "weights": pairs}


def from_dict(d: dict[str, Any]) -> CopyTable:
    if (d.get("length_buckets"), tuple(d.get("prob_edges", ()))) != (LENGTH_BUCKETS, CopyTable.EDGES):
        raise ValueError("the mixer's copy expert was made with other buckets than this obf uses")
    return CopyTable(np.array([d["weights"][f"{s}->{t}"] for s in MODALITIES for t in MODALITIES],
                              dtype=np.float64))
