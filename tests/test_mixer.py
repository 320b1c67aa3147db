"""The stride hint (obf.stride) and the mixer of both hints (obf.mixer): hints from the file's own
layout, the kernel's mixing rule and fit, and the fit of the whole mixer on logits."""

import numpy as np

from obf.formats import pcm_to_wav, y4m_header
from obf.match import modality_index
from obf.mixer import Hints, Mixer, MixerStats, RowHints, file_hints, fit_mixer
from obf.stride import OFFSETS, RADIUS, StrideKernel, fit_kernel, stride_hints
from obf.vocab import N_BYTES


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _bmp(width: int, rows: int, seed: int = 0) -> bytes:
    from PIL import Image

    from obf.formats import image_to_bmp

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (rows, width, 3), dtype=np.uint8))
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return image_to_bmp(buf.getvalue(), max_side=64)


def test_stride_hints_predict_from_the_row_sample_frame_or_frame_before():
    bmp = _bmp(10, 6)  # 24-bit rows of 30 bytes padded to 32, after a 54-byte header
    h = stride_hints(bmp, "image")
    assert len(h) == len(bmp) + 1 and (h[:54 + 32 + 3] == -1).all()
    for i in range(54 + 32 + 3, len(bmp) + 1):  # JPEG-LS's median edge detector, same channel
        a, b, c = bmp[i - 3], bmp[i - 32], bmp[i - 35]
        want = min(a, b) if c >= max(a, b) else max(a, b) if c <= min(a, b) else a + b - c
        assert h[i] == want
    wav = pcm_to_wav(bytes(range(200)), rate=8000, width=2, channels=1)
    assert [int(x) for x in stride_hints(wav, "audio")[46:50]] == list(wav[44:48])  # one 2-byte sample back
    y4m = y4m_header(4, 4, 5) + (b"FRAME\n" + bytes(range(24))) * 3
    h = stride_hints(y4m, "video")
    start = len(y4m_header(4, 4, 5))
    assert (h[:start + 30] == -1).all() and [int(x) for x in h[start + 30:-1]] == list(y4m[start:-30])
    assert (stride_hints(b"plain text " * 20, "text") == -1).all()
    assert (stride_hints(bmp, "binary") == -1).all()


def test_row_hints_stream_like_file_hints():
    """Generation keeps hints per row byte by byte; they must be what scoring computes per file."""
    data = _bmp(12, 8, seed=1) * 2  # a second copy: the match model fires too
    fh = file_hints(data, "image")
    row = RowHints(data[:100], "image")
    for i in range(100, len(data)):
        assert row.predict() == (fh.match[i], fh.length[i], fh.stride[i])
        row.update(data[i])


def test_kernel_is_the_mixture_p_times_exp_k_of_the_offset():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 262)).astype(np.float32)
    hints = np.array([0, 255, 100, -1])  # both edges of the byte range, the middle, none
    kernel = StrideKernel(rng.normal(size=StrideKernel.zeros().weights.shape))
    mods = modality_index(["image", "audio", "video", "image"])
    out = kernel.apply(logits, hints, mods)
    p = _softmax(logits.astype(np.float64))
    for r, h in enumerate(hints):
        want = p[r].copy()
        if h >= 0:
            for d, k in zip(OFFSETS, kernel.weights[mods[r]]):
                if 0 <= h + d < N_BYTES:
                    want[h + d] *= np.exp(k)
        np.testing.assert_allclose(_softmax(out[r].astype(np.float64)), want / want.sum(), rtol=1e-4, atol=1e-8)


def test_the_kernel_fit_finds_how_far_from_the_hint_bytes_come():
    rng = np.random.default_rng(1)
    n = 5000
    came = np.clip(np.round(rng.normal(0, 2, n)).astype(int), -RADIUS, RADIUS) + RADIUS  # near the hint
    flat = np.full((n, len(OFFSETS)), np.log(1 / 256))  # a network that knows nothing
    k = fit_kernel(modality_index(["video"] * n), flat, came).weights[modality_index(["video"])[0]]
    assert k[RADIUS] > k[RADIUS + 3] > k[RADIUS + 8] and k[RADIUS] > k[RADIUS - 3] > k[RADIUS - 8]
    assert k[RADIUS] > 3  # the byte above is ~40x likelier than chance here
    assert (fit_kernel(modality_index(["video"] * n), flat, np.full(n, -1)).weights <= 0).all()  # never near it


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
    targets = np.where(r < 0.3, np.where(match >= 0, match, stride + 5),  # the match, where there is one
                       np.where(r < 0.7, stride + rng.integers(-3, 4, n), rng.integers(0, 256, n)))
    hints = Hints(match, lengths, stride)
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
    alone = fit_kernel(stats.get("s_mod", None), stats.get("s_win", None), stats.get("s_came", None))
    assert ll(Mixer(mixer.match, alone).apply(logits, hints, mods)) < mixed - 0.01 * n
