"""The stride hint (obf.mixer.stride_hint) and the mixer of both hints (obf.mixer): hints from the file's own
layout, the kernel's mixing rule and fit, and the fit of the whole mixer on logits."""

import numpy as np
import pytest

from obf.core.vocab import N_BYTES
from obf.formats.canonical import pcm_to_wav, y4m_header
from obf.mixer.match import modality_index
from obf.mixer.mix import Hints, Mixer, MixerStats, RowHints, file_hints, fit_mixer
from obf.mixer.stride_hint import (
    ACTIVITY_BUCKETS,
    OFFSETS,
    RADIUS,
    StrideKernel,
    StrideState,
    activity_bucket,
    fit_kernel,
    predictor_of,
    stride_hints,
)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _bmp(width: int, rows: int, seed: int = 0) -> bytes:
    from PIL import Image

    from obf.formats.canonical import image_to_bmp

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (rows, width, 3), dtype=np.uint8))
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return image_to_bmp(buf.getvalue(), max_side=64)


def test_stride_hints_predict_from_the_bytes_before_in_the_layout():
    bmp = _bmp(10, 6)  # 24-bit rows of 30 bytes padded to 32, after a 54-byte header
    h, _ = stride_hints(bmp, "image")
    assert len(h) == len(bmp) + 1 and (h[:54 + 32 + 3] == -1).all()

    def detector(i: int) -> int:  # JPEG-LS's median edge detector, same channel
        a, b, c = bmp[i - 3], bmp[i - 32], bmp[i - 35]
        return min(a, b) if c >= max(a, b) else max(a, b) if c <= min(a, b) else a + b - c

    for i in range(54 + 32 + 3, len(bmp) + 1):
        column = (i - 54) % 32
        if column < 30 and column % 3 in (1, 2):  # green, red: plus the detector's error on the byte before
            assert h[i] == min(max(detector(i) + bmp[i - 1] - detector(i - 1), 0), 255), i
        else:  # blue and the row's padding: the detector alone
            assert h[i] == detector(i), i
    wav = pcm_to_wav(bytes(range(200)), rate=8000, width=2, channels=1)
    assert [int(x) for x in stride_hints(wav, "audio")[0][46:50]] == list(wav[44:48])  # one 2-byte sample back
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, 24, dtype=np.uint8).tobytes() for _ in range(3)]
    y4m = y4m_header(4, 4, 5) + b"".join(b"FRAME\n" + f for f in frames)
    h, _ = stride_hints(y4m, "video")
    start = len(y4m_header(4, 4, 5))
    assert (h[:start + 30] == -1).all()
    planes = ((6, 22, 4), (22, 26, 2), (26, 30, 2))  # Y 4x4, U and V 2x2 after the 6-byte marker
    for i in range(start + 30, len(y4m) + 1):
        r = (i - start) % 30
        inside = [(r - s, w) for s, e, w in planes if s <= r < e and r - s >= w and (r - s) % w]
        if inside:  # in-frame: the frame before or the detector, whichever erred less just before
            assert h[i] == _video_hint(y4m, i, *inside[0]), i
        else:  # the marker, a plane's first row and column: the same byte of the frame before
            assert h[i] == y4m[i - 30], i
    assert (stride_hints(b"plain text " * 20, "text")[0] == -1).all()
    assert (stride_hints(bmp, "binary")[0] == -1).all()


def _video_hint(y4m: bytes, i: int, q: int, w: int, frame: int = 30) -> int:
    """A clip's hint at position i, offset q inside a plane `w` wide, written out: the
    detector over left, above and upper-left, unless the byte of the frame before erred less at
    the neighbours left (twice), above, above-left and above-right (none past the row's end); a
    neighbour on the plane's first row or column has the frame before for its hint."""
    row, col = divmod(q, w)
    before = detector_errors = 0
    for dy, dx, weight in ((0, -1, 2), (-1, 0, 1), (-1, -1, 1), (-1, 1, 1)):
        if col + dx >= w:
            continue
        k = i - (q - ((row + dy) * w + col + dx))  # the neighbour's position in the file
        e = abs(y4m[k] - y4m[k - frame])
        before += weight * e
        detector_errors += weight * (e if row + dy == 0 or col + dx == 0 else abs(y4m[k] - _detector(y4m, k, w)))
    return y4m[i - frame] if before < detector_errors else _detector(y4m, i, w)


