"""Backward-adaptive linear prediction of 8-bit audio: the stride hint of an audio sample.

Lossless audio coders (Shorten, FLAC, Monkey's Audio) predict each sample as a weighted sum of
the samples before it. Here the weights are fitted on the samples already seen, never on the ones
to come: every `EVERY` samples, least squares over the last `WINDOW` samples, each from the
`ORDER` before it (ridge-regularised, so silence and short histories stay tame). Scoring a file
and writing one byte by byte therefore give every sample the same prediction.

Why: the byte one sample back predicts speech at 8 kHz poorly (residual entropy 3.72 bits on the
validation WAVs); this predictor leaves 3.02 (order 16, window 192, refit every 16 samples, chosen
on the validation split among orders 4-32, windows 128-512, refits every 8 or 16:
`benchmarks/hint_entropy.py`; order 24 refitted every 8 reaches 2.95 for three times the fitting).

Exact arithmetic, so the whole-file and streaming paths cannot drift apart: the normal equations
of integer samples are integers below 2^53 (exact in float64 whatever the summation order), the
fitted weights are rounded to integers over 2^SHIFT, and a prediction is an integer sum shifted
down. Only the solve is floating point, and both paths call `weights` on the same integers.

Numpy only.
"""

from __future__ import annotations

import numpy as np

ORDER = 16  # samples before the predicted one that it is a weighted sum of
WINDOW = 192  # samples whose prediction errors the weights minimise
EVERY = 16  # samples between refits
WARMUP = 2 * ORDER  # the first sample predicted this way (before it: the previous sample); a multiple of EVERY
RIDGE = 1e-3  # ridge, as a share of the mean energy per lag
SHIFT = 12  # the weights are integers over 2^SHIFT
LIMIT = 1 << 20  # |integer weight| at most this (an ill-posed fit stays finite)


def settings() -> dict[str, int | float]:
    """What a saved mixer records of this predictor (its stride kernel was fitted to these hints)."""
    return {"order": ORDER, "window": WINDOW, "every": EVERY, "ridge": RIDGE, "shift": SHIFT}


def block_start(t: int) -> int:
    """The sample at which the weights that predict sample t (>= WARMUP) were fitted."""
    return t - (t - WARMUP) % EVERY


def weights(history: np.ndarray) -> np.ndarray:
    """(ORDER,) integer weights (over 2^SHIFT) of the centred samples `history` (m,) int64, the
    last at most WINDOW + ORDER before a block: least squares over its last rows, each sample from
    the ORDER before it (weight j for the sample j + 1 back)."""
    s = history.astype(np.float64)
    lags = np.lib.stride_tricks.sliding_window_view(s, ORDER)[:-1, ::-1]  # (m - ORDER, ORDER)
    y = s[ORDER:]  # (m - ORDER,)
    r, c = lags.T @ lags, lags.T @ y  # exact: integers below 2^53
    a = np.linalg.solve(r + (RIDGE * np.trace(r) / ORDER + 1.0) * np.eye(ORDER), c)
    return np.clip(np.rint(a * (1 << SHIFT)), -LIMIT, LIMIT)


def _predict(w: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Hints (k,) from integer weights (ORDER,) and lagged centred samples (k, ORDER): the byte
    value of the rounded weighted sum, clipped to 8 bits."""
    v = np.floor((lags @ w + (1 << (SHIFT - 1))) / (1 << SHIFT))  # exact: integers below 2^53
    return np.clip(v, -128, 127).astype(np.int64) + 128


def hints(seq: np.ndarray) -> np.ndarray:
    """(m+1,) the hint of each sample 0..m of one channel's unsigned 8-bit samples `seq` (m,)
    (m: the sample after the last): -1 for the first, the previous sample before WARMUP, then
    the linear prediction."""
    m = len(seq)
    out = np.full(m + 1, -1, dtype=np.int64)
    out[1:] = seq
    if m < WARMUP:
        return out
    s = seq.astype(np.int64) - 128
    lags = np.lib.stride_tricks.sliding_window_view(s, ORDER)[:, ::-1].astype(np.float64)  # row t - ORDER: before t
    for b in range(WARMUP, m + 1, EVERY):
        w = weights(s[max(0, b - WINDOW - ORDER):b])
        e = min(m + 1, b + EVERY)
        out[b:e] = _predict(w, lags[b - ORDER:e - ORDER])
    return out


class Stream:
    """The hints of one channel's samples as they are written, one at a time: `hint` of the
    samples so far equals `hints` of the finished channel at that sample. Keeps the weights of
    the block it last fitted."""

    def __init__(self) -> None:
        self.block = -1
        self.w: list[int] = []

    def hint(self, t: int, before: bytes | bytearray) -> int:
        """The hint of sample t from `before`, the channel's samples up to t (unsigned bytes, the
        latest last, at least min(t, WINDOW + ORDER + EVERY) of them: the fit's reach back from
        the block's start)."""
        if t == 0:
            return -1
        if t < WARMUP:
            return before[-1]
        b = block_start(t)
        if self.block != b:
            k = min(b, WINDOW + ORDER)  # samples of the fit, which end at sample b
            end = len(before) - (t - b)
            history = np.frombuffer(bytes(before[end - k:end]), np.uint8).astype(np.int64) - 128
            self.w, self.block = [int(x) for x in weights(history)], b
        v = sum(w * (before[-1 - j] - 128) for j, w in enumerate(self.w)) + (1 << (SHIFT - 1))
        return min(max(v >> SHIFT, -128), 127) + 128
