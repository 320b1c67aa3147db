"""The decode loop with a mixer (obf.generate.sampling + obf.mixer): what it samples from a model whose
network is scripted, so that only the mixer's rules decide whether a run of one byte can feed on
itself."""

import numpy as np
import pytest

from obf.core.vocab import EOS, VOCAB_SIZE
from obf.generate.sampling import SamplingOptions, generate
from obf.mixer.match import LENGTH_BUCKETS, MatchTable
from obf.mixer.mix import Mixer
from obf.mixer.stride_hint import StrideKernel

LETTERS = b"abcd"


class FixedRow:
    """A backend whose network gives the logits `row` after any context, teacher-forced or step by
    step."""

    max_src_len, max_tgt_len, vocab_size, patch_size = 64, 64, VOCAB_SIZE, 1
    row: np.ndarray

    def encode(self, src, align=None):
        return src.shape[0]

    def init_cache(self, memory):
        return None

    def step(self, tokens, memory, cache):
        return np.tile(self.row, (memory, 1)), cache

    def logits(self, src, dec):
        return np.tile(self.row, (*dec.shape, 1))


class FourLetters(FixedRow):
    """Each of a, b, c, d a quarter (and EOS almost nothing); `meta` carries a mixer, as an
    export's does."""

    def __init__(self, mixer: Mixer) -> None:
        self.meta = {"mixer": mixer.to_dict()}
        self.row = np.full(VOCAB_SIZE, -30.0, np.float32)
        self.row[list(LETTERS)] = 0.0
        self.row[EOS] = -12.0


def _trusting_mixer() -> Mixer:
    """A match table that trusts long matches as a fitted one does (the bias grows with the
    match's length, up to e^7), with the file-adaptive parts on."""
    weights = MatchTable.zeros().weights
    weights[:] = np.linspace(0.0, 7.0, LENGTH_BUCKETS)[None, :, None]
    return Mixer(MatchTable(weights), StrideKernel.zeros(), columns=True, adapt=True)


def _context(seed: int) -> bytes:
    """Random letters, then a run of 40 'a': the context's own evidence that runs go on a while."""
    rng = np.random.default_rng(seed)
    return bytes(rng.choice(list(LETTERS), 3000).tolist()) + b"a" * 40


def test_a_run_of_one_byte_does_not_feed_on_itself():
    """Writing 'a' after 'a', the model as generation serves it keeps the chance of one more 'a'
    where the context put it; a mixer that learns from the bytes it has just made (the match
    model copying the run it is writing, the trust in such copies, the column counts) makes the
    next 'a' ever surer, until nothing else can come."""
    from obf.mixer.match import modality_index
    from obf.mixer.mix import RowHints
    from obf.runtime.scoring import tail_log_probs

    backend = FourLetters(_trusting_mixer())
    context = _context(0)
    tail = tail_log_probs(backend, [context], ["text"])[0]
    mixer, text = _trusting_mixer(), modality_index(["text"])
    p_a = {}
    for learn in (False, True):
        row = RowHints(context, "text", tail, learn_from_output=learn)
        p_a[learn] = []
        for _ in range(2000):
            p_a[learn].append(float(np.exp(mixer.step(backend.row[None].copy(), [row], text)[0, ord("a")])))
            row.update(ord("a"))
    assert p_a[False][0] == p_a[True][0] < 0.96  # the context's evidence, alike at the start
    assert max(p_a[False]) == pytest.approx(p_a[False][0], abs=1e-9)  # learning from the context only: no climb
    assert p_a[True][100] > p_a[True][0] + 0.02 and p_a[True][-1] > 0.999  # feeding on itself


class Recorder:
    """A backend that records what each decoder window is given (source ids and alignment) and
    emits a fixed byte."""

    max_src_len, max_input_len, max_tgt_len, vocab_size, patch_size = 64, 64, 8, VOCAB_SIZE, 4

    def __init__(self) -> None:
        self.windows: list[tuple[np.ndarray, np.ndarray | None]] = []

    def encode(self, src, align=None):
        self.windows.append((src.copy(), None if align is None else align.copy()))
        return src.shape[0]

    def init_cache(self, memory):
        return None

    def step(self, tokens, memory, cache):
        logits = np.full((memory, VOCAB_SIZE), -9.0, np.float32)
        logits[:, ord("Z")] = 0.0
        return logits, cache


