"""The built-in conversions (obf.formats.conversions) and the pairs made of them: exact definitions, limits
that are named and never cut silently, pairs kept whole inside one split."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from obf.core.config import IngestConfig
from obf.data.dataset import Dataset
from obf.data.ingest import ingest
from obf.formats.conversions import CONVERSIONS, RAMP, conversion_for, convert, input_offsets
from obf.formats.layouts import bmp_layout
from obf.formats.sniff import FormatError, sniff

from .conftest import RAW


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_upper_changes_ascii_letters_only():
    _, out = convert("upper", "Grüße, World: a-z & À\n".encode())
    assert out == "GRüßE, WORLD: A-Z & À\n".encode()


def test_hex_is_sixteen_bytes_a_line():
    data = bytes(range(250, 256)) + bytes(range(0, 30))  # 36 bytes: lines of 16, 16, 4
    _, out = convert("hex", data)
    lines = out.decode().split("\n")
    assert lines[0] == "fa fb fc fd fe ff 00 01 02 03 04 05 06 07 08 09"
    assert [len(ln.split()) for ln in lines[:-1]] == [16, 16, 4] and lines[-1] == "" and out.endswith(b"\n")
    assert bytes.fromhex(out.decode().replace("\n", " ")) == data


def test_gray_and_ascii_follow_pillow_luma_pixel_by_pixel():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 7, 3))
    pixels[0, 0] = (255, 255, 255)
    pixels[4, 6] = (0, 0, 0)
    want = np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("L"), dtype=np.int64)  # (5, 7)
    canon, gray = convert("gray", _png(pixels))
    lay = bmp_layout(gray)
    assert lay is not None and lay.bpp == 24 and gray[:lay.offset] == canon[:lay.offset]  # same header, same size
    got = np.asarray(Image.open(io.BytesIO(gray)).convert("RGB"), dtype=np.int64)  # (5, 7, 3)
    assert (got == want[..., None]).all()
    _, text = convert("ascii", _png(pixels))
    rows = text.decode().split("\n")
    assert len(rows) == 6 and rows[-1] == ""  # top row first, "\n" after each row
    assert rows[0][0] == "@" and rows[4][6] == " "
    assert all(rows[r][c] == chr(RAMP[want[r, c] * 10 // 256]) for r in range(5) for c in range(7))


def test_each_target_byte_reads_the_input_byte_its_conversion_maps_it_to():
    """`input_offsets`, checked against what each target byte holds: a hex digit is a nibble of
    the byte it reads, an ascii character the luma of the pixel whose bytes it reads."""
    data = b"\x7fELF\x02\x01" + bytes(np.random.default_rng(1).integers(0, 256, 31, dtype=np.uint8))
    canon, hexed = convert("hex", data)
    reads = input_offsets("binary", "text", canon, np.arange(len(hexed) + 3))
    for t, ch in enumerate(hexed):
        col = t % 48  # a full line: "xx " x 15 + "xx\n"
        if col % 3 < 2:
            assert f"{canon[reads[t]]:02x}"[col % 3] == chr(ch)
    assert (reads[len(hexed):] == len(canon) - 1).all()  # EOS and after: the last byte

    pixels = np.random.default_rng(2).integers(0, 256, (5, 7, 3))
    bmp, text = convert("ascii", _png(pixels))
    reads = input_offsets("image", "text", bmp, np.arange(len(text) + 1))
    lay = bmp_layout(bmp)
    for t, ch in enumerate(text):
        r = int(reads[t])
        if ch == ord("\n"):  # the byte after its row's last pixel
            assert (r - lay.offset) % lay.stride == 3 * lay.width
            continue
        b, g, red = bmp[r:r + 3]
        luma = Image.fromarray(np.array([[[red, g, b]]], np.uint8)).convert("L").getpixel((0, 0))
        assert chr(ch) == chr(RAMP[luma * 10 // 256])
    assert reads[len(text)] == len(bmp) - 1

    for source, target, data in (("text", "text", b"abc def"), ("image", "image", bmp), ("audio", "text", b"x" * 9)):
        assert (input_offsets(source, target, data, np.arange(12)) == np.arange(12)).all()  # offsets kept


def test_the_pair_of_modalities_picks_the_conversion():
    assert {(c.source, c.target): n for n, c in CONVERSIONS.items()} == {
        ("text", "text"): "upper", ("binary", "text"): "hex", ("image", "image"): "gray", ("image", "text"): "ascii"}
    assert conversion_for("image", "text").name == "ascii" and conversion_for("audio", "text") is None


def test_a_users_pair_of_the_same_modalities_is_not_counted_as_the_built_in():
    """The evaluation names a pair by its built-in conversion only when the target is exactly that
    conversion of its input; a user's own text -> text pair is `text->text`, not `upper`."""
    from obf.evaluate.fidelity import Case

    assert Case("a", b"hello, world\n", "text", b"HELLO, WORLD\n", "text").conversion == "upper"
    assert Case("b", b"hello, world\n", "text", b"bonjour, monde\n", "text").conversion == "text->text"
    assert Case("c", b"\x00\x01", "binary", b"00 01\n", "text").conversion == "hex"
    assert Case("d", b"\x00\x01", "binary", b"zero one\n", "text").conversion == "binary->text"