def test_a_video_hint_follows_the_frame_before_where_it_held_and_the_detector_where_it_did_not():
    """An 8x8 clip whose left half stands still over noise and whose right half is a ramp across
    the columns that brightens by 40 a frame: inside the planes the hint takes the frame before on
    the left and the detector on the right, and generation (`StrideState`) gives every byte what
    scoring gives it."""
    rng = np.random.default_rng(11)
    still = rng.integers(0, 256, (8, 4))
    frames = []
    for t in range(5):
        y = np.concatenate([still, np.tile(np.arange(4) * 9 + 40 * t, (8, 1))], axis=1)
        frames.append(b"FRAME\n" + bytes(y.astype(np.uint8).ravel()) + bytes([128] * 32))
    clip = y4m_header(8, 8, 5) + b"".join(frames)
    h, act = stride_hints(clip, "video")
    start, unit = len(y4m_header(8, 8, 5)), 6 + 64 + 32
    for f in range(2, 5):  # frames whose frame before has a frame before (its errors are known)
        for row in range(2, 8):  # rows whose neighbours above are inside the plane
            for col in (1, 2, 6, 7):  # neighbours all still (noise), or all on the ramp
                i = start + f * unit + 6 + row * 8 + col
                assert clip[i - unit] != _detector(clip, i, 8), (f, row, col)  # the two guesses differ here
                assert h[i] == (clip[i - unit] if col < 4 else _detector(clip, i, 8)), (f, row, col)
    p = predictor_of(clip, "video")
    state = StrideState(clip[:p.first + 5], p)
    for i in range(p.first + 5, len(clip) + 1):
        assert state.predict() == (h[i], act[i]), i
        if i < len(clip):
            state.update(clip[i])


def _detector(data: bytes, i: int, w: int) -> int:
    """JPEG-LS's median edge detector at position i of a plane `w` wide, written out."""
    a, b, c = data[i - 1], data[i - w], data[i - w - 1]
    return min(a, b) if c >= max(a, b) else max(a, b) if c <= min(a, b) else a + b - c


