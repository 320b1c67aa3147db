"""The column expert: an order-0 model per byte column (position mod k), mixed with the network by
how well each has predicted the bytes just before.

Why: files of fixed-size records (arrays of floats or integers, sensor dumps, tables) are
predictable column by column (the exponent byte of a float64 takes a handful of values, the
mantissa's low bytes any), which a small network trained for minutes on other files does not see
and which the match model (exact repeats) and the stride hint (media layouts) do not cover. On
the validation EEG dump (raw float64) the network alone scores 8.0 bits per byte, the column model
7.2 and the best compressor 7.6.

The model: for every stride k in `STRIDES` the counts of each byte value in each column
so far give q_k(v) = (count + SMOOTHING) / (seen + 256 SMOOTHING); the stride whose q has coded
the file best so far is used. Mixing is a Bayesian two-expert mixture over a sliding window:
p'(v) = (1 - w) p(v) + w q(v) with w = sigmoid(PRIOR_LOGIT + Σ log q(y_j) - log p(y_j)) over the
last `WINDOW` bytes y_j, p the network's (already mixed) distribution as it predicted each byte.
Where the network predicts better, w falls toward 0 and costs almost nothing; where the columns do,
it rises toward 1. EOS and the other non-byte ids keep (1 - w) of their probability.

With `learn_until` (generation after a real context) the counts, the stride picked and the
mixture weight stay as they were there: the model's own samples never teach it their columns.

Numpy only: the serving side imports it without torch.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from obf.core.vocab import N_BYTES

STRIDES = (1, 2, 4, 8)  # column widths tried; the best so far in each file is used
SMOOTHING = 0.3  # added to every count (Krichevsky-Trofimov-like)
WINDOW = 512  # bytes of evidence the mixture weight looks back over
PRIOR_LOGIT = -5.0  # log-odds of the columns before any evidence: w = 0.7% (costs <0.01 bit per byte)
FLOOR = -50.0  # log q and log p are floored here in the evidence (a byte the network rules out)


def earlier(key: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """(n,) per position of `key` (n,): how many earlier positions share its key (with `weight`,
    their summed weights). A stable sort puts equal keys in file order. (`obf.mixer.ngram`'s
    counts use it too.)"""
    n = len(key)
    order = np.argsort(key, kind="stable")
    w = np.ones(n, np.int64) if weight is None else weight[order]
    before = np.cumsum(w) - w  # over the sorted positions
    starts = np.r_[0, np.flatnonzero(np.diff(key[order])) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, n]))  # where each position's group starts
    out = np.empty(n, np.int64)
    out[order] = before - before[first]
    return out


def _column_stride(data: np.ndarray, k: int) -> np.ndarray:
    """(n,) log q_k of each byte of `data` (n,) given the bytes of its column before it."""
    n = len(data)
    before = earlier((np.arange(n) % k) * N_BYTES + data)  # earlier bytes of the same column and value
    seen = np.arange(n) // k  # earlier bytes of the same column
    return np.log((before + SMOOTHING) / (seen + N_BYTES * SMOOTHING))


def column_log_probs(data: bytes | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every byte of `data`: (n,) log q of the byte under the column model, and (n,) the
    index in STRIDES of the stride it used (the one whose total code length before it was
    least; the first on ties)."""
    return _picked(_per_stride(np.frombuffer(bytes(data), np.uint8).astype(np.int64)))


def _per_stride(x: np.ndarray) -> np.ndarray:
    """(S, n) log q_k of each byte of x (n,) under every stride k of STRIDES."""
    return np.stack([_column_stride(x, k) for k in STRIDES]) if len(x) else np.zeros((len(STRIDES), 0))


def _picked(lq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) log q under the stride with the least code length before each byte, and (n,) its index."""
    n = lq.shape[1]
    cost = np.concatenate([np.zeros((len(STRIDES), 1)), np.cumsum(-lq, axis=1)[:, :-1]], axis=1)[:, :n]  # (S, n)
    pick = np.argmin(cost, axis=0)
    return lq[pick, np.arange(n)], pick


def evidence_logits(lq: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """(n+1,) the mixture's log-odds for positions 0..n from the (n,) log q and log p of the bytes
    0..n-1: PRIOR_LOGIT plus the log ratio summed over the WINDOW bytes before each position."""
    diff = np.maximum(lq, FLOOR) - np.maximum(lp, FLOOR)
    total = np.concatenate([[0.0], np.cumsum(diff)])  # total[i] = sum over bytes before i
    before = np.concatenate([np.zeros(min(WINDOW, len(total))), total[:-WINDOW]]) if len(total) > WINDOW else 0.0
    return PRIOR_LOGIT + total - before


def mix_log_probs(lp: np.ndarray, lq: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """log p' = log((1 - w) p + w q), elementwise; lq = -inf where q has no mass (EOS)."""
    log_w = -np.logaddexp(0.0, -logit)
    log_1mw = -np.logaddexp(0.0, logit)
    return np.logaddexp(log_1mw + lp, log_w + lq)


