"""The column expert (obf.mixer.columns): an order-0 model per byte column, mixed with the network by
the evidence of the bytes before; streaming (generation) equals whole-file scoring."""

import numpy as np

from obf.core.vocab import N_BYTES
from obf.mixer.columns import (
    PRIOR_LOGIT,
    SMOOTHING,
    STRIDES,
    WINDOW,
    ColumnState,
    column_log_probs,
    evidence_logits,
    file_log_probs,
)

from .streaming import assert_streams_like_scoring


def _records(n: int, seed: int = 0) -> bytes:
    """float64 samples of a slow signal: the exponent bytes repeat, the low mantissa bytes do not."""
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.normal(0, 0.01, n)) + 1.5).astype("<f8").tobytes()


def test_each_byte_is_coded_by_the_counts_of_its_column_under_the_best_stride_so_far():
    data = _records(40) + bytes(range(7))
    lq, pick = column_log_probs(data)
    cost = np.zeros(len(STRIDES))
    for i, b in enumerate(data):
        want_pick = int(np.argmin(cost))
        assert pick[i] == want_pick
        per = []
        for k in STRIDES:
            column = data[i % k:i:k]
            per.append(np.log((column.count(b) + SMOOTHING) / (len(column) + N_BYTES * SMOOTHING)))
        np.testing.assert_allclose(lq[i], per[want_pick], rtol=1e-12)
        cost -= np.array(per)
    assert set(pick[200:].tolist()) == {STRIDES.index(8)}  # float64 records: eight columns


def test_the_mixture_follows_whichever_expert_predicted_the_window_before():
    n = 3000
    lq = np.where(np.arange(n) < 1500, np.log(0.5), np.log(1 / 256))
    lp = np.full(n, np.log(0.05))
    logit = evidence_logits(lq, lp)
    assert logit[0] == PRIOR_LOGIT and logit[1] == PRIOR_LOGIT + lq[0] - lp[0]
    assert logit[1000] > 20 and logit[-1] < -20  # columns first, the network after the switch
    np.testing.assert_allclose(logit[2500], PRIOR_LOGIT + WINDOW * (lq[-1] - lp[-1]))  # only the last WINDOW bytes


def test_float_records_cost_less_and_random_bytes_no_more_than_the_network():
    flat = np.full(8001, np.log(1 / 256))  # a network that knows nothing about these bytes
    records = _records(1000)
    assert -file_log_probs(records, flat).sum() / np.log(2) / len(records) < 7.0
    noise = np.random.default_rng(1).integers(0, 256, 8000, dtype=np.uint8).tobytes()
    assert -file_log_probs(noise, flat).sum() / np.log(2) / len(noise) < 8.0 + 0.01


def test_streaming_equals_whole_file_scoring_and_is_a_distribution():
    rng = np.random.default_rng(2)
    data = _records(200, seed=3) + bytes(rng.integers(0, 256, 300, dtype=np.uint8))
    n = len(data)
    logits = rng.normal(0, 2, (n + 1, 260))  # the network's (already mixed) logits per position
    log_p = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    targets = np.r_[np.frombuffer(data, np.uint8).astype(np.int64), 258]
    lp = log_p[np.arange(n + 1), targets]
    want = file_log_probs(data, lp)
    cut = 700
    state = ColumnState(data[:cut], lp[max(0, cut - WINDOW):cut])
    assert_streams_like_scoring(state, data, log_p, want, cut)
    fresh = ColumnState(b"", np.zeros(0))
    np.testing.assert_allclose(fresh.mix(log_p[0])[data[0]], file_log_probs(data[:1], lp[:2])[0])


def test_after_learn_until_bytes_are_coded_with_the_real_bytes_counts_stride_and_weight():
    rng = np.random.default_rng(4)
    real = _records(150, seed=5)
    made = bytes([7]) * 900  # what a collapsing generator would write
    data = real + made
    n, cut = len(data), len(real)
    lp = np.log(rng.uniform(0.001, 0.02, n + 1))
    lp[cut:] = np.log(0.01)  # the network's view of the made bytes, the same for each
    frozen, free = file_log_probs(data, lp, learn_until=cut), file_log_probs(data, lp)
    np.testing.assert_array_equal(frozen[:cut], free[:cut])
    assert (free[cut + 100:n] > frozen[cut + 100:n]).all()  # learning from the run would code it ever cheaper
    same_column = frozen[cut + 100:n:8]  # stride picked on the records (8 bytes or a divisor)
    np.testing.assert_allclose(same_column, same_column[0], rtol=1e-12)  # nothing learned: no change
    state = ColumnState(real, lp[max(0, cut - WINDOW):cut])
    state.freeze()
    for i in range(cut, n):
        log_p = np.full(260, -1e9)
        log_p[data[i]] = lp[i]
        np.testing.assert_allclose(state.mix(log_p)[data[i]], frozen[i], rtol=1e-9, atol=1e-9)
        state.update(data[i], lp[i])
