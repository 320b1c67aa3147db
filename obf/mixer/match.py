"""The match model: what followed the last occurrence of the current context, mixed into the
network's prediction.

Why: compressors win on repetition that lies farther back than the encoder sees (a repeated
video frame 1.5 KB back, an identifier defined 5 KB earlier in a source file, a table in a
binary). Rather than pay for a longer encoder (measured in benchmarks/README.md: no long-context
setting won at equal training time), the byte that followed the previous occurrence of the
last `MIN_LEN` bytes anywhere earlier in the file is offered to the network's prediction, as
PAQ-family compressors do with their match model.

Mixing: `p'(y) ∝ p(y) · exp(w · [y = hint])`, i.e. `w` is added to the hint's logit. `w` comes
from a small table indexed by the modality, the match length (log2 buckets) and the network's
own probability of the hint (so a hint the network already expects is not counted twice). The
table is fitted at the end of training on training files (`fit_table`: per cell, Newton steps
on the log-likelihood) and travels with the model as part of its mixer (`obf.mixer`).

Numpy only: the serving side imports it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from obf.core.vocab import MODALITIES

MIN_LEN = 4  # bytes of context that must repeat before the match model predicts
MIN_LEN_OF = {"audio": 6}  # where short repeats mislead more than they help (measured: benchmarks/README.md)
MAX_LEN = 1 << 16  # match lengths are counted up to this
VERIFY = 512  # on a new match, bytes compared backwards to measure its length
RECOVER = 8  # misses in a row after which a match is dropped
MAX_POSITION = 1 << 62  # `learn_until` when every byte may be learned from
LENGTH_BUCKETS = 11  # floor(log2(length)), capped: 0-1 -> 0 (just recovered), 2-3 -> 1, 4-7 -> 2, ..., 1024+ -> 10
PROB_EDGES = (0.05, 0.2, 0.5, 0.8, 0.95)  # buckets of the network's own probability of the hint


class MatchModel:
    """Streaming match model over one byte sequence: `predict()` the next byte, `update(b)` with
    the byte that came.

    A dict maps every `min_len`-byte context to the position after its latest occurrence. While a
    match holds (each predicted byte came), the pointer advances and the length grows. On a miss
    the pointer still advances and the length restarts at 0: the copy goes on after a changed
    counter or a typo, and the table learns how far to trust a match that has just recovered.
    After `RECOVER` misses in a row it is dropped. Whenever the length is under `min_len`, a
    lookup of the last `min_len` bytes that finds an earlier occurrence starts a new match there,
    its length measured by comparing backwards (at most `VERIFY` bytes).

    `learn_until` (generation: the length of the real context) keeps the model to real bytes: only
    contexts whose next byte lies before it enter the table, and a match is dropped when it would
    predict a byte at or after it. Without it (scoring) every earlier byte counts. Why: a sampled
    run of one byte that the match model may copy is predicted ever more surely, until it fills
    the rest of the file (measured: benchmarks/README.md, "Generation").
    """

    def __init__(self, data: bytes | bytearray = b"", min_len: int = MIN_LEN, learn_until: int | None = None) -> None:
        self.min_len = min_len
        self.limit = learn_until if learn_until is not None else MAX_POSITION
        self.buf = bytearray()
        self.table: dict[bytes, int] = {}
        self.ptr = -1  # position in buf of the predicted byte; -1 = no match
        self.length = 0  # bytes matched since the match began or since its last miss
        self.misses = 0  # misses in a row
        for b in bytes(data):
            self.update(b)

    def predict(self) -> tuple[int, int]:
        """(predicted byte, match length), or (-1, 0) when there is no match."""
        return (self.buf[self.ptr], self.length) if self.ptr >= 0 else (-1, 0)

    def update(self, byte: int) -> None:
        buf = self.buf
        buf.append(byte)
        n = len(buf)
        if self.ptr >= 0:
            if buf[self.ptr] == byte:
                self.length = min(self.length + 1, MAX_LEN)
                self.misses = 0
            else:
                self.length = 0
                self.misses += 1
            self.ptr = self.ptr + 1 if self.misses <= RECOVER and self.ptr + 1 < self.limit else -1
            if self.ptr < 0:
                self.length = self.misses = 0
        m = self.min_len
        if n < m:
            return
        key = bytes(buf[n - m:n])
        if self.length < m:
            p = self.table.get(key)
            if p is not None:  # buf[p - m:p] == key, p < n
                k = m
                while k < VERIFY and p - 1 - k >= 0 and buf[p - 1 - k] == buf[n - 1 - k]:
                    k += 1
                self.ptr, self.length, self.misses = p, k, 0
        if n < self.limit:
            self.table[key] = n


def min_len_of(modality: str) -> int:
    return MIN_LEN_OF.get(modality, MIN_LEN)


def match_hints(data: bytes | np.ndarray, min_len: int = MIN_LEN, learn_until: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The match model's prediction for every position 0..n of `data` (position n: where EOS is
    the target) from the bytes before it -> (hints (n+1,) int64, -1 where none; lengths (n+1,)).
    `learn_until`: as `MatchModel`'s."""
    raw = bytes(data)
    hints = np.full(len(raw) + 1, -1, dtype=np.int64)
    lengths = np.zeros(len(raw) + 1, dtype=np.int64)
    m = MatchModel(min_len=min_len, learn_until=learn_until)
    for i, b in enumerate(raw):
        hints[i], lengths[i] = m.predict()
        m.update(b)
    hints[-1], lengths[-1] = m.predict()
    return hints, lengths


