"""The built-in conversions: paired tasks whose right output is known exactly, so that a model
trained on pairs can be measured on how well it follows its input.

Each needs the whole input and is picked by the pair (input modality, target modality):

* `upper`, text -> text: ASCII `a`-`z` become `A`-`Z`; every other byte is unchanged. Inputs: UTF-8
  lines or short paragraphs, up to 256 bytes.
* `hex`, binary -> text: the input's bytes as lowercase two-digit hex, 16 bytes a line separated by
  one space, `\\n` after each line (the last line may be shorter). Inputs: up to 128 bytes that
  `obf.formats.sniff` calls binary.
* `gray`, image -> image: a 24-bit BMP of the same size in which every pixel is (L, L, L), L being
  Pillow's `convert("L")` of that pixel. Inputs: opaque images up to 16x16.
* `ascii`, image -> text: one character per pixel from `RAMP` (index L * 10 // 256), top row
  first, `\\n` after each row. Inputs: as for `gray`.

Where each target byte reads its input (`input_offsets`): a byte-level model places the query of
target byte t at one input byte, and exact distances from there reach what it needs. `upper` and
`gray` keep offsets (byte t reads byte t); `hex` character t reads the byte it encodes
(line * 16 + column // 3); `ascii` character t reads its pixel (BMP rows are stored bottom-up).
Any other pair of modalities reads at the same offset. A target's end (hex's last newline, the
EOS of each) reads the end marker after the input, where the model has one (`model.input_end`):
upper and gray targets are as long as their inputs, so their EOS reaches it at its own offset.

An image input is first made the canonical 24-bit BMP the model reads (`obf.formats.image_to_bmp`),
fitted into 16x16 as ingest fits images into `ingest.image_max_side`: that resize is documented
and deliberate. A text or binary input over its limit, or an image with transparency, is refused
with a one-line error naming the limit: nothing is ever cut silently. Imports no torch.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from obf.formats.canonical import image_to_bmp
from obf.formats.layouts import bmp_layout
from obf.formats.sniff import FormatError, sniff

RAMP = b" .:-=+*#%@"
MAX_SIDE = 16  # images are fitted into MAX_SIDE x MAX_SIDE pixels
HEX_PER_LINE = 16


@dataclass(frozen=True)
class Conversion:
    """One built-in conversion: its name, the modalities it maps, and the exact function."""

    name: str
    source: str  # input modality
    target: str  # target modality
    limit: str  # what inputs it takes, in words (for errors and --help)
    convert: Callable[[bytes], bytes]  # canonical input -> target bytes
    prepare: Callable[[bytes], bytes]  # any input of `source` -> the canonical input, or FormatError
    # (input, target offsets (n,)) -> the input offset each target byte reads (n,); None: the same offset
    reads: Callable[[bytes, np.ndarray], np.ndarray] | None = None


def _upper(data: bytes) -> bytes:
    return data.upper()  # bytes.upper changes ASCII a-z only, whatever else the bytes hold


def _hex(data: bytes) -> bytes:
    lines = [data[i:i + HEX_PER_LINE].hex(" ") + "\n" for i in range(0, len(data), HEX_PER_LINE)]
    return "".join(lines).encode()


def _luma(bmp: bytes) -> tuple[int, int, bytes]:
    """(width, height, L per pixel, top row first) of a canonical 24-bit BMP."""
    from PIL import Image

    with Image.open(io.BytesIO(bmp)) as im:
        gray = im.convert("RGB").convert("L")
        return gray.width, gray.height, gray.tobytes()


def _gray(bmp: bytes) -> bytes:
    """The input's own header, then its rows (as stored: bottom-up, padded) with every pixel (L, L, L)."""
    lay = bmp_layout(bmp)
    assert lay is not None and lay.bpp == 24
    w, h, lum = _luma(bmp)
    pad = bytes(lay.stride - 3 * w)
    stored = range(h - 1, -1, -1) if lay.height > 0 else range(h)  # image rows in the order the file stores them
    rows = (bytes(v for v in lum[r * w:(r + 1) * w] for _ in range(3)) + pad for r in stored)
    return bmp[:lay.offset] + b"".join(rows)


