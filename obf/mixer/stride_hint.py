"""The stride hint: a media byte predicted from the bytes before it in the file's layout (the
rows, samples or frames before), with a learned spread of bias around its value.

The stride is what the header declares (`obf.generate.planning.layout`): a BMP row, a WAV sample
frame, a Y4M frame. Video takes, inside each plane of a frame, the median edge detector (below)
or the same byte of the frame before, whichever erred less at the byte's neighbours left (twice),
above, above-left and above-right, as LOCO-I picks its context from the gradients around a pixel:
a still background keeps the frame before, a moving edge the detector; the same byte of the frame
before on a plane's first row and column and the frame marker. Residual entropy on the validation
clip: 4.29 bits with the frame before alone, 2.82 with the detector, 2.78 choosing (the training
clips: 5.10, 4.47, 4.32); its bits per byte under the model 3.57 with the frame before, 3.11 with
the detector (the corpus clips move too much from one 32x32 frame to the next for the pixel before
in time to predict well), 3.08 choosing. 8-bit audio (obf's canonical form) takes
the linear prediction of each sample from the ones before it in its channel (`obf.mixer.lpc`:
residual entropy on the validation WAVs 3.72 bits with the previous sample, 3.02 with it;
validation audio under the model 2.82 to 2.40 bits per byte); wider audio the same byte of the
previous sample frame. Images take the median edge detector of JPEG-LS (LOCO-I) over the same
channel of the pixels left, above and upper-left, which predicts natural images better than the
pixel above alone (0.3-0.5 bits lower residual entropy on the corpus photos); a pixel's green and
red bytes then add what the detector got wrong on the channel before them in the same pixel (blue,
green), as lossless colour coders predict one component from another: the channels of a pixel err
together (exactly so in a grey picture stored as 24-bit colour, where the correction makes the hint
the byte itself; residual entropy 4.2 to 2.5 bits on the validation pictures, and their bits per
byte under the model 2.43 to 1.99).

Why: a 32x32 Y4M frame is 1.5 KB, so the previous frame lies beyond the 512-byte encoder; a
64-pixel BMP row is 192 bytes, which the network sees but, after minutes of CPU training, uses
poorly. Values near the prediction are likely, not only the value itself, so the bias is a
kernel over the offset: `K[modality, activity, v - hint]` is added to the logit of every byte
value v within `RADIUS` of the hint. How far bytes stray from the hint depends on where in the
file they are (a flat sky against fur, silence against speech), so the kernel is chosen by the
hint's recent errors nearby, as JPEG-LS picks its context from local gradients: `activity`
buckets a weighted sum of |byte - hint| at the neighbours before it (left, above, above-left,
above-right and two further left for images and video; the three previous sample frames for
audio). Measured: benchmarks/README.md ("The mixer"). Text, binary and files without a readable
header get no hint.

Numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from obf.core.vocab import MODALITIES, N_BYTES
from obf.formats.layouts import bmp_layout, layout, wav_layout, y4m_frame_size, y4m_planes
from obf.mixer import lpc

RADIUS = 16  # byte values within this distance of the hint get a bias
OFFSETS = np.arange(-RADIUS, RADIUS + 1)
ACTIVITY_BUCKETS = 12  # floor(1.2 * log2(1 + weighted error sum)), capped


@dataclass(frozen=True)
class Predictor:
    """Where a media file's bytes are predicted from: `header` bytes, then strides of `unit`
    bytes (row, sample frame, frame); `pixel` bytes per pixel for an image (its left neighbour),
    0 for audio and video (one stride back, where `linear` or `planes` predict no better)."""

    header: int
    unit: int
    pixel: int = 0
    near: int = 1  # bytes back to the previous byte of the same channel and row
    row: int = 0  # an image's pixel bytes per row (the rest of `unit` is padding)
    linear: bool = False  # 8-bit audio: each channel's samples by linear prediction (`obf.mixer.lpc`)
    planes: tuple[tuple[int, int, int], ...] = ()  # video: (start, end, width) of each plane in a frame

    def plane_at(self, i: int) -> tuple[int, int]:
        """(offset, width) of video position i in its frame's plane; (0, 0) outside the planes."""
        r = (i - self.header) % self.unit
        for start, end, width in self.planes:
            if start <= r < end:
                return r - start, width
        return 0, 0

    def corrected(self, i: Any) -> Any:
        """Whether position i (an int, or an array of them) of an image is a pixel's green or red
        byte, whose hint adds the error of the channel before it (blue, green) in the same pixel;
        never the alpha byte or padding. Images only (`pixel` > 0)."""
        r = (i - self.header) % self.unit
        return (r < self.row) & (r % self.pixel >= 1) & (r % self.pixel <= 2)

    @property
    def first(self) -> int:
        """The first position with a hint."""
        return self.header + self.unit + self.pixel

    @property
    def neighbours(self) -> tuple[tuple[int, int], ...]:
        """(bytes back, weight) of the earlier positions whose hint errors make the activity:
        in a plane (images, video) left twice, above, above-left, above-right and two further
        left; along a signal (audio) the previous sample frame and the one before it twice,
        the third once. All at least one byte back."""
        c, u = self.near, self.unit
        if self.near == self.unit:  # audio: one dimension
            return ((c, 2), (2 * c, 2), (3 * c, 1))
        return ((c, 2), (u, 1), (u + c, 1), (u - c, 1), (2 * c, 1), (3 * c, 1))


