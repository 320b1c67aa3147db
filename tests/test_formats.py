"""Sniffing, canonical forms and bytes -> valid file, on the real files of data/raw."""

import io
import wave

import av
import pytest
from PIL import Image

from obf.core.config import IngestConfig
from obf.formats.canonical import canonicalize
from obf.formats.repair import opens, repair_bmp, repair_wav, repair_y4m, to_file
from obf.formats.sniff import sniff

from .conftest import RAW

EXPECTED = {
    "image/astronaut.png": ("image", "png"),
    "image/coffee.jpg": ("image", "jpeg"),
    "image/text.gif": ("image", "gif"),
    "image/coins.bmp": ("image", "bmp"),
    "image/chelsea.webp": ("image", "webp"),
    "image/moon.tif": ("image", "tiff"),
    "image/rocket.ppm": ("image", "pnm"),
    "image/camera.pgm": ("image", "pnm"),
    "audio/numbers.wav": ("audio", "wav"),
    "audio/alphabet.flac": ("audio", "flac"),
    "audio/hallo.ogg": ("audio", "ogg"),
    "audio/hola.mp3": ("audio", "mp3"),
    "video/astronaut_pan.mp4": ("video", "mp4"),
    "video/chelsea_pan.avi": ("video", "avi"),
    "video/coffee_pan.webm": ("video", "matroska"),
    "video/rocket_pan.mkv": ("video", "matroska"),
    "video/hubble_pan.y4m": ("video", "y4m"),
    "text/GPL-3.txt": ("text", "utf8"),
    "text/heapq.py": ("text", "utf8"),
    "text/Stocks.csv": ("text", "utf8"),
    "binary/true.elf": ("binary", "binary"),
    "binary/s1045.ima.gz": ("binary", "binary"),
    "binary/stdlib_sample.zip": ("binary", "binary"),
}


@pytest.mark.parametrize("rel, want", sorted(EXPECTED.items()))
def test_sniff_real_files(rel, want):
    s = sniff((RAW / rel).read_bytes())
    assert (s.modality, s.format) == want


def test_sniff_ignores_file_name_and_edge_cases(tmp_path):
    png = (RAW / "image/astronaut.png").read_bytes()
    assert sniff(png).modality == "image"  # whatever the name says
    assert sniff(b"").modality == "binary"
    assert sniff("héllo wörld\n".encode()).modality == "text"
    assert sniff(bytes(range(256)) * 4).modality == "binary"
    # a multi-byte character cut at the 64 KiB sniff window is still text
    assert sniff(("a" * 65535 + "é" * 10).encode()).modality == "text"
    # ingest's heads are one byte longer than the window; that byte is neither text nor a bad byte
    window = 1 << 16
    ok = bytearray(b"a" * window)
    ok[: window // 1000] = b"\x01" * (window // 1000)  # as many bad bytes as text allows
    for past in (b"a", b"\x01", b"\xc3", b"\xff"):
        assert sniff(bytes(ok) + past).modality == "text", past
        assert sniff(bytes(ok) + past + b"a" * 100).modality == "text", past
    assert sniff(b"\x01" + bytes(ok) + b"a").modality == "binary"  # one bad byte more, inside the window
    assert sniff(b"a" * (window - 4) + b"\xff" + b"aaaa").modality == "binary"  # not UTF-8, and not cut


def test_sniff_mov(tmp_path):
    path = tmp_path / "clip.mov"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=5)
        s.width = s.height = 16
        s.pix_fmt = "yuvj420p"
        img = Image.open(RAW / "image/astronaut.png").convert("RGB").resize((16, 16))
        for p in s.encode(av.VideoFrame.from_image(img)):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert sniff(path.read_bytes()) .modality == "video"


CFG = IngestConfig()


@pytest.mark.parametrize("rel", [r for r in sorted(EXPECTED) if EXPECTED[r][0] in ("image", "audio", "video")])
def test_canonical_forms_open_in_their_libraries(rel):
    data, s = canonicalize((RAW / rel).read_bytes(), CFG)
    if s.modality == "image":
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "BMP" and im.mode == "RGB" and max(im.size) <= CFG.image_max_side
    elif s.modality == "audio":
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 1, 1)
            assert w.getnframes() > 8000 // 2  # real speech, at least half a second
    else:
        assert data.startswith(b"YUV4MPEG2 W32 H32 F5:1")
        with av.open(io.BytesIO(data)) as c:
            frames = list(c.decode(video=0))
        assert 1 <= len(frames) <= CFG.video_max_frames
        assert (frames[0].width, frames[0].height) == (32, 32)


def test_canonicalize_rejects_undecodable_media():
    from obf.formats.sniff import FormatError

    with pytest.raises(FormatError, match="image does not decode"):
        canonicalize(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, CFG)
    with pytest.raises(FormatError, match="audio"):
        canonicalize(b"fLaC" + b"\x00" * 100, CFG)