def test_a_grey_picture_in_24_bit_colour_gets_its_green_and_red_bytes_exactly():
    """A pixel's channels err together: green and red add the detector's error on the byte before,
    so in a grey picture stored as colour (B = G = R) their hint is the byte itself."""
    import io

    from PIL import Image

    from obf.formats.canonical import image_to_bmp

    grey = np.random.default_rng(7).integers(0, 256, (8, 12), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(buf, format="PNG")
    bmp = image_to_bmp(buf.getvalue(), max_side=64)  # 12 pixels: 36 bytes a row, no padding
    h, _ = stride_hints(bmp, "image")
    first_row_after = 54 + 36
    for i in range(first_row_after + 3, len(bmp)):
        if (i - 54) % 36 >= 3 and (i - 54) % 3 in (1, 2):  # the first pixel of a row reads the row before
            assert h[i] == bmp[i], i
    blue = [i for i in range(first_row_after + 3, len(bmp)) if (i - 54) % 3 == 0]
    assert np.mean([h[i] == bmp[i] for i in blue]) < 0.2  # random greys: blue stays a guess


def test_activity_buckets_the_hint_errors_of_the_neighbours_before():
    """Images: 2x left + above + above-left + above-right + 2 and 3 pixels left, same channel;
    audio: 2x one sample frame back + 2x two + three; never the byte itself."""
    bmp = _bmp(10, 6, seed=3)
    h, act = stride_hints(bmp, "image")
    err = [abs(b - int(x)) if x >= 0 else 0 for b, x in zip(bmp, h)]
    first = 54 + 32 + 3
    assert (act[:first] == 0).all()
    for i in range(first, len(bmp) + 1):
        e = 2 * err[i - 3] + err[i - 32] + err[i - 35] + err[i - 29] + err[i - 6] + err[i - 9]
        assert act[i] == min(int(np.floor(1.2 * np.log2(1 + e))), ACTIVITY_BUCKETS - 1)
    assert len(set(act[first:].tolist())) > 3
    wav = pcm_to_wav(
        np.random.default_rng(4).integers(0, 256, 300, dtype=np.uint8).tobytes(), rate=8000, width=2, channels=1
    )
    h, act = stride_hints(wav, "audio")
    err = [abs(b - int(x)) if x >= 0 else 0 for b, x in zip(wav, h)]
    for i in range(46, len(wav) + 1):
        e = 2 * err[i - 2] + 2 * err[i - 4] + err[i - 6]
        assert act[i] == activity_bucket(e)
    assert activity_bucket(0) == 0 and activity_bucket(10**6) == ACTIVITY_BUCKETS - 1


def test_row_hints_stream_like_file_hints():
    """Generation keeps hints per row byte by byte; they must be what scoring computes per file."""
    wav = pcm_to_wav(
        np.random.default_rng(5).integers(100, 140, 400, dtype=np.uint8).tobytes(), rate=8000, width=1, channels=1
    )
    y4m = y4m_header(4, 4, 5) + b"".join(b"FRAME\n" + bytes((np.arange(24) * k) % 256) for k in range(4))
    for data, modality, cut in (
        (_bmp(12, 8, seed=1) * 2, "image", 100),  # a second copy: the match model fires
        (wav, "audio", 60),
        (y4m, "video", len(y4m_header(4, 4, 5)) + 10),
    ):
        for learn in (True, False):  # frozen: hints from the context only, where they learn
            fh = file_hints(data, modality, None if learn else cut)
            assert (fh.activity > 0).any()
            row = RowHints(data[:cut], modality, learn_from_output=learn)
            for i in range(cut, len(data) + 1):
                assert row.predict() == tuple(int(h[i]) for h in fh), (modality, learn, i)
                if i < len(data):
                    row.update(data[i])


def test_kernel_is_the_mixture_p_times_exp_k_of_the_offset():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 262)).astype(np.float32)
    hints = np.array([0, 255, 100, -1])  # both edges of the byte range, the middle, none
    activity = np.array([0, 3, ACTIVITY_BUCKETS - 1, 2])
    kernel = StrideKernel(rng.normal(size=StrideKernel.zeros().weights.shape))
    mods = modality_index(["image", "audio", "video", "image"])
    out = kernel.apply(logits, hints, activity, mods)
    p = _softmax(logits.astype(np.float64))
    for r, h in enumerate(hints):
        want = p[r].copy()
        if h >= 0:
            for d, k in zip(OFFSETS, kernel.weights[mods[r], activity[r]]):
                if 0 <= h + d < N_BYTES:
                    want[h + d] *= np.exp(k)
        np.testing.assert_allclose(_softmax(out[r].astype(np.float64)), want / want.sum(), rtol=1e-4, atol=1e-8)


def test_the_kernel_fit_finds_how_far_from_the_hint_bytes_come():
    rng = np.random.default_rng(1)
    n = 5000
    came = np.clip(np.round(rng.normal(0, 2, n)).astype(int), -RADIUS, RADIUS) + RADIUS  # near the hint
    flat = np.full((n, len(OFFSETS)), np.log(1 / 256))  # a network that knows nothing
    video, calm = modality_index(["video"] * n), np.zeros(n, dtype=np.int64)
    k = fit_kernel(video, calm, flat, came).weights[video[0], 0]
    assert k[RADIUS] > k[RADIUS + 3] > k[RADIUS + 8] and k[RADIUS] > k[RADIUS - 3] > k[RADIUS - 8]
    assert k[RADIUS] > 3  # the byte above is ~40x likelier than chance here
    assert (fit_kernel(video, calm, flat, np.full(n, -1)).weights <= 0).all()  # never near it


