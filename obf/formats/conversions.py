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

An image input is first made the canonical 24-bit BMP the model reads (`obf.formats.image_to_bmp`),
fitted into 16x16 as ingest fits images into `ingest.image_max_side`: that resize is documented
and deliberate. A text or binary input over its limit, or an image with transparency, is refused
with a one-line error naming the limit: nothing is ever cut silently. Imports no torch.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

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
        Conversion("hex", "binary", "text", "1 to 128 bytes of binary data", _hex, _binary_input),
        Conversion("gray", "image", "image", _IMAGES, _gray, _image_input),
        Conversion("ascii", "image", "text", _IMAGES, _ascii, _image_input),
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