def predictor_of(data: bytes, modality: str) -> Predictor | None:
    """The predictor of a canonical media file, from its header; None for text, binary and
    headers obf cannot read."""

    lay = layout(bytes(data), modality)
    if lay is None:
        return None
    bmp = bmp_layout(bytes(data[:64])) if modality == "image" else None
    pixel = bmp.bpp // 8 if bmp else 0
    near = pixel or (lay.unit if modality == "audio" else 1)
    wav = wav_layout(bytes(data[:lay.header])) if modality == "audio" else None
    return Predictor(lay.header, lay.unit, pixel, near, bmp.width * pixel if bmp else 0, bool(wav and wav.width == 1),
                     _planes(bytes(data[:lay.header])) if modality == "video" else ())


def _planes(header: bytes) -> tuple[tuple[int, int, int], ...]:
    """(start, end, width) of the Y, U and V planes of a 4:2:0 Y4M frame (`y4m_planes`)."""
    size = y4m_frame_size(header.split(b"\n", 1)[0])
    assert size is not None, "a video predictor needs a readable Y4M header"
    return y4m_planes(*size[:2])


def med(left: np.ndarray | int, above: np.ndarray | int, corner: np.ndarray | int) -> np.ndarray | int:
    """JPEG-LS's median edge detector: min(left, above) below an edge, max above one, else the
    plane through the three neighbours (left + above - corner)."""
    lo, hi = np.minimum(left, above), np.maximum(left, above)
    return np.where(corner >= hi, lo, np.where(corner <= lo, hi, left + above - corner))


def _hints(raw: np.ndarray, p: Predictor) -> np.ndarray:
    """(n+1,) the hint of every position 0..n of the bytes `raw` (n,), -1 before `p.first`."""
    n = len(raw)
    hints = np.full(n + 1, -1, dtype=np.int64)
    if p.first <= n:
        if p.linear:
            for c in range(p.unit):  # each channel's samples: positions header + c + unit * t
                start = p.header + c
                hints[start::p.unit] = lpc.hints(raw[start::p.unit])[:len(hints[start::p.unit])]
            return hints
        i = np.arange(p.first, n + 1)
        above = raw[i - p.unit]
        if not p.pixel:
            hints[p.first:] = above
            if p.planes:
                _video_hints(raw, p, i, hints)
            return hints
        base = med(raw[i - p.pixel], above, raw[i - p.unit - p.pixel])  # (n+1-first,) the detector alone
        fix = np.flatnonzero(p.corrected(i))
        base_error = raw[i[fix] - 1] - base[fix - 1]  # the detector's error on the channel before, same pixel
        hints[p.first:] = base
        hints[i[fix]] = np.clip(base[fix] + base_error, 0, 255)
    return hints


