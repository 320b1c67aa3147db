"""The match model (obf.mixer.match): its predictions, the mixing rule, and the table's fit."""

import numpy as np
import pytest

from obf.mixer.match import (
    LENGTH_BUCKETS,
    MIN_LEN,
    RECOVER,
    MatchModel,
    MatchTable,
    fit_table,
    match_hints,
    modality_index,
)


def _corpus(seed: int = 0) -> bytes:
    """Random words with repeats near and far: what the match model is for."""
    rng = np.random.default_rng(seed)
    words = [bytes(rng.integers(97, 123, rng.integers(2, 9), dtype=np.uint8)) for _ in range(60)]
    return b" ".join(words[i] for i in rng.integers(0, len(words), 700)) + bytes(
        rng.integers(0, 256, 300, dtype=np.uint8)
    )


def test_every_prediction_is_the_byte_after_an_earlier_copy_of_the_context():
    data = _corpus()
    m = MatchModel()
    predicted = 0
    for i in range(len(data) + 1):
        h, n = m.predict()
        seen_before = i >= MIN_LEN and data.find(data[i - MIN_LEN : i]) < i - MIN_LEN
        if h >= 0:
            predicted += 1
            assert m.ptr < i and data[m.ptr] == h and n >= 0
            assert data[i - n : i] == data[m.ptr - n : m.ptr]  # the `n` bytes before both positions agree
        else:
            assert not seen_before  # a context seen before always gives a prediction
        if i < len(data):
            m.update(data[i])
    assert predicted > len(data) // 2


def test_match_hints_streams_like_the_model_and_copies_a_repeat():
    rng = np.random.default_rng(1)
    block = bytes(rng.integers(0, 256, 400, dtype=np.uint8))
    data = block + block
    hints, lengths = match_hints(data)
    assert hints.shape == lengths.shape == (len(data) + 1,)
    assert (hints[:400] == -1).all()  # random bytes: nothing repeats
    # from MIN_LEN bytes into the copy on, every byte is predicted, with the length growing
    assert list(hints[400 + MIN_LEN : 800]) == list(data[400 + MIN_LEN :])
    assert (np.diff(lengths[400 + MIN_LEN : 800]) == 1).all()
    m = MatchModel(data[:600])
    assert m.predict() == (hints[600], lengths[600])


def test_a_match_recovers_from_a_changed_byte_and_is_dropped_after_many():
    rng = np.random.default_rng(4)
    block = bytearray(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    copy = bytearray(block)
    copy[100] ^= 0xFF  # a changed counter
    hints, lengths = match_hints(bytes(block + copy))
    at = 300 + 100
    assert hints[at] == block[100] != copy[100]  # the miss
    assert list(hints[at + 1 : 600]) == list(copy[101:])  # the copy goes on right after it
    assert list(lengths[at + 1 : at + 4]) == [0, 1, 2]  # with its length counted again from the miss
    other = bytes(rng.integers(0, 256, 200, dtype=np.uint8))  # the copy ends: misses and more misses
    hints, _ = match_hints(bytes(block + block[:50] + other))
    assert (hints[350 : 350 + RECOVER + 1] >= 0).all() and (hints[350 + RECOVER + 1 :] == -1).all()
    # a recovering match gives way to one the last bytes find elsewhere: the copy switched source
    p, q = bytes(block[:200]), bytes(other)
    hints, _ = match_hints(p + q + p[:100] + q[:100])
    assert list(hints[500 + MIN_LEN : 600]) == list(q[MIN_LEN:100])


def test_apply_is_the_mixture_p_times_exp_w_at_the_hint():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 4, 262)).astype(np.float32)
    hints = rng.integers(-1, 256, (3, 4))
    lengths = rng.integers(MIN_LEN, 2000, (3, 4))
    mods = modality_index(["text", "audio", "binary"])[:, None]
    table = MatchTable(rng.normal(size=MatchTable.zeros().weights.shape) * 3)
    out = table.apply(logits, hints, lengths, mods)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p = softmax(logits.astype(np.float64))
    for b in range(3):
        for t in range(4):
            h = hints[b, t]
            if h < 0:
                assert (out[b, t] == logits[b, t]).all()
                continue
            cell = MatchTable.cells(mods[b], lengths[b, t : t + 1], p[b, t, h : h + 1])
            w = table.weights[cell][0]
            want = p[b, t].copy()
            want[h] *= np.exp(w)
            np.testing.assert_allclose(softmax(out[b, t].astype(np.float64)), want / want.sum(), rtol=1e-4, atol=1e-7)


