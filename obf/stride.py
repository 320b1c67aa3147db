"""The stride hint: a media byte predicted from the bytes one stride back, with a learned spread
of bias around its value.

The stride is what the header declares (`obf.completion.layout`): a BMP row, a WAV sample frame,
a Y4M frame. Audio and video take the byte one stride back: the same channel of the previous
sample, the same pixel of the previous frame. Images take the median edge detector of JPEG-LS
(LOCO-I) over the same channel of the pixels left, above and upper-left, which predicts natural
images better than the pixel above alone (0.3-0.5 bits lower residual entropy on the corpus
photos). Why: a 32x32 Y4M frame is 1.5 KB, so the previous frame lies beyond the 512-byte
encoder; a 64-pixel BMP row is 192 bytes, which the network sees but, after minutes of CPU
training, uses poorly. Values near the prediction are likely, not only the value itself, so the
bias is a kernel over the offset: `K[modality, v - hint]` is added to the logit of every byte
value v within `RADIUS` of the hint. Text, binary and files without a readable header get none.

Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from obf.vocab import MODALITIES, N_BYTES

RADIUS = 16  # byte values within this distance of the hint get a bias
OFFSETS = np.arange(-RADIUS, RADIUS + 1)


@dataclass(frozen=True)
class Predictor:
    """Where a media file's bytes are predicted from: `header` bytes, then strides of `unit`
    bytes (row, sample frame, frame); `pixel` bytes per pixel for an image (its left neighbour),
    0 for audio and video (one stride back)."""

    header: int
    unit: int
    pixel: int = 0

    @property
    def first(self) -> int:
        """The first position with a hint."""
        return self.header + self.unit + self.pixel


def predictor_of(data: bytes, modality: str) -> Predictor | None:
    """The predictor of a canonical media file, from its header; None for text, binary and
    headers obf cannot read."""
    from obf.completion import layout  # completion imports sampling, which imports this module
    from obf.formats import bmp_layout

    lay = layout(bytes(data), modality)
    if lay is None:
        return None
    bmp = bmp_layout(bytes(data[:64])) if modality == "image" else None
    return Predictor(lay.header, lay.unit, bmp.bpp // 8 if bmp else 0)


def med(left: np.ndarray | int, above: np.ndarray | int, corner: np.ndarray | int) -> np.ndarray | int:
    """JPEG-LS's median edge detector: min(left, above) below an edge, max above one, else the
    plane through the three neighbours (left + above - corner)."""
    lo, hi = np.minimum(left, above), np.maximum(left, above)
    return np.where(corner >= hi, lo, np.where(corner <= lo, hi, left + above - corner))


def stride_hints(data: bytes | np.ndarray, modality: str) -> np.ndarray:
    """The predicted byte for every position 0..n of `data` -> (n+1,) int64, -1 where none
    (text, binary, no header, the header and the first stride)."""
    raw = np.frombuffer(bytes(data), np.uint8).astype(np.int64)
    hints = np.full(len(raw) + 1, -1, dtype=np.int64)
    p = predictor_of(bytes(data), modality)
    if p is None or p.first > len(raw):
        return hints
    i = np.arange(p.first, len(raw) + 1)
    above = raw[i - p.unit]
    hints[p.first:] = med(raw[i - p.pixel], above, raw[i - p.unit - p.pixel]) if p.pixel else above
    return hints


def predict_next(buf: bytes | bytearray, p: Predictor) -> int:
    """The hint for the byte after `buf` (the bytes of the file so far), as `stride_hints` gives it."""
    n = len(buf)
    if n < p.first:
        return -1
    if not p.pixel:
        return buf[n - p.unit]
    return int(med(buf[n - p.pixel], buf[n - p.unit], buf[n - p.unit - p.pixel]))


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