def test_inputs_beyond_a_conversion_are_refused_with_the_limit_or_resized():
    with pytest.raises(FormatError, match="256 bytes"):
        convert("upper", b"x" * 257)
    with pytest.raises(FormatError, match="128 bytes"):
        convert("hex", b"\x00\x01" * 65)
    with pytest.raises(FormatError, match="not binary"):
        convert("hex", b"plain text, not binary")
    canon, gray = convert("gray", _png(np.full((40, 30, 3), 90)))  # fitted into 16x16, documented
    lay = bmp_layout(canon)
    assert (lay.width, lay.rows) == (12, 16) and bmp_layout(gray).width == 12
    rgba = np.full((4, 4, 4), 200)
    rgba[0, 0, 3] = 10
    buf = io.BytesIO()
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(buf, format="PNG")
    with pytest.raises(FormatError, match="transparency"):
        convert("gray", buf.getvalue())


def test_the_corpus_pairs_are_exact_and_of_every_conversion():
    root = RAW / "pairs"
    for name in CONVERSIONS:
        inputs = sorted((root / name / "inputs").iterdir())
        assert len(inputs) >= 100, name
        for p in inputs[:25]:
            target = next((root / name / "targets").glob(p.stem + ".*"))
            assert convert(name, p.read_bytes())[1] == target.read_bytes(), p
        if name == "hex":
            assert all(sniff(p.read_bytes()).modality == "binary" for p in inputs)


def _pair(raw, name, inp: bytes, tgt: bytes, ext_in=".txt", ext_out=".txt"):
    for d, data, ext in (("inputs", inp, ext_in), ("targets", tgt, ext_out)):
        (raw / "pairs" / d).mkdir(parents=True, exist_ok=True)
        (raw / "pairs" / d / f"{name}{ext}").write_bytes(data)


