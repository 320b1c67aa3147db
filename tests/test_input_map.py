"""The copy expert's learned map (obf.mixer.input_map): where each target byte reads its input
(slots), that a map fitted on pairs of each built-in conversion writes that conversion on inputs it
never saw, that a sparse table cannot win by memorising, and what it saves."""

from functools import cache

import numpy as np

from obf.core.vocab import EOS
from obf.formats.conversions import convert
from obf.mixer.input_copy import pair_index
from obf.mixer.input_map import CHANNELS, PAST, InputMap, Reads, fit, reads

CONVERSIONS = {"upper": ("text", "text"), "hex": ("binary", "text"), "gray": ("image", "image"),
               "ascii": ("image", "text")}
PROSE = b"The quick brown fox jumps over the lazy dog; then it sleeps. Sphinx of black quartz, judge my vow!\n"


def _input(name: str, seed: int) -> bytes:
    from tests.test_mixer import _bmp

    rng = np.random.default_rng(seed)
    if name == "upper":
        words = PROSE.split()
        return b" ".join(words[i] for i in rng.integers(0, len(words), 12)) + b"\n"
    if name == "hex":
        return bytes([0, 1, 2, 0]) + rng.integers(0, 256, int(rng.integers(20, 124)), dtype=np.uint8).tobytes()
    return _bmp(int(rng.integers(3, 17)), int(rng.integers(3, 17)), seed=seed)


def _samples(seeds: range, end: bool) -> list[tuple[int, Reads, bytes]]:
    out = []
    for name, (source, target) in CONVERSIONS.items():
        for seed in seeds:
            inp, tgt = convert(name, _input(name, seed))
            out.append((pair_index(source, target), reads(inp, source, target, len(tgt) + 1, end), tgt))
    return out


@cache
def fitted(end: bool) -> InputMap:
    """A map fitted on 40 pairs of each built-in conversion."""
    return fit(_samples(range(40), end))


def test_a_slot_counts_earlier_reads_of_the_offset_and_places_the_byte_in_its_pixel():
    inp, tgt = convert("hex", bytes([0, 1, 2, 0]) * 5)  # "00 01 02 00 ...\n"
    r = reads(inp, "binary", "text", len(tgt) + 1, True)
    k, where = np.divmod(r.slot, CHANNELS)
    assert k[:6].tolist() == [0, 1, 2, 0, 1, 2] and (where[:-2] == 0).all()  # two digits and a separator
    assert k[-2:].tolist() == [0, 1] and (where[-2:] == PAST).all() and (r.byte[-2:] == -1).all()  # "\n", EOS
    from tests.test_mixer import _bmp

    bmp = _bmp(5, 3, seed=1)  # rows of 15 bytes padded to 16
    r = reads(bmp, "image", "image", len(bmp) + 1, True)
    where = r.slot % CHANNELS
    assert (where[:54] == 0).all() and (r.pixel[:54] == -1).all()  # the header lies outside the pixels
    assert where[54:57].tolist() == [1, 2, 3] and (r.pixel[54:57] == list(bmp[54:57])).all()  # channels 0-2
    assert where[54 + 15] == 0 and where[-1] == PAST  # a row's padding, then EOS past the input


def test_a_fitted_map_writes_each_conversion_on_inputs_it_never_saw():
    imap = fitted(True)
    features = {(p, s): m.feature for (p, s), m in imap.maps.items()}
    assert features[(pair_index("text", "text"), 0)] == "byte"  # a->A is a table over the byte
    assert features[(pair_index("image", "image"), 0)] == "copy"  # gray keeps its header
    assert features[(pair_index("image", "text"), PAST)] == "before"  # after a pixel "\n", after padding EOS
    pixel = imap.maps[(pair_index("image", "image"), 2)]  # green
    assert pixel.feature == "pixel" and abs(pixel.weights[1] / 4096 - 0.587) < 0.02  # green weighs most in luma
    for name, (source, target) in CONVERSIONS.items():
        for seed in range(100, 106):
            inp, tgt = convert(name, _input(name, seed))
            hint, conf = imap.offers(pair_index(source, target), reads(inp, source, target, len(tgt) + 1, True))
            want = np.append(np.frombuffer(tgt, np.uint8), EOS)
            assert (hint == want).mean() > (0.95 if name in ("gray", "ascii") else 0.999), (name, seed)
            assert hint[-1] == EOS and conf[-1] > 0


def test_a_key_seen_once_does_not_beat_the_raw_byte():
    """One-byte targets, each a different input byte mapped to another: a table over the byte
    would memorise every pair (right on every training position) and know nothing; left out in
    turn, each position is wrong, so the plain copy is kept."""
    samples = []
    for b in range(200):
        inp, tgt = bytes([b]), bytes([(b * 7 + 3) % 256])
        samples.append((pair_index("binary", "binary"), reads(inp, "binary", "binary", 2, True), tgt))
    imap = fit(samples)
    assert imap.maps[(pair_index("binary", "binary"), 0)].feature == "copy"


def test_a_map_saves_and_loads_as_it_was():
    imap = fitted(False)
    back = InputMap.from_dict(imap.to_dict())
    assert back.to_dict() == imap.to_dict()
    inp, tgt = convert("ascii", _input("ascii", 7))
    r = reads(inp, "image", "text", len(tgt) + 1, False)
    for a, b in zip(imap.offers(pair_index("image", "text"), r), back.offers(pair_index("image", "text"), r)):
        assert (a == b).all()


def test_a_slot_too_often_wrong_offers_the_raw_byte(monkeypatch):
    """A one-byte target is `A` three times in five and `B` otherwise, whatever the input: the
    best table (one value, `A`) is right 60% of the time, a guess too unsure to offer; the raw
    byte is offered instead. Without the floor the table would be kept."""
    from obf.mixer import input_map

    rng = np.random.default_rng(5)
    samples = []
    for i in range(100):
        inp = rng.integers(0, 256, 1, dtype=np.uint8).tobytes()
        tgt = b"A" if i % 5 < 3 else b"B"
        samples.append((pair_index("binary", "binary"), reads(inp, "binary", "binary", 2, True), tgt))
    assert fit(samples).maps[(pair_index("binary", "binary"), 0)].feature == "copy"
    monkeypatch.setattr(input_map, "MIN_RIGHT", 0.0)
    assert fit(samples).maps[(pair_index("binary", "binary"), 0)].feature == "none"