def test_each_activity_bucket_learns_its_own_spread():
    """Bytes come close to the hint in a calm bucket and far from it in a busy one: the calm
    kernel is sharper; a bucket without positions keeps the modality's pooled kernel."""
    rng = np.random.default_rng(6)
    n = 8000
    busy = np.arange(n) % 2
    spread = np.where(busy == 1, 6.0, 0.7)
    came = np.clip(np.round(rng.normal(0, spread)).astype(int), -RADIUS, RADIUS) + RADIUS
    flat = np.full((n, len(OFFSETS)), np.log(1 / 256))
    w = fit_kernel(modality_index(["image"] * n), busy * 5, flat, came).weights[modality_index(["image"])[0]]
    assert w[0, RADIUS] > w[5, RADIUS] + 1.0  # the calm bucket trusts the hint itself more
    assert w[5, RADIUS + 8] > w[0, RADIUS + 8] + 1.0  # the busy one spreads wider
    assert np.allclose(w[3], w[7]) and not np.allclose(w[3], 0)  # unseen buckets: the pooled kernel


def test_a_kernel_saved_without_activity_buckets_serves_unchanged():
    rng = np.random.default_rng(7)
    old = {
        "radius": RADIUS,
        "weights": {m: rng.normal(size=len(OFFSETS)).tolist() for m in ("text", "image", "audio", "video", "binary")},
    }
    kernel = StrideKernel.from_dict(old)
    logits = rng.normal(size=(3, 262)).astype(np.float32)
    hints, mods = np.array([5, 200, 128]), modality_index(["image", "audio", "video"])
    for a in range(ACTIVITY_BUCKETS):
        out = kernel.apply(logits, hints, np.full(3, a), mods)
        np.testing.assert_allclose(
            out[0, :22] - logits[0, :22], np.array(old["weights"]["image"])[RADIUS - 5 :], rtol=1e-5
        )
    assert StrideKernel.from_dict(kernel.to_dict()).weights.tolist() == np.round(kernel.weights, 6).tolist()


def test_fit_mixer_on_logits_makes_the_data_likelier_and_uses_both_hints():
    """Fitted on the network's logits of positions with both hints, the mixer's log-likelihood of
    those positions is higher than the network's, and each part contributes."""
    rng = np.random.default_rng(2)
    n = 6000
    logits = rng.normal(0, 1, (n, 262)).astype(np.float32)
    stride = rng.integers(20, 236, n)
    match = np.where(rng.random(n) < 0.5, stride, -1)  # where both fire, on one byte (a repeated frame)
    lengths = np.where(match >= 0, rng.integers(5, 300, n), 0)
    r = rng.random(n)
    targets = np.where(
        r < 0.3,
        np.where(match >= 0, match, stride + 5),  # the match, where there is one
        np.where(r < 0.7, stride + rng.integers(-3, 4, n), rng.integers(0, 256, n)),
    )
    hints = Hints(match, lengths, stride, np.zeros(n, dtype=np.int64))
    mods = modality_index(["video"])
    stats = MixerStats()
    stats.add(logits, targets, hints, mods)
    mixer = fit_mixer(stats)

    def ll(x):
        z = x.astype(np.float64)
        return float((z[np.arange(n), targets] - np.logaddexp.reduce(z, axis=-1)).sum())

    net, mixed = ll(logits), ll(mixer.apply(logits, hints, mods))
    only_match = ll(Mixer(mixer.match, StrideKernel.zeros()).apply(logits, hints, mods))
    assert net < only_match < mixed
    assert (mixed - net) / n > 1.0  # nats per position
    # the kernel is fitted on top of the match bias, not beside it: a kernel fitted on the
    # network's logits alone does worse once both are applied
    alone = fit_kernel(
        stats.get("s_mod", None), stats.get("s_act", None), stats.get("s_win", None), stats.get("s_came", None)
    )
    assert ll(Mixer(mixer.match, alone).apply(logits, hints, mods)) < mixed - 0.01 * n