def test_a_pair_never_crosses_splits_and_a_shared_target_takes_the_most_held_out(tmp_path):
    """Inputs whose own hashes fall in train, val and test share one target: all of them and the
    target go to test. Every other pair lies wholly in its input's split; a target named only by
    its stem (a.png -> a.bmp) pairs too."""
    import hashlib

    from obf.data.dataset import split_of

    raw = tmp_path / "raw"
    cfg = IngestConfig(val_fraction=0.3, test_fraction=0.3)
    seen = {}
    i = 0
    while len(seen) < 3:  # one input whose own split is each of train, val, test
        data = f"shared target, input {i}\n".encode()
        seen.setdefault(split_of(hashlib.sha256(data).hexdigest(), 0.3, 0.3), data)
        i += 1
    for order, split in enumerate(("train", "val", "test")):  # the test input last, in key order too
        _pair(raw, f"s{order}_{split}", seen[split], b"THE SHARED TARGET\n")
    for k in range(12):
        _pair(raw, f"p{k:02d}", f"line {k} of a paragraph\n".encode(), f"LINE {k} OF A PARAGRAPH\n".encode())
    _pair(raw, "pic", _png(np.full((4, 4, 3), 7)), b"bmp-ish target bytes\x00\x01", ".png", ".bin")
    ingest(str(raw), tmp_path / "ds", cfg, progress=False)
    ds = Dataset(tmp_path / "ds")
    by_key = {r.key: r for r in ds.records}
    shared = [by_key[f"pairs/inputs/s{o}_{s}.txt"] for o, s in enumerate(("train", "val", "test"))]
    assert {r.split for r in shared} == {"test"} and by_key[shared[0].pair].split == "test"
    pairs = [p for s in ("train", "val", "test") for p in ds.pairs(s)]
    assert len(pairs) == 3 + 12 + 1
    assert all(i.split == t.split for i, t in pairs)
    for k in range(12):  # a pair of its own takes its input's split, whatever its target's hash says
        data = f"line {k} of a paragraph\n".encode()
        assert by_key[f"pairs/inputs/p{k:02d}.txt"].split == split_of(hashlib.sha256(data).hexdigest(), 0.3, 0.3)
    assert by_key["pairs/inputs/pic.png"].pair == "pairs/targets/pic.bin"
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["pairs"]["test"] >= 3


def test_training_draws_pairs_of_its_split_only_and_continue_draws_no_pair_file(tmp_path):
    from obf.data.objectives import ExampleSampler

    raw = tmp_path / "raw"
    for k in range(40):
        _pair(raw, f"p{k:02d}", f"line {k}: some words\n".encode(), f"LINE {k}: SOME WORDS\n".encode())
    (raw / "plain").mkdir()
    for k in range(10):
        (raw / "plain" / f"f{k}.txt").write_bytes(f"an ordinary file {k}\n".encode() * 30)
    ingest(str(raw), tmp_path / "ds", IngestConfig(val_fraction=0.3, test_fraction=0.3), progress=False)
    ds = Dataset(tmp_path / "ds")
    train = ExampleSampler(ds, "train", max_src_len=128, max_tgt_len=32, task_weights={"paired": 1.0, "continue": 1.0})
    held = {k for s in ("val", "test") for i, t in ds.pairs(s) for k in (i.key, t.key)}
    assert held and train.pairs and not {k for i, t in train.pairs for k in (i.key, t.key)} & held
    members = ds.paired_keys()
    assert not {r.key for rs in train.by_modality.values() for r in rs} & members


def test_every_window_of_a_paired_target_trains_with_the_whole_input_in_view():
    from obf.core.vocab import EOS, PAD, PAIRED_TAGS
    from obf.data.objectives import PAIRED_WINDOWS, collate, paired_example

    inp = bytes(range(100))
    target = bytes(range(256)) * 2 + b"tail"  # 516 bytes: windows of 128 at 0, 128, 256, 384, 512 (+EOS)
    ex = paired_example(inp, "binary", target, "text", 256, 128, range(0, 5))
    b = collate([ex])
    assert len(b.rows) == 5 and (b.rows == 0).all()
    src = b.src[0][b.src[0] != PAD]
    assert len(src) == PAIRED_TAGS + len(inp)
    pad = b.src.shape[1] - len(src)
    assert (b.visible == b.src.shape[1]).all()  # every window sees the whole input
    assert b.align.tolist() == [pad + PAIRED_TAGS + 128 * k for k in range(5)]
    got = [b.tgt[n][b.tgt[n] != PAD].tolist() for n in range(5)]
    assert sum(got, []) == [*target, EOS]
    assert PAIRED_WINDOWS >= 4  # a 16x16 BMP target (822 bytes) fits one example of 256-byte windows