def test_paired_windows_each_see_the_whole_input_aligned_at_their_offset():
    from obf.core.vocab import PAD, PAIRED_TAGS, paired_input

    backend = Recorder()
    inputs = [b"abcdefghijklmnopqrstuvw", b"xyz"]
    opts = SamplingOptions(max_bytes=20, stop_at_eos=False)
    out = generate(backend, inputs, ["text", "text"], task="paired", opts=opts)
    assert out == [b"Z" * 20] * 2
    assert len(backend.windows) == 3  # 20 bytes: windows of 8, 8 and 4
    for k, (src, align) in enumerate(backend.windows):
        for row, inp in enumerate(inputs):
            ids = src[row][src[row] != PAD].tolist()
            assert ids == paired_input(inp, "text", "text", 64)  # the whole input, every window
            pad = src.shape[1] - len(ids)
            assert align[row] == pad + PAIRED_TAGS + 8 * k  # target byte 8k lies at input byte 8k
    with pytest.raises(ValueError, match="up to 61 bytes"):
        generate(backend, [b"x" * 62], ["text"], task="paired")


class OneLikely(FixedRow):
    """No mixer; 'a' has half the mass and every other byte an equal share of the rest (~9 bits
    each): sampled as it is, a row spends ~5 bits per byte, whatever the file it continues."""

    def __init__(self) -> None:
        self.row = np.full(VOCAB_SIZE, -60.0, np.float32)
        self.row[:256] = 0.0
        self.row[ord("a")] = np.log(255.0)


def test_a_surprise_matched_row_is_as_predictable_as_its_context():
    """Continuing a file that is mostly 'a' (the model spends ~1.8 bits per byte on it), plain
    sampling writes ~5 bits per byte, half of it noise; with `match_surprise` the row spends
    about what its context cost, so 'a' keeps its share. A context the model finds as surprising
    as its own sampling is continued as plain sampling continues it."""
    backend = OneLikely()
    p = np.exp(backend.row[:256] - np.logaddexp.reduce(backend.row[:256]))
    rng = np.random.default_rng(1)
    mostly_a = bytes(np.where(rng.random(3000) < 0.9, ord("a"), rng.integers(0, 256, 3000)).astype(np.uint8))
    noisy = bytes(np.where(rng.random(3000) < 0.5, ord("a"), rng.integers(0, 256, 3000)).astype(np.uint8))

    def bits(out: bytes) -> float:
        return float(-np.log2(p[np.frombuffer(out, np.uint8)]).mean())

    context_bits = bits(mostly_a[-2560:])
    plain, matched = (generate(backend, [mostly_a, noisy], ["binary", "binary"],
                               opts=SamplingOptions(max_bytes=3000, temperature=1.0, seed=3, match_surprise=m))
                      for m in (False, True))
    assert bits(plain[0]) > 4.5 and plain[0].count(b"a") < 0.6 * 3000
    assert abs(bits(matched[0]) - context_bits) < 0.4 and matched[0].count(b"a") > 0.8 * 3000
    assert abs(bits(matched[1]) - bits(plain[1])) < 0.4  # nothing to cut where the context is as noisy


class ThreeLikely(FixedRow):
    """'a' the favourite, 'b' a tenth as likely and 'c' a hundredth; every other id nothing."""

    def __init__(self) -> None:
        self.row = np.full(VOCAB_SIZE, -60.0, np.float32)
        self.row[[ord("a"), ord("b"), ord("c")]] = [0.0, np.log(0.1), np.log(0.01)]


def test_min_p_cuts_the_tail_of_the_distribution_sampled():
    """`min_p` drops every byte less likely than that share of the favourite, in the distribution
    sampled (after the temperature and the thermostat): a hotter row keeps more of the tail, which
    is how a thermostat still heats a row out of a loop."""
    backend = ThreeLikely()

    def made(**kw) -> bytes:
        opts = SamplingOptions(max_bytes=3000, seed=5, stop_at_eos=False, **kw)
        return generate(backend, [b"xyz"], ["binary"], opts=opts)[0]

    plain, cut, hot = made(temperature=1.0), made(temperature=1.0, min_p=0.05), made(temperature=2.0, min_p=0.05)
    assert plain.count(b"c") > 10  # ~1%: sampled as it is, the tail comes out now and then
    assert cut.count(b"c") == 0 and 150 < cut.count(b"b") < 400  # cut: 'c' never; 'b' keeps its ~9%
    assert hot.count(b"c") > 100  # at temperature 2, 'c' is sqrt(0.01) = a tenth of 'a': kept
    with pytest.raises(ValueError, match="min_p"):
        SamplingOptions(min_p=1.0)


class MostlyA(FixedRow):
    """'a' nine times as likely as 'b'; every other id nothing."""

    def __init__(self) -> None:
        self.row = np.full(VOCAB_SIZE, -60.0, np.float32)
        self.row[[ord("a"), ord("b")]] = [np.log(0.9), np.log(0.1)]