def file_log_probs(data: bytes | np.ndarray, lp: np.ndarray, learn_until: int | None = None) -> np.ndarray:
    """(n+1,) log p' of the targets of a whole file (its n bytes, then EOS) from the (n+1,) log p
    the network (with its mixer) gives them: what `obf.runtime.scoring` counts. `learn_until`: positions
    from there on are coded with the counts, stride and weight the bytes before it gave."""
    x = np.frombuffer(bytes(data), np.uint8).astype(np.int64)
    n = len(x)
    if learn_until is None or learn_until >= n:
        lq, _ = _picked(_per_stride(x))
        logit = evidence_logits(lq, lp[:n])
        return mix_log_probs(lp, np.concatenate([lq, [-np.inf]]), logit)
    cut = learn_until
    per_stride = _per_stride(x[:cut])  # (S, cut)
    lq, _ = _picked(per_stride)
    logit = evidence_logits(lq, lp[:cut])  # (cut+1,): the last one is the weight frozen at `cut`
    best = int(np.argmin(-per_stride.sum(axis=1)))  # the stride that coded the real bytes best
    k = STRIDES[best]
    counts = np.zeros((k, N_BYTES))
    np.add.at(counts, (np.arange(cut) % k, x[:cut]), 1.0)
    seen = np.bincount(np.arange(cut) % k, minlength=k)  # (k,) real bytes per column
    later = np.arange(cut, n)
    lq_later = np.log((counts[later % k, x[cut:]] + SMOOTHING) / (seen[later % k] + N_BYTES * SMOOTHING))
    lq_all = np.concatenate([lq, lq_later, [-np.inf]])
    logit_all = np.concatenate([logit[:cut], np.full(n + 1 - cut, logit[cut])])
    return mix_log_probs(lp, lq_all, logit_all)


class ColumnState:
    """The column model and the mixture weight of one file being written, byte by byte
    (generation): what `file_log_probs` computes at every position, given the log p the network
    gave each earlier byte (`tail_lp`: those of the last `WINDOW` bytes of the context, as
    scoring computes them; `obf.runtime.scoring.tail_log_probs`). A longer `tail_lp` (the last T
    bytes, T <= len(context)) also gives `served_tail`: the log p' this expert gives the last
    T - WINDOW of them (all T when they are the whole context), each with its window inside, for
    the expert after it (`obf.mixer.ngram`)."""

    def __init__(self, context: bytes, tail_lp: np.ndarray) -> None:
        x = np.frombuffer(bytes(context), np.uint8).astype(np.int64)
        self.n = len(x)
        tail = min(WINDOW, self.n)
        if not tail <= len(tail_lp) <= self.n:
            raise ValueError(f"the context's last {tail} bytes (or more) need their network log-probabilities, "
                             f"got {len(tail_lp)}")
        self.counts = []  # per stride: (k, 256) counts of each value in each column
        for k in STRIDES:
            c = np.zeros((k, N_BYTES))
            np.add.at(c, (np.arange(self.n) % k, x), 1.0)
            self.counts.append(c)
        per_stride = _per_stride(x)  # (S, n)
        self.cost = (-per_stride.sum(axis=1)).tolist()  # code length of the file so far, per stride
        lq, _ = _picked(per_stride)
        t = len(tail_lp)
        exact = 0 if t == self.n else WINDOW  # the first tail position whose window lies inside the tail
        lq_tail = lq[self.n - t :]
        logit = evidence_logits(lq_tail, tail_lp)  # (t+1,)
        self.served_tail = mix_log_probs(tail_lp[exact:], lq_tail[exact:], logit[exact:t])  # (t - exact,)
        tail_lp = tail_lp[t - tail :]
        self.diffs: deque[float] = deque((np.maximum(lq[self.n - tail :], FLOOR) - np.maximum(tail_lp, FLOOR)).tolist())
        self.evidence = float(sum(self.diffs))
        self.frozen_at: int | None = None  # `freeze`: the position from which nothing more is learned
        self.picked = 0  # the stride used once frozen

    def freeze(self) -> None:
        """Keep the counts, the stride and the weight as they stand (`learn_until` of `file_log_probs`)."""
        self.picked = self._best()
        self.frozen_at = self.n

    def _best(self) -> int:
        if self.frozen_at is not None:
            return self.picked
        return min(range(len(STRIDES)), key=self.cost.__getitem__)  # the first on ties, as np.argmin

    def _seen(self, k: int) -> int:
        """Bytes counted so far in the next byte's column of stride k."""
        if self.frozen_at is None:
            return self.n // k
        return len(range(self.n % k, self.frozen_at, k))

    def log_q(self) -> np.ndarray:
        """(256,) log q of the next byte, under the stride that has coded the file best so far."""
        s = self._best()
        k = STRIDES[s]
        return np.log((self.counts[s][self.n % k] + SMOOTHING) / (self._seen(k) + N_BYTES * SMOOTHING))

    def logit(self) -> float:
        """The mixture's log-odds for the next byte."""
        return PRIOR_LOGIT + self.evidence

    def mix(self, log_p: np.ndarray) -> np.ndarray:
        """(V,) log p' of the next id from the (V,) log p of the network with its mixer."""
        return mix_rows(log_p[None], [self])[0]

    def update(self, byte: int, log_p_byte: float) -> None:
        """The byte that came and the log-probability the network (with its mixer) gave it."""
        if self.frozen_at is not None:
            self.n += 1
            return
        best = self._best()
        for s, k in enumerate(STRIDES):
            row = self.counts[s][self.n % k]
            lq = math.log((row[byte] + SMOOTHING) / (self.n // k + N_BYTES * SMOOTHING))
            if s == best:
                diff = max(lq, FLOOR) - max(log_p_byte, FLOOR)
                self.diffs.append(diff)
                self.evidence += diff
            self.cost[s] -= lq
            row[byte] += 1.0
        if len(self.diffs) > WINDOW:
            self.evidence -= self.diffs.popleft()
        self.n += 1


def mix_rows(log_p: np.ndarray, states: list[ColumnState]) -> np.ndarray:
    """(B, V) log p' of the next id of B files being written from their (B, V) log p."""
    lq = np.full(log_p.shape, -np.inf)
    lq[:, :N_BYTES] = np.stack([s.log_q() for s in states])
    return mix_log_probs(log_p, lq, np.array([[s.logit()] for s in states]))
