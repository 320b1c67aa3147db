"""A check shared by the mixer's file-adaptive experts: streamed byte by byte, as generation runs
them, an expert serves every position what scoring the whole file serves it."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_streams_like_scoring(state: Any, data: bytes, log_p: np.ndarray, want: np.ndarray, cut: int) -> None:
    """Step `state` (made from `data[:cut]`) over positions cut..n of `data` (n bytes, then EOS):
    at each, `state.mix` of the (n+1, V) `log_p` row is a distribution whose target gets
    `want`'s log-probability (whole-file scoring), then the byte and its log p go to `update`."""
    n = len(data)
    targets = np.r_[np.frombuffer(data, np.uint8).astype(np.int64), 258]
    lp = log_p[np.arange(n + 1), targets]
    for i in range(cut, n + 1):
        mixed = state.mix(log_p[i])
        np.testing.assert_allclose(np.exp(mixed).sum(), 1.0, rtol=1e-9)
        np.testing.assert_allclose(mixed[targets[i]], want[i], rtol=1e-9, atol=1e-9)
        if i < n:
            state.update(data[i], lp[i])