def test_the_share_guard_keeps_a_row_near_the_mix_of_bytes_its_context_ends_with():
    """A network that leans on 'a' (90%) continues a file of half 'a', half 'b': sampled as it
    is, nine bytes in ten of the row are 'a'; with `share_guard` the row's 'a' loses logits while
    its share is more than `MARGIN` over the context's, and settles near that. A context that is
    all 'a' gives the guard nothing to cut ('b' at a tenth is within the margin): that row samples
    as plain sampling does."""
    backend = MostlyA()
    half = bytes(np.random.default_rng(2).choice(list(b"ab"), 3000).tolist())

    def made(guard: float) -> list[bytes]:
        opts = SamplingOptions(max_bytes=3000, temperature=1.0, seed=3, stop_at_eos=False, share_guard=guard)
        return generate(backend, [half, b"a" * 3000], ["binary", "binary"], opts=opts)

    plain, guarded = made(0.0), made(20.0)
    assert plain[0].count(b"a") > 0.85 * 3000
    assert 0.6 * 3000 < guarded[0].count(b"a") < 0.75 * 3000  # a 0.9 favourite at 20 settles at ~0.68
    assert 0.85 * 3000 < guarded[1].count(b"a") < 0.95 * 3000
    with pytest.raises(ValueError, match="share_guard"):
        SamplingOptions(share_guard=-1.0)


class BlackOrWhite(FixedRow):
    """Byte 0 nine times as likely as byte 255; every other id nothing."""

    def __init__(self) -> None:
        self.row = np.full(VOCAB_SIZE, -60.0, np.float32)
        self.row[[0, 255]] = [np.log(0.9), np.log(0.1)]


def test_the_share_guard_steers_an_image_by_the_first_byte_of_each_pixel():
    """On a BMP the guard counts and steers pixel starts only: the pixel's other bytes follow the
    network (here 0 at 90% whatever came before), where a guard on every byte would steer each
    channel apart."""
    import io

    from PIL import Image

    im = Image.new("RGB", (16, 16))
    im.putdata([(255, 255, 255) if (x + y) % 2 else (0, 0, 0) for y in range(16) for x in range(16)])
    buf = io.BytesIO()
    im.save(buf, format="BMP")  # 24-bit, 54-byte header, rows of 48 bytes
    bmp = buf.getvalue()
    opts = SamplingOptions(max_bytes=3000, temperature=1.0, seed=4, stop_at_eos=False, share_guard=80.0)
    made = np.frombuffer(generate(BlackOrWhite(), [bmp], ["image"], opts=opts)[0], np.uint8)
    first = (len(bmp) + np.arange(len(made)) - 54) % 48 % 3 == 0  # the offsets that start a pixel
    assert 0.5 < (made[first] == 0).mean() < 0.7  # steered: black's reference share is a half
    assert (made[~first] == 0).mean() > 0.85  # left to the network


def test_each_row_reads_its_places_from_a_header_cut_short_as_soon_as_it_is_whole():
    """`FileGeometry`: a row that holds none or part of its file's header (a `paired` target starts
    empty; a short `continue` context) gets, at every step, the place ids the finished file gives
    that byte: none inside the header, its BMP channel and row above from the first pixel on,
    whatever step the header became whole at. A row of text never reads one."""
    import io

    from PIL import Image

    from obf.formats.conversions import convert
    from obf.formats.places import NO_PLACE, place_ids
    from obf.generate.sampling import FileGeometry

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(buf, format="PNG")
    bmp, _ = convert("gray", buf.getvalue())  # a 5x6 BMP: 54 bytes of header, rows of 16
    for held in (0, 20, 40, 54, 100):
        geometry = FileGeometry([bmp[:held], b"plain text"], ["image", "text"])
        out: list[bytearray] = [bytearray(), bytearray()]
        got = []
        for byte in bmp[held:]:
            got.append(geometry.next_ids(out, np.array([0, 1])))  # (2, 3) each step
            out[0].append(byte)
            out[1].append(byte)
        got = np.stack(got)  # (steps, 2, 3)
        assert (got[:, 0] == place_ids(bmp, "image", np.arange(held, len(bmp)))).all()
        assert (got[:, 1] == NO_PLACE).all() and not geometry.open[1]
        if held == 0:  # a target written from nothing: no place in its header, one at every pixel byte
            assert (got[:54, 0] == NO_PLACE).all() and (got[54:, 0, 0] > 0).all()