def test_a_paired_window_moves_each_query_to_the_byte_its_conversion_reads():
    from obf.data.objectives import collate, paired_example

    inp = bytes(range(1, 101))
    _, target = convert("hex", inp)  # 300 bytes
    moved = collate([paired_example(inp, "binary", target, "text", 256, 128, range(0, 3), query_map=True)])
    reads = input_offsets("binary", "text", inp, np.arange(len(target) + 1))
    for k in range(3):
        n = min(128, len(target) + 1 - 128 * k)
        assert (moved.shift[k, :n] == reads[128 * k:128 * k + n] - np.arange(128 * k, 128 * k + n)).all()
        assert (moved.shift[k, n:] == 0).all()
    assert moved.align.tolist() == collate([paired_example(inp, "binary", target, "text", 256, 128,
                                                           range(0, 3))]).align.tolist()
    flat = collate([paired_example(inp, "binary", target, "text", 256, 128, range(0, 3))])  # a model before
    same = collate([paired_example(b"abc", "text", b"ABC", "text", 256, 128, range(0, 1), query_map=True)])
    assert not flat.shift.any() and not same.shift.any()


def test_with_input_end_the_source_ends_with_eos_and_the_targets_end_reads_it():
    from obf.core.vocab import EOS, PAD, PAIRED_TAGS, paired_input, paired_room
    from obf.data.objectives import collate, paired_example

    inp = bytes(range(1, 41))  # 40 bytes: hex lines of 16, 16 and 8 bytes; 120 characters
    _, target = convert("hex", inp)
    b = collate([paired_example(inp, "binary", target, "text", 256, 128, range(0, 1), query_map=True,
                                input_end=True)])
    src = b.src[0][b.src[0] != PAD].tolist()
    assert src == [*paired_input(inp, "binary", "text", 256), EOS]  # the input, then its end marker
    pad = b.src.shape[1] - len(src)
    reads = b.align[0] + np.arange(len(target) + 1) + b.shift[0, :len(target) + 1] - pad - PAIRED_TAGS
    assert reads[:-2].tolist() == [t // 3 for t in range(len(target) - 1)]  # each character its byte
    assert reads[-2:].tolist() == [len(inp), len(inp)]  # the last newline and EOS: the marker
    assert b.src[0][pad + PAIRED_TAGS + len(inp)] == EOS
    without = input_offsets("binary", "text", inp, np.arange(len(target) + 1))
    assert without[-2:].tolist() == [len(inp) - 1] * 2  # no marker: the last byte, as before
    bmp, art = convert("ascii", _png(np.full((3, 4, 3), 200)))
    assert input_offsets("image", "text", bmp, np.array([len(art)]), end=True).tolist() == [len(bmp)]
    assert paired_room(256, True) == paired_room(256) - 1 == 256 - PAIRED_TAGS - 1
    with pytest.raises(ValueError, match="up to 252 bytes"):
        paired_input(bytes(253), "binary", "text", 256, end=True)


def test_with_paired_places_each_window_of_a_gray_target_reads_its_place_in_the_target():
    """`model.paired_places`: a gray target's windows carry the place ids of the target's own BMP
    layout (its channels, the byte one row up), as a `continue` window of that file would; without
    it, and for a text target, a paired window carries none."""
    from obf.data.objectives import collate, paired_example
    from obf.formats.places import BMP_PHASE, NO_PLACE, place_ids

    bmp, gray = convert("gray", _png(np.random.default_rng(3).integers(0, 256, (9, 11, 3))))
    lay = bmp_layout(gray)
    b = collate([paired_example(bmp, "image", gray, "image", 1024, 128, range(0, 3), places=True)])
    n = len(gray) + 1  # the target bytes and EOS over three windows of 128
    got = np.concatenate([b.places[k, :min(128, n - 128 * k)] for k in range(3)])  # (n, 3)
    assert (got == place_ids(gray, "image", np.arange(n))).all()
    assert (got[:lay.offset] == NO_PLACE).all()  # the header has no place
    first = lay.offset + lay.stride  # the first byte of the second row
    assert got[first].tolist() == [BMP_PHASE, gray[lay.offset], 256]
    assert got[first + 4, 0] == BMP_PHASE + 1  # the second pixel's green
    assert collate([paired_example(bmp, "image", gray, "image", 1024, 128, range(0, 3))]).places is None
    inp = bytes(range(1, 41))
    _, hexed = convert("hex", inp)
    text = collate([paired_example(inp, "binary", hexed, "text", 256, 128, range(0, 1), places=True)])
    assert (text.places == NO_PLACE).all()