@pytest.mark.parametrize("modality", ["text", "image", "audio", "video", "binary"])
@pytest.mark.parametrize("kind", ["canonical_cut", "random", "empty"])
def test_generated_bytes_always_open(modality, kind):
    import random

    rng = random.Random(0)
    if kind == "canonical_cut":
        src = {"text": "text/GPL-3.txt", "image": "image/coffee.jpg", "audio": "audio/numbers.wav",
               "video": "video/astronaut_pan.mp4", "binary": "binary/true.elf"}[modality]
        data, _ = canonicalize((RAW / src).read_bytes(), CFG)
        data = data[: len(data) * 2 // 3 + 7]  # cut mid-row / mid-sample / mid-frame
    elif kind == "random":
        data = bytes(rng.randrange(256) for _ in range(5000))
    else:
        data = b""
    out, ext = to_file(data, modality)
    assert opens(out, modality), (modality, kind)
    assert ext.startswith(".")


def test_repairs_keep_declared_fields():
    bmp, _ = canonicalize((RAW / "image/coffee.jpg").read_bytes(), CFG)
    with Image.open(io.BytesIO(bmp)) as a, Image.open(io.BytesIO(repair_bmp(bmp[:100]))) as b:
        assert a.size == b.size  # header fields kept, pixels padded
    wav = canonicalize((RAW / "audio/numbers.wav").read_bytes(), CFG)[0]
    with wave.open(io.BytesIO(repair_wav(wav[:1001]))) as w:
        assert (w.getframerate(), w.getsampwidth()) == (8000, 1) and w.getnframes() == 1001 - 44
    y4m = (RAW / "video/hubble_pan.y4m").read_bytes()
    assert y4m.startswith(b"YUV4MPEG2 W32 H32 F12:1 ")
    fixed = repair_y4m(y4m[: len(y4m) // 2])
    head, body = fixed.split(b"\n", 1)
    assert head == b"YUV4MPEG2 W32 H32 F12:1 Ip A1:1 C420jpeg"  # size and rate kept, the rest canonical
    frames = body.split(b"FRAME\n")[1:]
    src = y4m.split(b"\n", 1)[1].split(b"FRAME\n")[1:]
    assert len(frames) == 5 and frames[:4] == src[:4] and all(len(f) == 32 * 32 * 3 // 2 for f in frames)
    assert opens(fixed, "video")


def test_existing_valid_files_are_kept():
    png = (RAW / "image/astronaut.png").read_bytes()
    assert to_file(png, "image") == (png, ".png")


def test_place_ids_of_canonical_media_read_the_declared_layout():
    """A canonical BMP's bytes get their channel and the byte one row up; a Y4M's their plane and
    the bytes one row and one frame back; a WAV's their place in the sample frame; text none. The
    ids of a byte read only bytes before it, so generation's one-byte-at-a-time `next_ids` gives
    the same ids as the whole file does."""
    import numpy as np

    from obf.formats.places import BMP_PHASE, NO_BYTE, NO_PLACE, WAV_PHASE, Y4M_PHASE, place_ids, places_of

    bmp, _ = canonicalize((RAW / "image/coffee.jpg").read_bytes(), CFG)
    lay = places_of(bmp[:4096], "image")
    assert lay is not None and lay.kind == "bmp" and lay.pixel == 3
    ids = place_ids(bmp, "image", np.arange(len(bmp)))
    assert (ids[: lay.origin] == NO_PLACE).all()  # the header has no place
    first = lay.origin + 2 * lay.unit + 7  # a pixel's second byte, two rows in
    assert ids[first, 0] == BMP_PHASE + 1 and ids[first, 1] == bmp[first - lay.unit] and ids[first, 2] == NO_BYTE
    assert (ids[lay.origin:lay.origin + lay.unit, 1] == NO_BYTE).all()  # the first row has none above it

    y4m, _ = canonicalize((RAW / "video/hubble_pan.y4m").read_bytes(), CFG)
    lay = places_of(y4m[:4096], "video")
    assert lay is not None and lay.kind == "y4m"
    ids = place_ids(y4m, "video", np.arange(len(y4m)))
    frame = lay.origin + lay.unit  # the second frame
    luma = lay.width * lay.height
    assert (ids[frame:frame + 6, 0] == Y4M_PHASE).all()  # its FRAME marker
    y = frame + 6 + lay.width + 3  # second luma row
    assert ids[y, 0] == Y4M_PHASE + 1 and ids[y, 1] == y4m[y - lay.width] and ids[y, 2] == y4m[y - lay.unit]
    u = frame + 6 + luma  # the first chroma byte: no row above it in its plane
    assert ids[u, 0] == Y4M_PHASE + 2 and ids[u, 1] == NO_BYTE and ids[u + luma // 4, 0] == Y4M_PHASE + 3

    wav, _ = canonicalize((RAW / "audio/numbers.wav").read_bytes(), CFG)
    lay = places_of(wav[:4096], "audio")
    assert lay is not None and (place_ids(wav, "audio", np.arange(lay.origin, lay.origin + 4))[:, 0]
                                == WAV_PHASE + np.arange(4) % lay.unit).all()
    assert (place_ids(b"plain text\n" * 40, "text", np.arange(100)) == NO_PLACE).all()

    for data, modality in ((bmp, "image"), (y4m, "video"), (wav, "audio")):
        lay = places_of(data[:4096], modality)
        whole = place_ids(data, modality, np.arange(len(data) + 1))
        for at in (lay.origin + 1, len(data) // 3, len(data) - 1, len(data)):
            for cut in (0, at // 2, at):  # context and generated part split anywhere
                assert (lay.next_ids(data[:cut], bytearray(data[cut:at])) == whole[at]).all()
