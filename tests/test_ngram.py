"""The n-gram expert (obf.mixer.ngram): an order-0..4 model of the file itself, mixed with the
model by the weights that predicted the bytes before best; streaming (generation) equals
whole-file scoring."""

import numpy as np

from obf.core.vocab import N_BYTES
from obf.mixer.ngram import (
    DISCOUNT,
    ESCAPE,
    ORDER,
    SMOOTHING,
    WEIGHTS,
    WINDOW,
    NgramState,
    file_log_probs,
    ngram_log_probs,
)

from .streaming import assert_streams_like_scoring


def _brute_q(data: bytes, i: int, seen: int | None = None) -> np.ndarray:
    """(256,) q of byte i from the definition, counting the bytes before `seen` (default: before i)."""
    seen = i if seen is None else min(seen, i)
    q = np.array([(data[:seen].count(v) + SMOOTHING) / (seen + N_BYTES * SMOOTHING) for v in range(N_BYTES)])
    padded = [None] * ORDER + list(data)  # None: before the file
    for k in range(1, ORDER + 1):
        ctx = padded[ORDER + i - k : ORDER + i]
        after = [padded[ORDER + j] for j in range(seen) if padded[ORDER + j - k : ORDER + j] == ctx]
        c = np.array([after.count(v) for v in range(N_BYTES)], dtype=np.float64)
        q = (np.maximum(c - DISCOUNT, 0) + (ESCAPE + DISCOUNT * np.count_nonzero(c)) * q) / (len(after) + ESCAPE)
    return q


def _text(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    words = [b"the ", b"byte ", b"model ", b"reads ", b"file ", b"a ", b"and ", b"writes "]
    return b"".join(words[j] for j in rng.integers(0, len(words), n))[: n * 4]


def test_each_byte_is_coded_by_the_interpolated_counts_of_the_bytes_before_it():
    data = _text(30) + b"\x00\xff" + _text(10, seed=1)
    lq = ngram_log_probs(data)
    for i in range(len(data)):
        q = _brute_q(data, i)
        np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-12)
        np.testing.assert_allclose(lq[i], np.log(q[data[i]]), rtol=1e-12)
    cut = 70  # counts of the first 70 bytes only, contexts of the bytes as they are
    frozen = ngram_log_probs(data, learn_until=cut)
    np.testing.assert_array_equal(frozen[:cut], lq[:cut])
    for i in range(cut, len(data)):
        np.testing.assert_allclose(frozen[i], np.log(_brute_q(data, i, seen=cut)[data[i]]), rtol=1e-12)


def test_prose_costs_less_with_the_expert_and_random_bytes_no_more():
    flat = np.full(4001, np.log(1 / 260))  # a model that knows nothing of these bytes
    text = _text(1000)
    assert -file_log_probs(text, flat).sum() / np.log(2) / len(text) < 4.0
    noise = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    assert -file_log_probs(noise, flat).sum() / np.log(2) / len(noise) < np.log2(260) + 0.02


def test_the_weights_follow_the_mixture_that_predicted_the_last_window():
    """A file the model predicts well, then one only the n-grams do: the mass moves from w = 0
    toward the largest weight within a window, and the evidence is of the last WINDOW bytes only."""
    good = np.random.default_rng(2).integers(0, 256, 1500, dtype=np.uint8).tobytes()
    data = good + b"ab" * 1500
    lp = np.full(len(data) + 1, np.log(1 / 260))
    lp[: len(good)] = np.log(0.9)  # the model knew the random part
    out = file_log_probs(data, lp)
    assert np.exp(out[len(good) - 10]) > 0.85  # w = 0 holds almost all the mass (the exact byte at 0.9)
    np.testing.assert_allclose(np.exp(out[-2]), (1 - WEIGHTS[-1]) / 260 + WEIGHTS[-1], rtol=0.05)
    late = file_log_probs(data[len(good) - WINDOW :], lp[len(good) - WINDOW :])
    np.testing.assert_allclose(late[WINDOW + WINDOW :], out[len(good) + WINDOW :], rtol=0.05)


def _logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    logits = np.random.default_rng(seed).normal(0, 2, (n + 1, 260))
    return logits, logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def test_streaming_equals_whole_file_scoring_and_is_a_distribution():
    data = _text(400, seed=3)
    n = len(data)
    _, log_p = _logits(n, 4)
    targets = np.r_[np.frombuffer(data, np.uint8).astype(np.int64), 258]
    lp = log_p[np.arange(n + 1), targets]
    want = file_log_probs(data, lp)
    cut = 700
    state = NgramState(data[:cut], lp[cut - WINDOW : cut])
    assert_streams_like_scoring(state, data, log_p, want, cut)
    last = slice(n - WINDOW, n)  # the evidence: each weight's mixture over the last WINDOW bytes
    lq = ngram_log_probs(data)[last]
    want_evidence = [np.log((1 - w) * np.exp(lp[last]) + w * np.exp(lq)).sum() for w in WEIGHTS]
    np.testing.assert_allclose(state.evidence, want_evidence, rtol=1e-9)
    fresh = NgramState(b"", np.zeros(0))
    np.testing.assert_allclose(fresh.mix(log_p[0])[data[0]], file_log_probs(data[:1], lp[:2])[0], rtol=1e-12)


def test_after_learn_until_bytes_are_coded_with_the_real_bytes_counts_and_weights():
    real = _text(300, seed=5)
    made = bytes([7]) * 900  # what a collapsing generator would write
    data = real + made
    n, cut = len(data), len(real)
    lp = np.log(np.random.default_rng(6).uniform(0.001, 0.02, n + 1))
    lp[cut:] = np.log(0.01)
    frozen, free = file_log_probs(data, lp, learn_until=cut), file_log_probs(data, lp)
    np.testing.assert_array_equal(frozen[:cut], free[:cut])
    assert (free[cut + 100 : n] > frozen[cut + 100 : n]).all()  # learning from the run would code it ever cheaper
    np.testing.assert_allclose(frozen[cut + ORDER : n], frozen[cut + ORDER], rtol=1e-12)  # nothing learned
    state = NgramState(real, lp[cut - WINDOW : cut])
    state.freeze()
    for i in range(cut, n):
        log_p = np.full(260, -1e9)
        log_p[data[i]] = lp[i]
        np.testing.assert_allclose(state.mix(log_p)[data[i]], frozen[i], rtol=1e-9, atol=1e-9)
        state.update(data[i], lp[i])


def test_with_nothing_learned_it_mixes_nothing_in():
    """A file written from nothing with nothing learned (`learn_until=0`: a `paired` target): q
    would stay uniform and the weights their prior, so the expert leaves the model's log p as it
    is, scored whole and written byte by byte alike. Learning as it goes, it mixes from the start."""
    data = _text(200, seed=7)
    n = len(data)
    _, log_p = _logits(n, 8)
    targets = np.r_[np.frombuffer(data, np.uint8).astype(np.int64), 258]
    lp = log_p[np.arange(n + 1), targets]
    np.testing.assert_array_equal(file_log_probs(data, lp, learn_until=0), lp)
    state = NgramState(b"", np.zeros(0))
    state.freeze()
    for i in range(n):
        np.testing.assert_allclose(state.mix(log_p[i]), log_p[i], rtol=1e-12)
        state.update(data[i], lp[i])
    assert not np.allclose(file_log_probs(data, lp)[:50], lp[:50])
