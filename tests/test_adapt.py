"""The match trust re-estimated in each file (obf.mixer.adapt): the windowed correction, its effect, and
streaming (generation) equal to whole-file scoring."""

import numpy as np

from obf.mixer.adapt import LIMIT, SMOOTHING, WINDOW, AdaptState, adapt_log_probs, cells, corrections


def _events(n: int, seed: int):
    rng = np.random.default_rng(seed)
    match = np.where(rng.random(n) < 0.6, rng.integers(0, 256, n), -1)
    lengths = np.where(match >= 0, rng.integers(0, 300, n), 0)
    targets = np.where(rng.random(n) < 0.7, np.maximum(match, 0), rng.integers(0, 256, n))
    hint_lp = np.where(match >= 0, np.log(rng.uniform(0.01, 0.99, n)), 0.0)
    lp = np.where(targets == match, hint_lp, np.log(rng.uniform(0.001, 0.2, n)))
    return targets, match, lengths, lp, hint_lp


def test_each_correction_comes_from_the_earlier_events_of_its_cell_in_the_window():
    targets, match, lengths, _, hint_lp = _events(6000, 0)
    at = np.flatnonzero(match >= 0)
    p, hit = np.exp(hint_lp[at]), (targets[at] == match[at]).astype(float)
    c = cells(lengths[at], p)
    a = corrections(at, c, p, hit)
    for k in range(0, len(at), 97):
        sel = [j for j in range(k) if c[j] == c[k] and at[j] > at[k] - WINDOW]
        h, q, n = hit[sel].sum(), p[sel].sum(), len(sel)
        want = np.log((h + SMOOTHING) / (n - h + SMOOTHING)) - np.log((q + SMOOTHING) / (n - q + SMOOTHING))
        np.testing.assert_allclose(a[k], np.clip(want, -LIMIT, LIMIT), rtol=1e-9, atol=1e-9)
    assert a[0] == 0.0 and len(set(c.tolist())) > 10


def test_a_match_more_often_right_than_predicted_gains_trust_and_one_less_often_loses_it():
    n = 3000
    match = np.full(n, 7)
    lengths = np.full(n, 40)
    hint_lp = np.full(n, np.log(0.3))
    right = adapt_log_probs(np.full(n, 7), match, lengths, hint_lp, hint_lp)  # always right, predicted 30%
    assert right[-1] > np.log(0.9) and right[0] == np.log(0.3)
    wrong_lp = np.full(n, np.log(0.7 / 255))
    wrong = adapt_log_probs(np.full(n, 8), match, lengths, wrong_lp, hint_lp)  # never right
    assert wrong[-1] > wrong_lp[-1]  # the other bytes share what the hint lost


def test_streaming_equals_whole_file_scoring():
    targets, match, lengths, lp, hint_lp = _events(7000, 1)
    want = adapt_log_probs(targets, match, lengths, lp, hint_lp)
    cut = 4500
    context = bytes(targets[:cut].astype(np.uint8))
    tail = slice(cut - WINDOW - 10, cut)
    state = AdaptState.of_context(context, match, lengths, hint_lp[tail])
    for i in range(cut, len(targets)):
        p = float(np.exp(hint_lp[i]))
        a = state.bias(int(match[i]), int(lengths[i]), p)
        got = lp[i] + (a if targets[i] == match[i] else 0.0) - np.log1p(p * np.expm1(a)) if match[i] >= 0 else lp[i]
        np.testing.assert_allclose(got, want[i], rtol=1e-9, atol=1e-9)
        state.update(int(targets[i]))


def test_after_learn_until_every_event_gets_the_correction_the_real_bytes_gave():
    """What generation serves after a real context: the trust as estimated at its end, however
    the bytes the model makes afterwards fare (here: always right, which would raise it)."""
    targets, match, lengths, lp, hint_lp = _events(6000, 3)
    cut = 4000
    targets = targets.copy()
    targets[cut:] = np.maximum(match[cut:], 0)  # every later hint comes true
    at = np.flatnonzero(match >= 0)
    p, hit = np.exp(hint_lp[at]), (targets[at] == match[at]).astype(float)
    c = cells(lengths[at], p)
    free, frozen = corrections(at, c, p, hit), corrections(at, c, p, hit, learn_until=cut)
    before = at < cut
    np.testing.assert_array_equal(free[before], frozen[before])
    for k in np.flatnonzero(~before):
        sel = [j for j in range(len(at)) if c[j] == c[k] and cut - WINDOW < at[j] < cut]
        h, q, n = hit[sel].sum(), p[sel].sum(), len(sel)
        want = np.log((h + SMOOTHING) / (n - h + SMOOTHING)) - np.log((q + SMOOTHING) / (n - q + SMOOTHING))
        np.testing.assert_allclose(frozen[k], np.clip(want, -LIMIT, LIMIT), rtol=1e-9, atol=1e-9)
    assert (free[~before] > frozen[~before]).mean() > 0.5  # learning from the later hits would trust them more