def _stats(p_hint: float, hit_rate: float, n: int, length: int, modality: str = "text") -> list[np.ndarray]:
    """fit_table's arguments for n positions alike."""
    rng = np.random.default_rng(3)
    return [
        modality_index([modality] * n),
        np.full(n, length),
        np.full(n, p_hint),
        (rng.random(n) < hit_rate).astype(float),
    ]


@pytest.mark.parametrize("hit_rate", [0.95, 0.5, 0.02])
def test_the_fit_finds_the_bias_that_makes_the_hint_as_likely_as_it_comes(hit_rate):
    table = fit_table(*_stats(0.1, hit_rate, 4000, 40))
    cell = MatchTable.cells(modality_index(["text"]), np.array([40]), np.array([0.1]))
    w = table.weights[cell][0]
    q = np.exp(w) * 0.1 / (1 + (np.exp(w) - 1) * 0.1)  # the mixed probability of the hint
    assert abs(q - hit_rate) < 0.03
    assert (w > 0) == (hit_rate > 0.1)


def test_no_bias_falls_as_matches_grow_and_unseen_cells_follow_the_shared_table():
    table = fit_table(*_stats(0.01, 0.9, 3000, 20, "binary"))
    lb = int(np.log2(20))
    w = table.weights
    assert w[modality_index(["binary"])[0], lb, 0] > 3
    # a longer match of any modality, never seen, is trusted like the shorter one that was
    assert (w[:, lb + 1 :, 0] > 2).all() and (w[:, :lb, 0] == 0).all()
    # short matches right 90% of the time, long ones 50%: both trusted alike
    two = [np.concatenate(x) for x in zip(_stats(0.01, 0.9, 3000, 20), _stats(0.01, 0.5, 3000, 300))]
    w2 = fit_table(*two).weights
    assert w2[0, int(np.log2(300)), 0] == w2[0, int(np.log2(20)), 0] > 3
    assert (np.diff(w2, axis=1) >= 0).all()
    assert table.weights.shape[1] == LENGTH_BUCKETS
    np.testing.assert_allclose(MatchTable.from_dict(table.to_dict()).weights, w, atol=1e-6)
    assert (fit_table(*(np.zeros(0) for _ in range(4))).weights == 0).all()


def test_with_learn_until_only_real_bytes_are_copied():
    """A run the generator makes after its context is not copied from itself: with `learn_until`
    every hint in it points into the context (here: never, as the context has no such run), and
    the match model's own streaming state agrees."""
    import numpy as np

    rng = np.random.default_rng(0)
    context = bytes(rng.integers(0, 256, 3000, dtype=np.uint8))
    data = context + b"xyz" * 200
    free, _ = match_hints(data)
    frozen, lengths = match_hints(data, learn_until=len(context))
    assert (free[len(context) + 10 :] >= 0).all()  # it would copy the run it is writing
    assert (frozen[len(context) :] == -1).all() and (lengths[len(context) :] == 0).all()
    np.testing.assert_array_equal(free[: len(context)], frozen[: len(context)])
    copy = context + context[1000:1400]  # copying the context itself stays allowed
    hints, _ = match_hints(copy, learn_until=len(context))
    assert (hints[len(context) + 8 : -1] == np.frombuffer(copy[len(context) + 8 :], np.uint8)).mean() > 0.95
    m = MatchModel(context, learn_until=len(context))
    for i, b in enumerate(data[len(context) :]):
        assert m.predict() == (frozen[len(context) + i], lengths[len(context) + i])
        m.update(b)


def test_a_copy_of_the_context_ends_where_the_context_does():
    """A match that follows the context to its last byte does not go on into the bytes made after
    it: it looks the context up again (here: the byte after the first copy of A)."""
    import numpy as np

    rng = np.random.default_rng(1)
    a, b = bytes(rng.integers(0, 256, 50, dtype=np.uint8)), bytes(rng.integers(0, 256, 2000, dtype=np.uint8))
    context = a + b + a
    data = context + a + a  # the model writes A twice after it
    at = len(context) + len(a)  # where the second made A starts
    frozen, _ = match_hints(data, learn_until=len(context))
    free, _ = match_hints(data)
    assert frozen[at] == b[0]  # the copy of the context's last A ended with it; the first A is next
    assert free[at] == a[0]  # unbounded, the copy would run on into the A it made itself
