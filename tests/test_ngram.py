"""The n-gram expert (obf.mixer.ngram): an order-0..4 model of the file itself and a model of its
sparse contexts, mixed with the model by the weights that predicted the bytes before best;
streaming (generation) equals whole-file scoring."""

import numpy as np
import pytest

from obf.core.vocab import N_BYTES
from obf.mixer.ngram import (
    CAP,
    DISCOUNT,
    ESCAPE,
    ORDER,
    SMOOTHING,
    SPARSE,
    SPARSE_WEIGHTS,
    WEIGHTS,
    WINDOW,
    NgramState,
    file_log_probs,
    grid,
    ngram_log_probs,
    sparse_log_probs,
)

from .streaming import assert_streams_like_scoring


def _brute_chain(data: bytes, i: int, chain: list[list[int]], seen: int | None = None) -> np.ndarray:
    """(256,) q of byte i under a chain of contexts (each the offsets back of its bytes), from the
    definition, counting the bytes before `seen` (default: before i)."""
    seen = i if seen is None else min(seen, i)
    q = np.array([(data[:seen].count(v) + SMOOTHING) / (seen + N_BYTES * SMOOTHING) for v in range(N_BYTES)])

    def at(j: int, offsets: list[int]) -> list[int | None]:
        return [data[j - o] if j - o >= 0 else None for o in offsets]  # None: before the file

    for offsets in chain:
        after = [data[j] for j in range(seen) if at(j, offsets) == at(i, offsets)]
        c = np.array([after.count(v) for v in range(N_BYTES)], dtype=np.float64)
        q = (np.maximum(c - DISCOUNT, 0) + (ESCAPE + DISCOUNT * np.count_nonzero(c)) * q) / (len(after) + ESCAPE)
    return q


def _brute_q(data: bytes, i: int, seen: int | None = None) -> np.ndarray:
    """(256,) q of byte i: the chain of the last 1..ORDER bytes."""
    return _brute_chain(data, i, [list(range(1, k + 1)) for k in range(1, ORDER + 1)], seen)


def _brute_s(data: bytes, i: int, seen: int | None = None) -> np.ndarray:
    """(256,) the sparse model's q of byte i: the bytes 2 and 3 back, and 4 and 8 back."""
    return np.mean([_brute_chain(data, i, chain, seen) for chain in ([[2], [2, 3]], [[4], [4, 8]])], axis=0)


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


def test_the_sparse_model_codes_each_byte_by_the_bytes_that_skip_the_nearest():
    assert [[sorted(c) for c in chain] for chain in SPARSE] == [[[2], [2, 3]], [[4], [4, 8]]]
    data = bytes(range(10)) * 3 + _text(12) + b"\x00\xff\x01"
    ls = sparse_log_probs(data)
    for i in range(len(data)):
        s = _brute_s(data, i)
        np.testing.assert_allclose(s.sum(), 1.0, rtol=1e-12)
        np.testing.assert_allclose(ls[i], np.log(s[data[i]]), rtol=1e-12)
    cut = 50
    frozen = sparse_log_probs(data, learn_until=cut)
    np.testing.assert_array_equal(frozen[:cut], ls[:cut])
    for i in range(cut, len(data)):
        np.testing.assert_allclose(frozen[i], np.log(_brute_s(data, i, seen=cut)[data[i]]), rtol=1e-12)


