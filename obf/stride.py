"""The stride hint: the byte one row (BMP), one sample frame (WAV) or one frame (Y4M) back, with
a learned spread of bias around its value.

Why: in a canonical media file the byte one unit back is the same channel of the pixel above,
of the previous sample, of the same pixel in the previous frame. A 32x32 Y4M frame is 1.5 KB, so
the previous frame lies beyond the 512-byte encoder; a 64-pixel BMP row is 192 bytes, which the
network sees but, after minutes of CPU training, uses poorly. Values near that byte are likely,
not only the byte itself, so the bias is a kernel over the offset: `K[modality, v - hint]` is
added to the logit of every byte value v within `RADIUS` of the hint. The header gives the unit
(`obf.completion.layout`), so text, binary and files without a readable header get no hint.

Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from obf.vocab import MODALITIES, N_BYTES

RADIUS = 16  # byte values within this distance of the hint get a bias
OFFSETS = np.arange(-RADIUS, RADIUS + 1)


def stride_of(data: bytes, modality: str) -> tuple[int, int] | None:
    """(header bytes, unit bytes) of a canonical media file, or None."""
    from obf.completion import layout  # completion imports sampling, which imports this module

    lay = layout(bytes(data), modality)
    return (lay.header, lay.unit) if lay else None


def stride_hints(data: bytes | np.ndarray, modality: str) -> np.ndarray:
    """The byte one unit back for every position 0..n of `data` -> (n+1,) int64, -1 where none
    (text, binary, no header, the header and the first unit)."""
    raw = np.frombuffer(bytes(data), np.uint8).astype(np.int64)
    hints = np.full(len(raw) + 1, -1, dtype=np.int64)
    s = stride_of(bytes(data), modality)
    if s is not None:
        header, unit = s
        first = header + unit
        if first <= len(raw):
            hints[first:] = raw[first - unit:len(raw) + 1 - unit]
    return hints


def window(logits: np.ndarray, hints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits (K, V) at the byte values hint + OFFSETS of K hinted rows -> ((K, 2R+1) values,
    -inf where the value is not a byte; (K, 2R+1) clipped ids)."""
    ids = hints[:, None] + OFFSETS[None, :]
    ok = (ids >= 0) & (ids < N_BYTES)
    safe = np.clip(ids, 0, N_BYTES - 1)
    return np.where(ok, np.take_along_axis(logits, safe, axis=-1), -np.inf), safe


@dataclass(frozen=True)
class StrideKernel:
    """Bias per (modality, value - hint) for values within RADIUS of the hint."""

    weights: np.ndarray  # (len(MODALITIES), 2 * RADIUS + 1) float64

    @staticmethod
    def zeros() -> "StrideKernel":
        return StrideKernel(np.zeros((len(MODALITIES), len(OFFSETS))))

    def apply(self, logits: np.ndarray, hints: np.ndarray, modality_ids: np.ndarray) -> np.ndarray:
        """Logits (..., V) with the kernel added around each position's hint (hint -1: unchanged).
        hints and modality_ids broadcast to the leading shape (...)."""
        out = np.array(logits, dtype=np.float32, copy=True)
        at = np.nonzero(hints >= 0)
        if not len(at[0]):
            return out
        h = hints[at]
        ids = h[:, None] + OFFSETS[None, :]  # (K, 2R+1)
        ok = (ids >= 0) & (ids < N_BYTES)
        k = self.weights[np.broadcast_to(modality_ids, hints.shape)[at]]  # (K, 2R+1)
        rows = out[at]  # (K, V) copy
        np.add.at(rows, (np.arange(len(h))[:, None].repeat(len(OFFSETS), 1)[ok], ids[ok]), k[ok].astype(np.float32))
        out[at] = rows
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"radius": RADIUS, "weights": {m: np.round(self.weights[i], 6).tolist() for i, m in enumerate(MODALITIES)}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "StrideKernel":
        if d.get("radius") != RADIUS:
            raise ValueError("stride kernel was made with another radius than this obf uses")
        return StrideKernel(np.array([d["weights"][m] for m in MODALITIES], dtype=np.float64))


def fit_kernel(modality_ids: np.ndarray, window_lp: np.ndarray, offset: np.ndarray, iterations: int = 100,
               prior: float = 1.0) -> StrideKernel:
    """The kernel that maximises the mixed log-likelihood of K hinted positions: `window_lp` (K, 2R+1)
    the log-probabilities (before the kernel) of hint + OFFSETS, `offset` (K,) the index in OFFSETS
    of the byte that came (-1: outside the window or EOS). With q_d the mixed probability of
    hint + d, d/dK_d = [came = d] - q_d; Newton steps on the diagonal, pulled toward 0 by `prior`."""
    kernel = StrideKernel.zeros()
    for m in range(len(MODALITIES)):
        sel = modality_ids == m
        if not sel.any():
            continue
        p = np.exp(window_lp[sel])  # (K, 2R+1)
        came = np.zeros_like(p)
        hit = offset[sel] >= 0
        came[np.flatnonzero(hit), offset[sel][hit]] = 1.0
        k = np.zeros(len(OFFSETS))
        for _ in range(iterations):
            e = p * np.exp(k)
            q = e / (1.0 + (e - p).sum(axis=1, keepdims=True))
            g = (came - q).sum(axis=0) - prior * k
            h = (q * (1.0 - q)).sum(axis=0) + prior
            k += np.clip(g / h, -1.0, 1.0)
        kernel.weights[m] = k
    return kernel
