"""Files of a declared size: completion from a prefix and extension of a whole file (BMP, WAV, Y4M),
exact lengths and format-fixed bytes in the decode loop, and lossless canonical images (alpha)."""

import io
import struct
import wave

import av
import numpy as np
import pytest
from PIL import Image

from obf.core.config import IngestConfig
from obf.core.vocab import EOS, VOCAB_SIZE
from obf.formats.canonical import canonicalize
from obf.formats.layouts import bmp_layout, declared_size, layout
from obf.formats.repair import opens
from obf.generate.planning import complete, extend, plan
from obf.generate.sampling import RowSpec, SamplingOptions, generate

from .conftest import RAW

CFG = IngestConfig()


def canon(rel: str) -> bytes:
    return canonicalize((RAW / rel).read_bytes(), CFG)[0]


def bmp64() -> bytes:
    out = io.BytesIO()
    Image.open(RAW / "image/astronaut.png").convert("RGB").resize((64, 64)).save(out, format="BMP")
    return canonicalize(out.getvalue(), CFG)[0]


@pytest.mark.parametrize("rel,modality", [(None, "image"), ("audio/numbers.wav", "audio"),
                                          ("video/hubble_pan.y4m", "video")])
def test_completion_keeps_the_start_and_needs_exactly_the_declared_rest(rel, modality):
    data = bmp64() if rel is None else canon(rel)
    size = declared_size(data, modality)
    assert size == len(data)  # canonical files are whole
    p = complete(data, modality, len(data) // 3)
    assert data.startswith(p.keep) and len(p.keep) + p.length == size
    # the generated part filled with anything the format allows is a whole file that opens as is
    body = bytearray(b"\x55" * p.length)
    for off, b in p.fixed.items():
        body[off] = b
    assert opens(p.keep + bytes(body), modality)
    if modality == "video":  # every FRAME marker after the kept part is fixed, none is left to chance
        lay = layout(data, modality)
        started = -(-(len(p.keep) - lay.header) // lay.unit)  # frames whose marker lies in the kept part
        assert len(p.fixed) == 6 * (lay.units - started)
        assert (p.keep + bytes(body)).count(b"FRAME\n") == lay.units
    else:  # rows / sample frames are kept whole
        lay = layout(data, modality)
        assert (len(p.keep) - lay.header) % lay.unit == 0 and not p.fixed


def test_completion_never_drops_the_header():
    data = canon("audio/numbers.wav")
    assert len(complete(data, "audio", 3).keep) == 44
    assert plan(data, "audio", max_bytes=10, prefix_fraction=0.0).keep == data[:44]


def test_bmp_bottom_up_keeps_the_bottom_rows_and_says_so():
    data = bmp64()
    p = plan(data, "image", max_bytes=0, prefix_fraction=0.5)
    assert "bottom 32 of 64 rows kept" in p.note and "top 32 made by the model" in p.note
    filled = p.keep + bytes(range(256)) * (p.length // 256) + bytes(p.length % 256)
    with Image.open(io.BytesIO(data)) as a, Image.open(io.BytesIO(filled)) as b:
        assert b.size == (64, 64)
        assert a.crop((0, 32, 64, 64)).tobytes() == b.crop((0, 32, 64, 64)).tobytes()
        assert a.crop((0, 0, 64, 32)).tobytes() != b.crop((0, 0, 64, 32)).tobytes()


@pytest.mark.parametrize("rel,modality,unit_count", [
    (None, "image", lambda f: Image.open(io.BytesIO(f)).size[1]),
    ("audio/numbers.wav", "audio", lambda f: wave.open(io.BytesIO(f)).getnframes()),
    ("video/hubble_pan.y4m", "video", lambda f: len(list(av.open(io.BytesIO(f)).decode(video=0)))),
])
def test_extension_updates_the_header_to_cover_the_new_part(rel, modality, unit_count):
    data = bmp64() if rel is None else canon(rel)
    lay = layout(data, modality)
    p = extend(data, modality, 3 * lay.unit + lay.unit // 3)  # rounded to 3 rows / sample frames / frames
    assert p.length == 3 * lay.unit
    grown = p.keep + bytes(p.length)
    for off, b in p.fixed.items():
        grown = grown[:len(p.keep) + off] + bytes([b]) + grown[len(p.keep) + off + 1:]
    assert declared_size(grown, modality) == len(grown) == len(data) + 3 * lay.unit
    assert opens(grown, modality) and unit_count(grown) == unit_count(data) + 3
    assert p.keep[lay.header:] == data[lay.header:]  # the input's payload is kept unchanged
    assert extend(data, modality, 1).length == lay.unit  # at least one unit


def test_text_and_binary_have_no_declared_size():
    p = plan(b"hello world", "text", max_bytes=5, prefix_bytes=5)
    assert p.keep == b"hello" and p.length is None and declared_size(b"hello", "text") is None


class Scripted:
    """A backend whose logits always put EOS first and a fixed byte second, so the decode loop's
    own rules (exact lengths, fixed bytes, EOS masking) decide what comes out."""

    max_src_len, max_tgt_len, vocab_size, patch_size = 64, 8, VOCAB_SIZE, 1

    def __init__(self):
        self.fed: list[np.ndarray] = []

    def encode(self, src, align=None):
        return src.shape[0]

    def init_cache(self, memory):
        return None

    def step(self, tokens, memory, cache):
        self.fed.append(tokens.copy())
        logits = np.zeros((memory, VOCAB_SIZE), np.float32)
        logits[:, EOS], logits[:, ord("x")] = 10.0, 5.0
        return logits, cache


def test_rows_of_exact_length_never_end_early_and_fixed_bytes_are_fed_back():
    backend = Scripted()
    out = generate(backend, [b"a", b"b", b"c"], ["video", "text", "audio"], opts=SamplingOptions(max_bytes=4),
                   specs=[RowSpec(length=20, fixed={0: ord("F"), 9: ord("R")}), None, RowSpec(length=3)])
    assert out[0] == b"F" + b"x" * 8 + b"R" + b"x" * 10  # across three 8-byte decoder windows
    assert out[1] == b"" and out[2] == b"xxx"  # row 1 may end at EOS; row 2 may not
    assert backend.fed[1][0] == ord("F")  # the fixed byte is what the model saw next
    # rows that are done leave the batch at the next window
    assert [len(f) for f in backend.fed[8:]] == [1] * len(backend.fed[8:])


def test_two_images_differing_only_in_alpha_stay_distinct():
    a = Image.new("RGBA", (16, 16), (200, 30, 30, 255))
    b = a.copy()
    b.putpixel((3, 3), (200, 30, 30, 0))
    enc = []
    for im in (a, b):
        out = io.BytesIO()
        im.save(out, format="PNG")
        enc.append(canonicalize(out.getvalue(), CFG)[0])
    assert enc[0] != enc[1]
    assert bmp_layout(enc[0]).bpp == 24 and bmp_layout(enc[1]).bpp == 32  # opaque stays 24-bit
    with Image.open(io.BytesIO(enc[1])) as im:
        assert im.mode == "RGBA" and im.getpixel((3, 3))[3] == 0 and im.getpixel((0, 0))[3] == 255
    assert canonicalize(enc[1], CFG)[0] == enc[1]  # the canonical form is a fixed point
    assert struct.unpack_from("<I", enc[1], 14)[0] == 108  # a header whose masks carry alpha
