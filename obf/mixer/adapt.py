"""The match model's trust, re-estimated in each file from how its recent predictions fared.

Why: the match table (`obf.mixer.match`) is fitted on training files, mostly source code, where the
network already expects most copied bytes. In a file unlike those (prose, a database, a PNG
turned bitmap) a long match is right far more often than the table's bias says when the network
does not expect the byte: in a package description the match model's long matches came true far
more often than the table assumed, and each cost bits (benchmarks/README.md, "The mixer"). So,
per table cell (match length bucket x the served
probability of the hinted byte), the bias is corrected by the difference between the log-odds
the file has shown and those the model predicted, over the match events of the last `WINDOW`
positions:

    a = log((H + s) / (N - H + s)) - log((Q + s) / (N - Q + s))

with N events of that cell in the window, H of them hits and Q the sum of their predicted
probabilities, s = `SMOOTHING` (a = 0 without events), clipped to ±`LIMIT`; then
p'(v) ∝ p(v) · e^(a [v = hint]). Nothing is fitted; the estimate uses the model's own predictions
before the correction, so it is computed for a whole file at once (scoring) and kept up to date
byte by byte (generation) alike. With `learn_until` (generation) the estimate stops there: every
later position gets the correction of that position, so the model's own samples never raise its
trust in copying them. Numpy only.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

import numpy as np

from obf.mixer.match import LENGTH_BUCKETS, PROB_EDGES, MatchTable

WINDOW = 2048  # positions back whose match events re-estimate the trust
SMOOTHING = 1.0
LIMIT = 4.0
N_PROB = len(PROB_EDGES) + 1


def cells(lengths: np.ndarray, p_hint: np.ndarray) -> np.ndarray:
    """The table cell (length bucket x probability bucket) of each match event, as one index."""
    _, lb, pb = MatchTable.cells(np.zeros(len(lengths), dtype=np.int64), np.asarray(lengths), np.asarray(p_hint))
    return lb * N_PROB + pb


def _cell(length: int, p_hint: float) -> int:
    """`cells` of one event, without numpy (a decode step's cost)."""
    return min(max(length, 1).bit_length() - 1, LENGTH_BUCKETS - 1) * N_PROB + bisect.bisect_left(PROB_EDGES, p_hint)


def correction(hits: np.ndarray | float, predicted: np.ndarray | float, events: np.ndarray | int) -> np.ndarray:
    """The log-odds correction from the hits, the summed predicted probability and the number of
    events of a cell in the window."""
    a = (np.log((hits + SMOOTHING) / (events - hits + SMOOTHING))
         - np.log((predicted + SMOOTHING) / (events - predicted + SMOOTHING)))
    return np.clip(a, -LIMIT, LIMIT)


def corrections(positions: np.ndarray, cell: np.ndarray, p_hint: np.ndarray, hit: np.ndarray,
                learn_until: int | None = None) -> np.ndarray:
    """(K,) the correction of each of K match events (sorted by position), from the earlier events
    of its cell less than WINDOW positions before it; an event at or after `learn_until` gets
    the correction an event at `learn_until` would (only events before it count)."""
    a = np.zeros(len(positions))
    for c in np.unique(cell):
        e = np.flatnonzero(cell == c)
        pos = positions[e]
        at = pos if learn_until is None else np.minimum(pos, learn_until)  # where each event's estimate stands
        hits = np.concatenate([[0.0], np.cumsum(hit[e])])
        pred = np.concatenate([[0.0], np.cumsum(p_hint[e])])
        first = np.searchsorted(pos, at - WINDOW + 1)  # the first event inside the window
        k = np.searchsorted(pos, at)  # the events before it
        a[e] = correction(hits[k] - hits[first], pred[k] - pred[first], k - first)
    return a


def adapt_log_probs(targets: np.ndarray, match: np.ndarray, lengths: np.ndarray, lp: np.ndarray,
                    hint_lp: np.ndarray, learn_until: int | None = None) -> np.ndarray:
    """(n,) log p' of n targets from their (n,) log p, the match hints (-1: none) and lengths at
    those positions, and hint_lp (n,) the log p of each hinted byte; positions in order, the
    first at 0. `learn_until`: see `corrections`."""
    at = np.flatnonzero(match >= 0)
    if not len(at):
        return lp
    p = np.exp(hint_lp[at])
    hit = (targets[at] == match[at]).astype(np.float64)
    a = corrections(at, cells(lengths[at], p), p, hit, learn_until)
    out = np.array(lp, dtype=np.float64, copy=True)
    out[at] += a * hit - np.log1p(p * np.expm1(a))
    return out


class AdaptState:
    """The corrections of a file being written (generation): the match events of the last WINDOW
    positions, per cell, as `adapt_log_probs` sees them."""

    def __init__(self) -> None:
        self.n = 0  # position of the next byte
        self.frozen = False  # `freeze`: later bytes no longer change the estimate
        self.events: deque[tuple[int, int, float, float]] = deque()  # (position, cell, p, hit)
        self.totals: dict[int, list[float]] = {}  # cell -> [hits, predicted, events]
        self.pending: tuple[int, int, float] | None = None  # (hint, cell, p) of the next byte

    @staticmethod
    def of_context(context: bytes, match: np.ndarray, lengths: np.ndarray, tail_hint_lp: np.ndarray) -> AdaptState:
        """The state after `context`, from its match hints and lengths (each (n+1,), `file_hints`)
        and the log p scoring gives the hinted byte at its last T positions (T >= WINDOW, or all)."""
        state = AdaptState()
        n, t = len(context), len(tail_hint_lp)
        x = np.frombuffer(bytes(context), np.uint8)
        for j in range(n - t, n):
            if match[j] >= 0:
                p = float(np.exp(tail_hint_lp[j - (n - t)]))
                state.n = j
                state.pending = (int(match[j]), _cell(int(lengths[j]), p), p)
                state.update(int(x[j]))
        state.n = n
        state._forget()
        return state

    def freeze(self) -> None:
        """Keep the estimate as it stands (generation after the real context: `learn_until`)."""
        self._forget()
        self.frozen = True

    def _forget(self) -> None:
        if self.frozen:
            return
        while self.events and self.events[0][0] <= self.n - WINDOW:
            _, c, p, hit = self.events.popleft()
            t = self.totals[c]
            t[0] -= hit
            t[1] -= p
            t[2] -= 1

    def bias(self, hint: int, length: int, p_hint: float) -> float:
        """The correction for the next byte, whose match hint (-1: none) has this length and
        probability; remembered for `update`."""
        if hint < 0:
            self.pending = None
            return 0.0
        self._forget()
        c = _cell(length, p_hint)
        self.pending = (hint, c, p_hint)
        h, q, k = self.totals.get(c, (0.0, 0.0, 0))
        if not k:
            return 0.0
        a = math.log((h + SMOOTHING) / (k - h + SMOOTHING)) - math.log((q + SMOOTHING) / (k - q + SMOOTHING))
        return min(max(a, -LIMIT), LIMIT)

    def update(self, byte: int) -> None:
        if self.pending is not None and not self.frozen:
            hint, c, p = self.pending
            hit = float(byte == hint)
            self.events.append((self.n, c, p, hit))
            t = self.totals.setdefault(c, [0.0, 0.0, 0])
            t[0] += hit
            t[1] += p
            t[2] += 1
        self.pending = None
        self.n += 1