def log_softmax_at(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log softmax(logits (K, V))[k, ids[k]] in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=-1))
    return x[np.arange(len(ids)), ids] - lse


@dataclass(frozen=True)
class MatchTable:
    """Bias added to the hint's logit, per (modality, length bucket, network-probability bucket)."""

    weights: np.ndarray  # (len(MODALITIES), LENGTH_BUCKETS, len(EDGES) + 1) float64
    EDGES: ClassVar[tuple[float, ...]] = PROB_EDGES  # the network-probability buckets' edges

    @classmethod
    def zeros(cls, groups: int = len(MODALITIES)) -> Self:
        return cls(np.zeros((groups, LENGTH_BUCKETS, len(cls.EDGES) + 1)))

    @classmethod
    def cells(cls, modality_ids: np.ndarray, lengths: np.ndarray, p_hint: np.ndarray) -> tuple[np.ndarray, ...]:
        """Table indices of K hinted positions (each argument (K,))."""
        lb = np.minimum(np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64), LENGTH_BUCKETS - 1)
        return modality_ids, lb, np.searchsorted(np.asarray(cls.EDGES), p_hint)

    @staticmethod
    def signal(logits: np.ndarray, hints: np.ndarray) -> np.ndarray:
        """What the probability buckets bucket, from K rows of logits (K, V) and their hints (K,):
        the network's probability of the hint."""
        return np.exp(log_softmax_at(logits, hints))

    def apply(self, logits: np.ndarray, hints: np.ndarray, lengths: np.ndarray, modality_ids: np.ndarray
              ) -> np.ndarray:
        """Logits (..., V) with each position's bias added at its hint. hints, lengths and
        modality_ids have the leading shape (...); hint -1 = no match (left unchanged)."""
        out = np.array(logits, dtype=np.float32, copy=True)
        at = np.nonzero(hints >= 0)
        if not len(at[0]):
            return out
        rows = out[at]  # (K, V)
        h = hints[at]
        p = self.signal(rows, h)
        w = self.weights[self.cells(np.broadcast_to(modality_ids, hints.shape)[at], lengths[at], p)]
        out[at + (h,)] += w.astype(np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"min_len": {m: min_len_of(m) for m in MODALITIES}, "recover": RECOVER,
                "length_buckets": LENGTH_BUCKETS, "prob_edges": list(PROB_EDGES),
                "weights": {m: np.round(self.weights[i], 6).tolist() for i, m in enumerate(MODALITIES)}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> MatchTable:
        mine = ({m: min_len_of(m) for m in MODALITIES}, RECOVER, LENGTH_BUCKETS, PROB_EDGES)
        if (d.get("min_len"), d.get("recover"), d.get("length_buckets"), tuple(d.get("prob_edges", ()))) != mine:
            raise ValueError("match table was made with other match-model settings than this obf uses")
        return MatchTable(np.array([d["weights"][m] for m in MODALITIES], dtype=np.float64))


def modality_index(modalities: Sequence[str]) -> np.ndarray:
    return np.array([MODALITIES.index(m) for m in modalities], dtype=np.int64)


def _newton(cells: np.ndarray, p: np.ndarray, hit: np.ndarray, w0: np.ndarray, prior: float,
            iterations: int) -> np.ndarray:
    """Per cell (independent), maximise the mixed log-likelihood minus prior/2 * (w - w0)^2. With q
    the mixed probability of the hint, d/dw = hit - q and -d2/dw2 = q(1 - q); steps clipped to ±2."""
    w = w0.copy()
    for _ in range(iterations):
        e = np.exp(w[cells])
        q = e * p / (1.0 + (e - 1.0) * p)
        g = np.bincount(cells, hit - q, minlength=w.size) - prior * (w - w0)
        h = np.bincount(cells, q * (1.0 - q), minlength=w.size) + prior
        w += np.clip(g / h, -2.0, 2.0)
    return w


def fit_table(modality_ids: np.ndarray, lengths: np.ndarray, p_hint: np.ndarray, hit: np.ndarray,
              iterations: int = 50, prior: float = 4.0, groups: int = len(MODALITIES),
              kind: type[MatchTable] = MatchTable, signal: np.ndarray | None = None) -> MatchTable:
    """The table that maximises the mixed log-likelihood of K hinted positions (each argument (K,):
    modality, match length, the network's probability of the hint, 1.0 where it came). First a
    table shared by all modalities (pulled toward 0, no bias), then each modality's, pulled toward
    the shared one with weight `prior`: a cell seen a few times stays near what all modalities
    say, one seen thousands of times follows its own data. Last, no bias may fall as the match
    grows longer (a running maximum along the length axis, from the shortest length seen on): a
    longer match is no less reliable than a shorter one, and long matches are too rare in a
    training sample to fit alone (a repeated video frame is a 1.5 KB match). `groups`: the
    table's rows (`modality_ids` index them); `kind`: the table class (the copy expert's has its own
    probability buckets and pairs of modalities for rows); `signal` (K,): what its buckets bucket
    (`MatchTable.signal`) where that is not `p_hint`."""
    table = kind.zeros(groups)
    if not len(hit):
        return table
    mod, p = modality_ids, p_hint
    _, lb, pb = kind.cells(mod, lengths, p if signal is None else signal)
    shape = table.weights.shape
    shared_cells = np.ravel_multi_index((lb, pb), shape[1:])
    shared = _newton(shared_cells, p, hit, np.zeros(shape[1] * shape[2]), 1.0, iterations)
    w = _newton(np.ravel_multi_index((mod, lb, pb), shape), p, hit, np.tile(shared, shape[0]), prior, iterations)
    w = w.reshape(shape)
    seen = np.bincount(shared_cells, minlength=shared.size).reshape(shape[1:]) > 0  # (length, prob) with data
    for c in range(shape[2]):
        run = None
        for k in range(shape[1]):
            if seen[k, c]:
                run = w[:, k, c] if run is None else np.maximum(w[:, k, c], run)
            if run is not None:
                w[:, k, c] = run
    return kind(w)