def test_the_mixtures_are_pairs_of_weights_and_without_the_sparse_model_the_expert_as_it_was():
    log_w0, log_w = grid(True)
    w = np.exp(log_w)
    assert w.shape[1] == 2 and (w.sum(axis=1) <= CAP + 1e-9).all()
    np.testing.assert_allclose(np.exp(log_w0), 1 - w.sum(axis=1))
    pairs = {(a, b) for a in WEIGHTS for b in SPARSE_WEIGHTS if a + b <= CAP + 1e-9}
    assert {tuple(p) for p in np.round(w, 9)} == pairs
    old_w0, old_w = grid(False)
    np.testing.assert_allclose(np.exp(old_w[:, 0]), WEIGHTS)
    np.testing.assert_allclose(np.exp(old_w0), 1 - WEIGHTS)
    data = _text(300, seed=9)
    lp = np.log(np.random.default_rng(9).uniform(0.001, 0.02, len(data) + 1))
    lq = ngram_log_probs(data)
    out = file_log_probs(data, lp)  # the expert without its sparse model: by the definition over WEIGHTS
    for i in (WINDOW - 1, len(data) - 1):
        ev = [np.log((1 - w_) * np.exp(lp[: i]) + w_ * np.exp(lq[: i]))[max(i - WINDOW, 0) :].sum() for w_ in WEIGHTS]
        pi = np.exp(np.array(ev) - np.logaddexp.reduce(ev))
        mean_w = float(pi @ WEIGHTS)
        np.testing.assert_allclose(out[i], np.log((1 - mean_w) * np.exp(lp[i]) + mean_w * np.exp(lq[i])), rtol=1e-9)


def test_sparse_contexts_code_records_cheaper_than_the_nearest_bytes_alone():
    """Records whose fields repeat with the nearest byte random between them: the sparse model
    sees the field two and four bytes back, the n-grams of the last bytes see noise first."""
    rng = np.random.default_rng(10)
    recs = rng.integers(0, 256, (1500, 4), dtype=np.uint8)
    recs[:, 1] = rng.integers(0, 4, 1500) * 60  # byte 1 of each record: one of 4 codes
    recs[:, 3] = recs[:, 1] + 1  # byte 3 follows from byte 1, across the random byte 2
    data = recs.tobytes()
    flat = np.full(len(data) + 1, np.log(1 / 260))
    dense, both = file_log_probs(data, flat), file_log_probs(data, flat, sparse=True)
    assert -both.sum() < -dense.sum() - 0.5 * 1500 * np.log(2)  # half a bit per record, at least


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


@pytest.mark.parametrize("sparse", [False, True])
def test_streaming_equals_whole_file_scoring_and_is_a_distribution(sparse):
    data = _text(400, seed=3)
    n = len(data)
    _, log_p = _logits(n, 4)
    targets = np.r_[np.frombuffer(data, np.uint8).astype(np.int64), 258]
    lp = log_p[np.arange(n + 1), targets]
    want = file_log_probs(data, lp, sparse=sparse)
    cut = 700
    state = NgramState(data[:cut], lp[cut - WINDOW : cut], sparse)
    assert_streams_like_scoring(state, data, log_p, want, cut)
    if sparse:
        return
    last = slice(n - WINDOW, n)  # the evidence: each weight's mixture over the last WINDOW bytes
    lq = ngram_log_probs(data)[last]
    want_evidence = [np.log((1 - w) * np.exp(lp[last]) + w * np.exp(lq)).sum() for w in WEIGHTS]
    np.testing.assert_allclose(state.evidence, want_evidence, rtol=1e-9)
    for sp in (False, True):
        fresh = NgramState(b"", np.zeros(0), sp)
        np.testing.assert_allclose(fresh.mix(log_p[0])[data[0]], file_log_probs(data[:1], lp[:2], sparse=sp)[0],
                                   rtol=1e-12)


@pytest.mark.parametrize("sparse", [False, True])
def test_after_learn_until_bytes_are_coded_with_the_real_bytes_counts_and_weights(sparse):
    real = _text(300, seed=5)
    made = bytes([7]) * 900  # what a collapsing generator would write
    data = real + made
    n, cut = len(data), len(real)
    lp = np.log(np.random.default_rng(6).uniform(0.001, 0.02, n + 1))
    lp[cut:] = np.log(0.01)
    frozen, free = file_log_probs(data, lp, cut, sparse), file_log_probs(data, lp, sparse=sparse)
    np.testing.assert_array_equal(frozen[:cut], free[:cut])
    assert (free[cut + 100 : n] > frozen[cut + 100 : n]).all()  # learning from the run would code it ever cheaper
    settled = cut + (8 if sparse else ORDER)  # from here every context reads the run
    np.testing.assert_allclose(frozen[settled:n], frozen[settled], rtol=1e-12)  # nothing learned
    state = NgramState(real, lp[cut - WINDOW : cut], sparse)
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