@pytest.mark.parametrize("learn_from_output", [True, False])
def test_each_decode_step_serves_what_whole_file_scoring_serves(learn_from_output):
    """Generation (`Mixer.step`, rows started from scoring's tail of the context) and scoring
    (`Mixer.apply` per position, then `Mixer.serve` over the file) give every byte the same
    log-probability: hints, the match trust's correction, the column and the n-gram expert alike. A row that
    does not learn from its output is scored with `learn_until` at the end of its context."""
    from obf.core.bits import log_probs_of
    from obf.core.vocab import EOS, PAD
    from obf.mixer.match import MatchTable
    from obf.mixer.mix import TAIL, Tail

    rng = np.random.default_rng(8)
    data = _bmp(24, 40, seed=4)
    data = data + data[54 : 54 + 3000]  # repeats: the match model and its correction work
    n, modality = len(data), "image"
    mixer = Mixer(
        MatchTable(rng.normal(1, 1, MatchTable.zeros().weights.shape)),
        StrideKernel(rng.normal(0, 0.5, StrideKernel.zeros().weights.shape)),
        columns=True,
        adapt=True,
        ngram=True,
        sparse=True,
    )
    logits = rng.normal(0, 2, (n + 1, 262)).astype(np.float32)  # a network's logits per position
    targets = np.r_[np.frombuffer(data, np.uint8).astype(np.int64), EOS]
    mods = modality_index([modality])
    cut = TAIL + 700
    until = None if learn_from_output else cut

    def served_with(learn_until):
        fh = file_hints(data, modality, learn_until)
        z = mixer.apply(logits, fh, mods)
        lp = log_probs_of(z[None], targets[None])[0]
        hint_lp = log_probs_of(z[None], np.where(fh.match >= 0, fh.match, PAD)[None])[0]
        return fh, lp, hint_lp, mixer.serve(data, fh, lp, hint_lp, learn_until)

    fh, lp, hint_lp, served = served_with(until)
    assert n - cut > 1500 and (fh.match[cut:] >= 0).mean() > 0.5
    tail = Tail(lp[cut - TAIL : cut], hint_lp[cut - TAIL : cut], file_hints(data[:cut], modality))
    row = RowHints(data[:cut], modality, tail, learn_from_output=learn_from_output, sparse=True)
    for i in range(cut, n + 1):
        out = mixer.step(logits[i][None], [row], mods).astype(np.float64)[0]
        assert abs(np.logaddexp.reduce(out)) < 1e-6  # log-probabilities: every part keeps the sum at 1
        np.testing.assert_allclose(out[targets[i]], served[i], atol=1e-4)
        if i < n:
            row.update(int(targets[i]))
    without = Mixer(mixer.match, mixer.stride)
    assert served.sum() > without.serve(data, fh, lp, hint_lp, until).sum()  # the adaptive parts help here
    no_ngram = Mixer(mixer.match, mixer.stride, columns=True, adapt=True)
    assert served.sum() > no_ngram.serve(data, fh, lp, hint_lp, until).sum()
    saved = Mixer.from_dict(mixer.to_dict())
    assert saved.sparse and saved.to_dict()["ngram_sparse"] == mixer.to_dict()["ngram_sparse"]
    before = {k: v for k, v in mixer.to_dict().items() if k != "ngram_sparse"}  # a mixer saved before the sparse model
    assert not Mixer.from_dict(before).sparse
    if not learn_from_output:  # the context is scored alike; only what comes after it differs
        np.testing.assert_allclose(served[:cut], served_with(None)[3][:cut], atol=1e-9)
        assert not np.allclose(served[cut:], served_with(None)[3][cut:])


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_a_file_written_from_nothing_gets_its_stride_hint_once_its_header_is(modality):
    """A `paired` target starts empty: its row finds the layout when the header is written and
    from then on hints exactly as scoring the finished file does (the seed took the header once,
    when the row was made, and never hinted)."""
    if modality == "image":
        data = _bmp(8, 8, seed=3)
    elif modality == "audio":
        data = pcm_to_wav(
            np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes(), rate=8000, width=1, channels=1
        )
    else:
        frame = 6 + 4 * 4 * 3 // 2
        data = y4m_header(4, 4, 5) + b"".join(
            b"FRAME\n" + bytes(np.random.default_rng(f).integers(0, 256, frame - 6, dtype=np.uint8)) for f in range(4)
        )
    fh = file_hints(data, modality, 0)
    row = RowHints(b"", modality, learn_from_output=False)
    got = []
    for b in data:
        got.append(row.predict())
        row.update(b)
    got.append(row.predict())
    assert [g[2] for g in got] == fh.stride.tolist() and [g[3] for g in got] == fh.activity.tolist()
    assert (fh.stride >= 0).sum() > len(data) // 2