def _video_hints(raw: np.ndarray, p: Predictor, i: np.ndarray, hints: np.ndarray) -> None:
    """Video's hints inside each plane (away from its first row and column, which keep the frame
    before), written into `hints` (n+1,): the frame before's byte where it erred less than the
    detector in the frame at the causal neighbours (`_select_neighbours`), else the detector.
    `i` (m,) the hinted positions."""
    n = len(raw)
    r = (i - p.header) % p.unit
    inner = [i[(r - start >= width) & (r < end) & ((r - start) % width > 0)] for start, end, width in p.planes]
    detector = np.full(n + 1, -1, dtype=np.int64)  # the detector's guess at each plane's inner positions
    for j, (_, _, width) in zip(inner, p.planes):
        detector[j] = med(raw[j - 1], raw[j - width], raw[j - width - 1])
    err_before = np.zeros(n, dtype=np.int64)  # |byte - the frame before's| (0 in the first frame)
    err_before[p.unit:] = np.abs(raw[p.unit:] - raw[:-p.unit])
    err_detector = np.where(detector[:n] >= 0, np.abs(raw - detector[:n]), err_before)  # edges: the frame before
    for j, (start, _, width) in zip(inner, p.planes):
        col = ((j - p.header) % p.unit - start) % width
        score_before, score_detector = np.zeros(len(j), np.int64), np.zeros(len(j), np.int64)
        for back, weight, right in _select_neighbours(width):
            ok = col + right < width  # above-right: not past the row's end
            score_before[ok] += weight * err_before[j[ok] - back]
            score_detector[ok] += weight * err_detector[j[ok] - back]
        hints[j] = np.where(score_before < score_detector, raw[j - p.unit], detector[j])


def _select_neighbours(width: int) -> tuple[tuple[int, int, int], ...]:
    """(bytes back, weight, columns right) of the causal neighbours in a plane whose errors choose
    a video byte's hint: left twice, above, above-left and above-right."""
    return (1, 2, 0), (width, 1, 0), (width + 1, 1, 0), (width - 1, 1, 1)


def _errors(raw: np.ndarray, hints: np.ndarray) -> np.ndarray:
    """(n,) |byte - hint| of every byte, 0 where it has no hint."""
    n = len(raw)
    return np.where(hints[:n] >= 0, np.abs(raw - hints[:n]), 0)


def activity_bucket(error_sum: np.ndarray | int) -> np.ndarray:
    """The kernel's activity bucket of a weighted sum of hint errors."""
    return np.minimum(np.floor(1.2 * np.log2(1.0 + np.asarray(error_sum))), ACTIVITY_BUCKETS - 1).astype(np.int64)


