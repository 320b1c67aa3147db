"""Bits per byte, the one measure every stage reports (evaluation, the export's parity report,
training's loss). Numpy only: no torch, so the serving side can score too.

`log_probs_of` gives the natural-log probability of each target id; `bits_per_byte` turns a
batch of logits into mean bits per target. Training computes the same quantity on torch tensors
(`obf.train.loss_bits`, with `LN2` from here) because it needs gradients.
"""

from __future__ import annotations

import math

import numpy as np

from obf.core.vocab import PAD

LN2 = math.log(2.0)


def log_probs_of(logits: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Natural-log probability of each target id. logits (B, T, V), tgt (B, T) -> (B, T); PAD -> 0."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]  # (B, T)
    safe = np.where(tgt == PAD, 0, tgt)
    lp = np.take_along_axis(x, safe[..., None], axis=-1)[..., 0] - lse
    return np.where(tgt == PAD, 0.0, lp)


def bits_per_byte(logits: np.ndarray, tgt: np.ndarray) -> float:
    """Mean cross-entropy in bits of `tgt` (B, T) under `logits` (B, T, V), PAD targets ignored."""
    n = int((tgt != PAD).sum())
    return float(-log_probs_of(logits, tgt).sum() / LN2 / n) if n else float("nan")
