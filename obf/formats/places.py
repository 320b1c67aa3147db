"""Where a byte of a canonical media file lies in its layout, as ids the decoder reads
(`model.layout_input`).

A byte-level network sees distances, not geometry: 512 bytes into an image it cannot tell which
channel of a pixel it writes or how far back the row above lies, and 512 bytes into a Y4M frame
it cannot tell a luma byte from a chroma one (the header that says so is long gone). The mixer's
stride hint works that out from the header for its own guess (`obf.mixer.stride_hint`); these
ids give the network the same facts as input, so that it can learn what to do with them. Each
target byte gets three ids (`SLOTS`):

- its phase: 0 for a byte outside a known layout (text, binaries, headers, a file whose header
  is not one obf writes); a BMP byte's channel (1 + column % bytes per pixel); a Y4M byte's part of
  the frame (its FRAME marker, Y, U, V); a WAV byte's place in its sample frame;
- the byte one row up (BMP and each Y4M plane), or `NO_BYTE` where there is none;
- the byte at the same place one frame back (Y4M), or `NO_BYTE`.

Both neighbours lie before the byte itself, so the ids of position `a` depend on the bytes before
`a` only: a decoder can read them at every step of generation as in training. Imports no torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from obf.formats.layouts import Y4M_FRAME, bmp_layout, wav_layout, y4m_header, y4m_planes

SLOTS = 3  # phase, the byte one row up, the byte one frame back
NO_BYTE = 256  # a neighbour that does not exist (first row, first frame, no layout)
BMP_PHASE, Y4M_PHASE, WAV_PHASE = 1, 5, 9  # first phase id of each format
PHASES = 17  # 0, BMP channels 1-4, Y4M marker / Y / U / V 5-8, WAV byte of sample frame 9-16
NEIGHBOURS = NO_BYTE + 1  # ids of a neighbour slot: a byte or NO_BYTE
TABLE_ROWS = PHASES + 2 * NEIGHBOURS  # one embedding table for all three slots (`SLOT_OFFSETS`)
SLOT_OFFSETS = np.array([0, PHASES, PHASES + NEIGHBOURS], np.int64)  # each slot's first row in that table
NO_PLACE = np.array([0, NO_BYTE, NO_BYTE], np.int64)  # the ids of a byte outside any layout
HEAD = 4096  # bytes of a file's start that hold any header `places_of` reads


@dataclass(frozen=True)
class Places:
    """The geometry of one file: its units start at `origin` and repeat every `unit` bytes. BMP: a
    unit is a row, of `pixel` bytes per pixel. Y4M: a unit is a frame (the marker,
    then a `width` x `height` luma plane and two half-size chroma planes). WAV: a unit is a sample
    frame of `unit` bytes."""

    kind: str  # "bmp", "y4m", "wav"
    origin: int
    unit: int
    pixel: int = 0  # BMP
    width: int = 0  # Y4M luma
    height: int = 0

    @functools.cached_property
    def planes(self) -> tuple[tuple[int, int, int], ...]:
        """Y4M: (start, end, row width) of each plane in a unit (`y4m_planes`), read once."""
        return y4m_planes(self.width, self.height)

    def ids(self, data: np.ndarray | bytes, offsets: np.ndarray) -> np.ndarray:
        """(n, SLOTS) int64 ids of the bytes at `offsets` (n,) of a file whose bytes before each
        offset are `data` (it may end at the last offset: only earlier bytes are read)."""
        buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else np.asarray(data)
        a = np.asarray(offsets, np.int64)
        out = np.tile(NO_PLACE, (len(a), 1))
        rel = a - self.origin
        inside = rel >= 0
        pos = rel % self.unit  # place inside the unit
        if self.kind == "bmp":
            out[:, 0] = np.where(inside, BMP_PHASE + np.minimum(pos % self.pixel, 3), 0)
            out[:, 1] = _before(buf, a, self.unit, inside & (rel >= self.unit))
        elif self.kind == "y4m":
            (y0, _, yw), (u0, _, cw), (v0, _, _) = self.planes
            plane = np.where(pos < y0, 0, np.where(pos < u0, 1, np.where(pos < v0, 2, 3)))  # 0: the marker
            out[:, 0] = np.where(inside, Y4M_PHASE + plane, 0)
            row = np.where(plane == 1, yw, cw)
            start = np.where(plane == 1, y0, np.where(plane == 2, u0, v0))  # the plane's first byte
            out[:, 1] = _before(buf, a, row, inside & (plane > 0) & (pos - row >= start))
            out[:, 2] = _before(buf, a, self.unit, inside & (rel >= self.unit))
        else:  # wav
            out[:, 0] = np.where(inside, WAV_PHASE + np.minimum(pos, 7), 0)
        return out

    def next_ids(self, held: bytes, made: bytes | bytearray) -> tuple[int, int, int]:
        """The ids of the byte that follows `held` + `made` (a context and what generation wrote
        after it): `ids` of that one offset, in plain Python, since generation asks once per
        row and step and numpy's per-call cost would be most of it."""
        n = len(held)
        at = n + len(made)
        rel = at - self.origin
        if rel < 0:
            return 0, NO_BYTE, NO_BYTE

        def byte(i: int) -> int:
            return made[i - n] if i >= n else held[i]

        pos = rel % self.unit
        if self.kind == "bmp":
            return BMP_PHASE + min(pos % self.pixel, 3), byte(at - self.unit) if rel >= self.unit else NO_BYTE, NO_BYTE
        if self.kind == "wav":
            return WAV_PHASE + min(pos, 7), NO_BYTE, NO_BYTE
        plane, start, row = 0, 0, 0
        for k, (first, end, width) in enumerate(self.planes, 1):
            if first <= pos < end:
                plane, start, row = k, first, width
        up = byte(at - row) if plane > 0 and pos - row >= start else NO_BYTE
        back = byte(at - self.unit) if rel >= self.unit else NO_BYTE
        return Y4M_PHASE + plane, up, back


def _before(buf: np.ndarray, a: np.ndarray, back: np.ndarray | int, ok: np.ndarray) -> np.ndarray:
    """(n,) the byte `back` before each offset where `ok` and it lies in `buf`, else NO_BYTE."""
    at = a - back
    ok = ok & (at >= 0) & (at < len(buf))
    return np.where(ok, buf[np.clip(at, 0, max(len(buf) - 1, 0))].astype(np.int64) if len(buf) else NO_BYTE, NO_BYTE)


def places_of(head: bytes, modality: str) -> Places | None:
    """The geometry a canonical file's header declares (`head`: its first bytes, up to HEAD);
    None for text, binaries and headers obf does not write."""
    if modality == "image":
        lay = bmp_layout(head)
        return Places("bmp", lay.offset, lay.stride, pixel=lay.bpp // 8) if lay else None
    if modality == "audio":
        wav = wav_layout(head)
        return Places("wav", wav.offset, wav.block) if wav else None
    if modality == "video":
        y4m = y4m_header(head)
        if y4m is None:
            return None
        origin, (w, h, _, frame) = y4m
        return Places("y4m", origin, len(Y4M_FRAME) + frame, width=w, height=h)
    return None


def place_ids(data: np.ndarray | bytes, modality: str, offsets: np.ndarray) -> np.ndarray:
    """(n, SLOTS) ids of the bytes at `offsets` of a file whose bytes before them are `data`:
    `NO_PLACE` for every byte of a file without a layout."""
    places = places_of(bytes(data[:HEAD]), modality)
    if places is None:
        return np.tile(NO_PLACE, (len(offsets), 1))
    return places.ids(data, offsets)