def stride_hints(data: bytes | np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The predicted byte for every position 0..n of `data` -> (n+1,) int64, -1 where none
    (text, binary, no header, the header and the first stride); and each position's activity
    bucket (n+1,) int64, from |byte - hint| at its `Predictor.neighbours` (0 where they have none)."""
    raw = np.frombuffer(bytes(data), np.uint8).astype(np.int64)
    n = len(raw)
    activity = np.zeros(n + 1, dtype=np.int64)
    p = predictor_of(bytes(data), modality)
    if p is None or p.first > n:
        return np.full(n + 1, -1, dtype=np.int64), activity
    hints = _hints(raw, p)
    err = _errors(raw, hints)
    total = np.zeros(n + 1, dtype=np.int64)
    for back, weight in p.neighbours:
        total[back:] += weight * err[:n + 1 - back]
    activity[p.first:] = activity_bucket(total[p.first:])
    return hints, activity


def predict_next(buf: bytes | bytearray, p: Predictor, streams: list[lpc.Stream] | None = None) -> int:
    """The hint for the byte after `buf` (the bytes of the file so far), as `stride_hints` gives it;
    `streams`: one per channel of linearly predicted audio, which keep their weights between calls."""
    n = len(buf)
    if n < p.first:
        return -1
    if p.linear:
        assert streams is not None, "linear prediction needs its streams"
        c, t = (n - p.header) % p.unit, (n - p.header) // p.unit  # the channel and its sample
        lo = p.header + c + p.unit * max(0, t - lpc.WINDOW - lpc.ORDER - lpc.EVERY)
        return streams[c].hint(t, buf[lo:n:p.unit])
    if not p.pixel:
        q, width = p.plane_at(n)
        if width and q >= width and q % width:  # video, in-frame (`_video_hints`)
            return _video_at(buf, n, p.unit, q, width)
        return buf[n - p.unit]
    hint = _med_at(buf, n, p.pixel, p.unit)
    if p.corrected(n):
        hint = min(max(hint + buf[n - 1] - _med_at(buf, n - 1, p.pixel, p.unit), 0), 255)
    return hint


def _video_at(buf: bytes | bytearray, n: int, unit: int, q: int, width: int) -> int:
    """`_video_hints` at inner position n, offset q in a plane `width` wide of frames `unit` bytes
    apart, on ints (its neighbours lie in the same plane, at offset q - back)."""
    score_before = score_detector = 0
    for back, weight, right in _select_neighbours(width):
        if q % width + right >= width:
            continue
        k, kq = n - back, q - back
        before = abs(buf[k] - buf[k - unit])
        score_before += weight * before
        score_detector += weight * (abs(buf[k] - _med_at(buf, k, 1, width)) if kq >= width and kq % width else before)
    return buf[n - unit] if score_before < score_detector else _med_at(buf, n, 1, width)


def _med_at(buf: bytes | bytearray, n: int, left_back: int, above_back: int) -> int:
    """`med` of position n's neighbours `left_back` and `above_back` bytes back (and both) on three
    ints, without numpy (a decode step's cost)."""
    left, above, corner = buf[n - left_back], buf[n - above_back], buf[n - above_back - left_back]
    lo, hi = min(left, above), max(left, above)
    return lo if corner >= hi else hi if corner <= lo else left + above - corner


class StrideState:
    """The stride hint and activity of the next byte of a file being written, kept byte by byte
    (generation); equal to `stride_hints` of the whole file at every position."""

    def __init__(self, context: bytes, p: Predictor) -> None:
        self.p = p
        self.buf = bytearray(context)
        raw = np.frombuffer(bytes(context), np.uint8).astype(np.int64)
        self.err = _errors(raw, _hints(raw, p)).tolist()  # |byte - hint| of every byte so far
        self.streams = [lpc.Stream() for _ in range(p.unit)] if p.linear else None
        self.hint = predict_next(self.buf, p, self.streams)

    def predict(self) -> tuple[int, int]:
        """(hint, activity bucket) of the next byte; (-1, 0) before the first hinted position."""
        if self.hint < 0:
            return -1, 0
        n, err = len(self.buf), self.err
        total = sum(w * err[n - back] for back, w in self.p.neighbours if back <= n)
        return self.hint, min(math.floor(1.2 * math.log2(1.0 + total)), ACTIVITY_BUCKETS - 1)  # `activity_bucket`

    def update(self, byte: int) -> None:
        self.err.append(abs(byte - self.hint) if self.hint >= 0 else 0)
        self.buf.append(byte)
        self.hint = predict_next(self.buf, self.p, self.streams)


def window(logits: np.ndarray, hints: np.ndarray) -> np.ndarray:
    """Logits (K, V) at the byte values hint + OFFSETS of K hinted rows -> (K, 2R+1), -inf where
    the value is not a byte."""
    ids = hints[:, None] + OFFSETS[None, :]
    ok = (ids >= 0) & (ids < N_BYTES)
    return np.where(ok, np.take_along_axis(logits, np.clip(ids, 0, N_BYTES - 1), axis=-1), -np.inf)


@dataclass(frozen=True)
class StrideKernel:
    """Bias per (modality, activity bucket, value - hint) for values within RADIUS of the hint."""

    weights: np.ndarray  # (len(MODALITIES), ACTIVITY_BUCKETS, 2 * RADIUS + 1) float64

    @staticmethod
    def zeros() -> StrideKernel:
        return StrideKernel(np.zeros((len(MODALITIES), ACTIVITY_BUCKETS, len(OFFSETS))))

    def apply(self, logits: np.ndarray, hints: np.ndarray, activity: np.ndarray,
              modality_ids: np.ndarray) -> np.ndarray:
        """Logits (..., V) with the kernel added around each position's hint (hint -1: unchanged).
        hints, activity and modality_ids broadcast to the leading shape (...)."""
        out = np.array(logits, dtype=np.float32, copy=True)
        at = np.nonzero(hints >= 0)
        if not len(at[0]):
            return out
        h = hints[at]
        ids = h[:, None] + OFFSETS[None, :]  # (K, 2R+1)
        ok = (ids >= 0) & (ids < N_BYTES)
        k = self.weights[np.broadcast_to(modality_ids, hints.shape)[at],
                         np.broadcast_to(activity, hints.shape)[at]]  # (K, 2R+1)
        rows = out[at]  # (K, V) copy
        np.add.at(rows, (np.arange(len(h))[:, None].repeat(len(OFFSETS), 1)[ok], ids[ok]), k[ok].astype(np.float32))
        out[at] = rows
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"radius": RADIUS, "activity_buckets": ACTIVITY_BUCKETS, "audio": lpc.settings(),
                "weights": {m: np.round(self.weights[i], 6).tolist() for i, m in enumerate(MODALITIES)}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> StrideKernel:
        """The kernel of a saved mixer; one saved by an obf without activity buckets (one kernel per
        modality) serves unchanged, the same kernel in every bucket. One saved before audio's linear
        prediction and video's in-frame detector (no "audio" settings; its audio and video kernels
        were fitted around the sample and frame before) serves with them: the same spread around
        a closer hint."""
        if d.get("radius") != RADIUS:
            raise ValueError("stride kernel was made with another radius than this obf uses")
        if d.get("audio", lpc.settings()) != lpc.settings():
            raise ValueError("stride kernel was made with another audio predictor than this obf uses")
        if d.get("activity_buckets", 1) not in (1, ACTIVITY_BUCKETS):
            raise ValueError("stride kernel was made with other activity buckets than this obf uses")
        w = np.array([d["weights"][m] for m in MODALITIES], dtype=np.float64)
        if w.ndim == 2:
            w = np.repeat(w[:, None, :], ACTIVITY_BUCKETS, axis=1)
        return StrideKernel(w)


def _fit_cell(p: np.ndarray, came: np.ndarray, center: np.ndarray, prior: float, iterations: int) -> np.ndarray:
    """One kernel row on K positions: p (K, 2R+1) the window probabilities before it, came (K, 2R+1)
    one-hot of the byte that came (all zero: outside the window). With q_d the mixed probability of
    hint + d, d/dK_d = [came = d] - q_d; Newton steps on the diagonal, pulled toward `center`."""
    k = center.copy()
    for _ in range(iterations):
        e = p * np.exp(k)
        q = e / (1.0 + (e - p).sum(axis=1, keepdims=True))
        g = (came - q).sum(axis=0) - prior * (k - center)
        h = (q * (1.0 - q)).sum(axis=0) + prior
        k += np.clip(g / h, -1.0, 1.0)
    return k


def fit_kernel(modality_ids: np.ndarray, activity: np.ndarray, window_lp: np.ndarray, offset: np.ndarray,
               iterations: int = 100, prior: float = 1.0) -> StrideKernel:
    """The kernel that maximises the mixed log-likelihood of K hinted positions: `activity` (K,)
    their buckets, `window_lp` (K, 2R+1) the log-probabilities (before the kernel) of hint + OFFSETS,
    `offset` (K,) the index in OFFSETS of the byte that came (-1: outside the window or EOS).
    Per modality first, pulled toward 0 by `prior`; then per activity bucket, pulled toward its
    modality's kernel, so a bucket with few positions keeps what the modality has."""
    kernel = StrideKernel.zeros()
    zero = np.zeros(len(OFFSETS))
    for m in range(len(MODALITIES)):
        sel = np.flatnonzero(modality_ids == m)
        if not len(sel):
            continue
        p = np.exp(window_lp[sel])  # (K, 2R+1)
        came = np.zeros_like(p)
        hit = np.flatnonzero(offset[sel] >= 0)
        came[hit, offset[sel][hit]] = 1.0
        pooled = _fit_cell(p, came, zero, prior, iterations)
        kernel.weights[m] = pooled
        for a in np.unique(activity[sel]):
            cell = activity[sel] == a
            kernel.weights[m, a] = _fit_cell(p[cell], came[cell], pooled, prior, iterations)
    return kernel
