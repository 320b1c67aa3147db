"""Declared layouts of the canonical media forms: header + units (BMP rows, WAV sample frames,
Y4M frames), and the header fields that declare them.

Generation plans whole files from them (`obf.generate.planning`) and the mixer's stride hint
reads the geometry from them (`obf.mixer.stride_hint`). Imports no torch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from obf.formats.sniff import FormatError

V4_HEADER = 108  # BITMAPV4HEADER: the smallest header whose bit fields carry an alpha mask
BI_RGB, BI_BITFIELDS = 0, 3


@dataclass(frozen=True)
class BmpLayout:
    """Where a BMP's pixels lie, from its header: `offset` bytes of header, then `rows` rows of
    `stride` bytes. `height` is signed as declared: positive rows are stored bottom-up."""

    offset: int
    width: int
    height: int
    bpp: int
    stride: int

    @property
    def rows(self) -> int:
        return abs(self.height)

    @property
    def size(self) -> int:
        """Bytes of the whole file the header declares."""
        return self.offset + self.stride * self.rows


def bmp_layout(data: bytes) -> BmpLayout | None:
    """The layout a BMP header declares, when it is one we write or repair (24-bit BI_RGB, 32-bit
    BI_RGB or BI_BITFIELDS; plausible sizes); None otherwise."""
    if data[:2] != b"BM" or len(data) < 34:
        return None
    offset, dib = struct.unpack_from("<II", data, 10)
    w, h, _, bpp, comp = struct.unpack_from("<iiHHI", data, 18)
    if dib not in (40, 52, 56, 108, 124) or not (0 < w <= 4096 and 0 < abs(h) <= 4096):
        return None
    if not ((bpp == 24 and comp == BI_RGB) or (bpp == 32 and comp in (BI_RGB, BI_BITFIELDS))):
        return None
    if not 14 + dib <= offset <= 14 + dib + 64:
        return None
    return BmpLayout(offset, w, h, bpp, ((w * bpp + 31) // 32) * 4)


def set_bmp_rows(data: bytes, rows: int) -> bytes:
    """The same BMP header (and pixels) declaring `rows` rows: height, image size and file size
    updated. A bottom-up image (positive height) grows at its top, a top-down one at its bottom."""
    lay = bmp_layout(data)
    if lay is None:
        raise FormatError("not a BMP header obf can resize")
    out = bytearray(data)
    struct.pack_into("<i", out, 22, rows if lay.height > 0 else -rows)
    struct.pack_into("<I", out, 34, lay.stride * rows)
    struct.pack_into("<I", out, 2, lay.offset + lay.stride * rows)
    return bytes(out)


@dataclass(frozen=True)
class WavLayout:
    """What a PCM WAV header declares: format fields, and where its data chunk starts and how
    many bytes it says it holds."""

    channels: int
    rate: int
    width: int  # bytes per sample
    offset: int  # first byte of the data chunk's payload
    size: int  # payload bytes the data chunk declares

    @property
    def block(self) -> int:
        return self.channels * self.width


def wav_layout(data: bytes) -> WavLayout | None:
    """The layout of a RIFF/WAVE prefix (plausible PCM fields, then a data chunk), or None."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fields = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt " and body + 16 <= len(data):
            tag, ch, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == 1 and 1 <= ch <= 8 and 1000 <= rate <= 192000 and bits in (8, 16, 24, 32):
                fields = (ch, rate, bits // 8)
        elif cid == b"data":
            return WavLayout(*fields, body, size) if fields else None
        if size > len(data):
            break
        pos = body + size + (size & 1)
    return None


def y4m_frame_size(header: bytes) -> tuple[int, int, int, int] | None:
    w = h = 0
    fps, chroma = 25, "420jpeg"
    for tok in header.split()[1:]:
        key, val = tok[:1], tok[1:].decode("ascii", "replace")
        try:
            if key == b"W":
                w = int(val)
            elif key == b"H":
                h = int(val)
            elif key == b"F":
                num, _, den = val.partition(":")
                fps = max(1, round(int(num) / max(1, int(den or 1))))
            elif key == b"C":
                chroma = val
        except ValueError:
            return None
    if not (2 <= w <= 4096 and 2 <= h <= 4096 and w % 2 == 0 and h % 2 == 0) or not chroma.startswith("420"):
        return None
    return w, h, fps, w * h * 3 // 2


Y4M_FRAME = b"FRAME\n"
MEDIA = ("image", "audio", "video")  # the modalities whose canonical files have a layout their header declares


@dataclass(frozen=True)
class MediaLayout:
    """A media file as header + `units` of `unit` bytes each (rows, sample frames, frames)."""

    header: int  # bytes before the first unit (a Y4M unit starts with its FRAME marker)
    unit: int
    units: int  # what the header declares (Y4M: the file's own frames, the last maybe partial)
    axis: str  # "row", "sample frame", "frame"

    @property
    def size(self) -> int:
        return self.header + self.unit * self.units


def _wav(data: bytes) -> MediaLayout | None:
    """Header + sample frames of a PCM WAV whose data chunk is its last (what obf writes)."""
    lay = wav_layout(data)
    return MediaLayout(lay.offset, lay.block, lay.size // lay.block, "sample frame") if lay else None


def y4m_planes(width: int, height: int) -> tuple[tuple[int, int, int], ...]:
    """(start, end, row width) of the Y, U and V planes of a 4:2:0 Y4M frame of `width` x `height`
    luma pixels, in bytes from the frame's start (its FRAME marker comes first): the one table the
    stride hint and the decoder's place ids read a frame by."""
    y, c = len(Y4M_FRAME) + width * height, width * height // 4
    return (len(Y4M_FRAME), y, width), (y, y + c, width // 2), (y + c, y + 2 * c, width // 2)


def y4m_header(data: bytes) -> tuple[int, tuple[int, int, int, int]] | None:
    """(bytes of the header line, its newline included; `y4m_frame_size` of it) of a 4:2:0 Y4M
    as obf writes it, or None."""
    end = data.find(b"\n", 0, 256)
    if not data.startswith(b"YUV4MPEG2") or end < 0:
        return None
    parsed = y4m_frame_size(data[:end])
    return None if parsed is None else (end + 1, parsed)


def _y4m(data: bytes) -> MediaLayout | None:
    """Header line + frames (each `FRAME\\n` + planes) of a 4:2:0 Y4M as obf writes it."""
    head = y4m_header(data)
    if head is None:
        return None
    header, parsed = head
    unit = len(Y4M_FRAME) + parsed[3]
    frames = max(1, -(-(len(data) - header) // unit))  # a cut last frame still counts
    return MediaLayout(header, unit, frames, "frame")


def _bmp(data: bytes) -> MediaLayout | None:
    lay = bmp_layout(data)
    return MediaLayout(lay.offset, lay.stride, lay.rows, "row") if lay else None


_LAYOUTS = {"image": _bmp, "audio": _wav, "video": _y4m}


def layout(data: bytes, modality: str) -> MediaLayout | None:
    """The declared layout of a canonical media file; None for text, binary and what obf can't read."""
    parse = _LAYOUTS.get(modality)
    return parse(data) if parse else None


def declared_size(data: bytes, modality: str) -> int | None:
    """Bytes a whole file of this header needs (None: text, binary, an unknown header)."""
    lay = layout(data, modality)
    return lay.size if lay else None
