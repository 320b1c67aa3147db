"""Audio's stride hint (obf.mixer.lpc through obf.mixer.stride_hint): each 8-bit sample predicted
from the ones before it by weights fitted on the past alone, equal in scoring and in generation."""

import numpy as np
import pytest

from obf.formats.canonical import pcm_to_wav
from obf.mixer import lpc
from obf.mixer.mix import RowHints, file_hints
from obf.mixer.stride_hint import OFFSETS, RADIUS, StrideKernel, stride_hints


def _voice(n: int, channels: int = 1, seed: int = 0) -> bytes:
    """8-bit samples of decaying partials with a little noise: predictable from its past, and far
    from constant from one sample to the next."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    out = []
    for c in range(channels):
        x = sum(a * np.sin(2 * np.pi * f * t / 8000 + c) * np.exp(-t / 4000) for a, f in ((70, 700), (30, 1900)))
        out.append(np.clip(np.rint(128 + x + rng.normal(0, 0.7, n)), 0, 255))
    return np.stack(out, 1).astype(np.uint8).tobytes()


def test_the_hint_predicts_a_voice_far_better_than_the_previous_sample():
    wav = pcm_to_wav(_voice(3000), rate=8000, width=1, channels=1)
    raw = np.frombuffer(wav, np.uint8).astype(np.int64)
    h, _ = stride_hints(wav, "audio")
    assert (h[:45] == -1).all()
    assert (h[45 : 44 + lpc.WARMUP] == raw[44 : 43 + lpc.WARMUP]).all()  # warming up: the previous sample
    start = 44 + lpc.WARMUP
    error = np.abs(raw[start:] - h[start : len(raw)]).mean()
    previous = np.abs(raw[start:] - raw[start - 1 : -1]).mean()
    assert error < 2.0 and previous > 15 * error, (error, previous)


def test_the_weights_are_the_ridge_least_squares_fit_of_each_sample_on_the_ones_before():
    rng = np.random.default_rng(1)
    history = np.frombuffer(_voice(lpc.WINDOW + lpc.ORDER), np.uint8).astype(np.int64) - 128
    history = history + rng.integers(-3, 4, len(history))
    rows = [[history[t - 1 - j] for j in range(lpc.ORDER)] for t in range(lpc.ORDER, len(history))]
    x, y = np.array(rows, dtype=np.float64), history[lpc.ORDER :].astype(np.float64)
    gram = x.T @ x
    a = np.linalg.solve(gram + (lpc.RIDGE * np.trace(gram) / lpc.ORDER + 1.0) * np.eye(lpc.ORDER), x.T @ y)
    np.testing.assert_array_equal(lpc.weights(history), np.rint(a * 2**lpc.SHIFT))
    assert np.abs(x @ a - y).mean() < np.abs(x[:, 0] - y).mean() / 3  # it fits far better than the sample before


@pytest.mark.parametrize("channels", [1, 2])
def test_generation_hints_each_sample_as_scoring_the_whole_file_does(channels):
    """From contexts cut before warm-up, inside a block and at a block's start, byte by byte."""
    wav = pcm_to_wav(_voice(700, channels, seed=channels), rate=8000, width=1, channels=channels)
    fh = file_hints(wav, "audio")
    for samples in (5, lpc.WARMUP + 3, lpc.WARMUP + 4 * lpc.EVERY):
        cut = 44 + channels * samples
        row = RowHints(wav[:cut], "audio")
        for i in range(cut, len(wav) + 1):
            assert row.predict()[2:] == (fh.stride[i], fh.activity[i]), (channels, cut, i)
            if i < len(wav):
                row.update(wav[i])


def test_silence_and_wider_samples_keep_a_plain_hint():
    silent = pcm_to_wav(bytes([128]) * 500, rate=8000, width=1, channels=1)
    assert (stride_hints(silent, "audio")[0][45:] == 128).all()
    wide = pcm_to_wav(_voice(400) * 2, rate=8000, width=2, channels=1)
    h, _ = stride_hints(wide, "audio")
    assert [int(x) for x in h[46:300]] == list(wide[44:298])  # 16-bit: the same byte one sample back


def test_a_kernel_made_for_another_audio_predictor_is_refused():
    kernel = StrideKernel(np.random.default_rng(0).normal(size=StrideKernel.zeros().weights.shape))
    saved = kernel.to_dict()
    assert saved["audio"] == lpc.settings() and len(OFFSETS) == 2 * RADIUS + 1
    with pytest.raises(ValueError, match="another audio predictor"):
        StrideKernel.from_dict({**saved, "audio": {**lpc.settings(), "order": lpc.ORDER + 1}})
    before = {k: v for k, v in saved.items() if k != "audio"}  # saved before the linear prediction
    np.testing.assert_array_equal(StrideKernel.from_dict(before).weights, StrideKernel.from_dict(saved).weights)