def _ascii(bmp: bytes) -> bytes:
    w, h, lum = _luma(bmp)
    rows = (bytes(RAMP[v * len(RAMP) // 256] for v in lum[r * w:(r + 1) * w]) + b"\n" for r in range(h))
    return b"".join(rows)


def _hex_reads(data: bytes, t: np.ndarray) -> np.ndarray:
    """Hex character t reads the byte it encodes; the last newline, EOS and anything after read
    past the input (offset len(data): its end marker, or its last byte; `input_offsets`)."""
    line, col = np.divmod(t, 3 * HEX_PER_LINE)  # a full line: "xx " x 15 + "xx\n"
    return np.where(t >= 3 * len(data) - 1, len(data), line * HEX_PER_LINE + col // 3)


def _ascii_reads(bmp: bytes, t: np.ndarray) -> np.ndarray:
    """Character t reads the first byte of its pixel in the BMP (a row's `\n` the byte after its
    last pixel); EOS and anything after read past the input (offset len(bmp)). Same offset where
    `bmp` is no 24-bit BMP."""
    lay = bmp_layout(bmp)
    if lay is None or lay.bpp != 24:
        return t
    row, col = np.divmod(t, lay.width + 1)  # image rows top first, `\n` at col == width
    stored = lay.rows - 1 - row if lay.height > 0 else row  # the row's place in the file
    at = lay.offset + stored * lay.stride + 3 * col
    return np.where(row < lay.rows, at, len(bmp))


def input_offsets(source: str, target: str, data: bytes, t: np.ndarray, end: bool = False) -> np.ndarray:
    """(n,) int64: the offset in `data` (an input of modality `source`, as the model reads it) that
    each target byte at offsets `t` (n,) of modality `target` reads, by the built-in conversion of
    the pair (the module doc); the same offset for a pair without one or a conversion that keeps
    offsets. What reads past the input reads offset len(data) where the source has an end marker
    after the input (`end`, `model.input_end`), else the input's last byte."""
    t = np.asarray(t, dtype=np.int64)
    c = conversion_for(source, target)
    if c is None or c.reads is None or not data:
        return t
    return np.minimum(c.reads(data, t), len(data) - 1 + int(end)).astype(np.int64)


def _sized(limit: int, what: str) -> Callable[[bytes], bytes]:
    def check(data: bytes) -> bytes:
        if not data:
            raise FormatError(f"the input is empty; the conversion takes {what}")
        if len(data) > limit:
            raise FormatError(f"the input is {len(data)} bytes; the conversion takes {what}")
        return data
    return check


def _text_input(data: bytes) -> bytes:
    data = _sized(256, "text of 1 to 256 bytes")(data)
    if sniff(data).modality != "text":
        raise FormatError("the input is not text; `upper` takes UTF-8 text of 1 to 256 bytes")
    return data


def _binary_input(data: bytes) -> bytes:
    data = _sized(128, "binary data of 1 to 128 bytes")(data)
    if sniff(data).modality != "binary":
        raise FormatError("the input is not binary data (obf sniffs it as "
                          f"{sniff(data).modality}); `hex` takes 1 to 128 bytes of binary data")
    return data


def _image_input(data: bytes) -> bytes:
    """Any Pillow-readable opaque image -> the canonical 24-bit BMP, fitted into 16x16."""
    bmp = image_to_bmp(data, MAX_SIDE)
    lay = bmp_layout(bmp)
    if lay is None or lay.bpp != 24:
        raise FormatError("the image has transparency; the image conversions take opaque images "
                          f"(fitted into {MAX_SIDE}x{MAX_SIDE})")
    return bmp


_IMAGES = f"opaque images, fitted into {MAX_SIDE}x{MAX_SIDE} pixels"
CONVERSIONS: dict[str, Conversion] = {
    c.name: c for c in (
        Conversion("upper", "text", "text", "UTF-8 text of 1 to 256 bytes", _upper, _text_input),
        Conversion("hex", "binary", "text", "1 to 128 bytes of binary data", _hex, _binary_input, _hex_reads),
        Conversion("gray", "image", "image", _IMAGES, _gray, _image_input),
        Conversion("ascii", "image", "text", _IMAGES, _ascii, _image_input, _ascii_reads),
    )
}


def conversion_for(source: str, target: str) -> Conversion | None:
    """The built-in conversion from `source` to `target` modality, or None (user pairs of other
    modalities are still trained and generated; they just have no known right answer)."""
    for c in CONVERSIONS.values():
        if (c.source, c.target) == (source, target):
            return c
    return None


def convert(name: str, data: bytes) -> tuple[bytes, bytes]:
    """(canonical input, target) of conversion `name` for any input it takes; FormatError otherwise."""
    try:
        c = CONVERSIONS[name]
    except KeyError:
        raise FormatError(f"unknown conversion {name!r}; expected one of {', '.join(CONVERSIONS)}") from None
    canon = c.prepare(data)
    return canon, c.convert(canon)
