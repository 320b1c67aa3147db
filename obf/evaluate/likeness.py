"""How much a generated part looks like the real part it replaces: the measures that tell a
plausible continuation from a loop of one byte or a copy of what came before.

For a kept part K, a generated part G and the real part R that followed K in the file (the same
length as G):

* `lzma_ratio`: raw LZMA2 size of G over that of R. Near 1: G is about as predictable as the data
  it continues; near 0: a loop (one byte repeated compresses to nothing); well above 1: noise.
* `top_share` of G and of R: the share of the commonest byte. A part dominated by one byte where
  the real one is not has collapsed.
* `novelty_ratio`: what G adds to K (raw LZMA2 of K + G minus K alone) over what R adds. Near 0: G
  copies K; near 1: G brings as much new information as the real continuation.

Raw LZMA2 (no container) at preset 9e, as the evaluation's baselines. Numpy-free; no torch.
"""

from __future__ import annotations

import lzma
from collections import Counter
from typing import Any

_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def lzma_size(data: bytes) -> int:
    """Bytes of `data` compressed as a raw LZMA2 stream, preset 9e."""
    return len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=_FILTERS))


def top_share(data: bytes) -> float:
    """The share of the commonest byte value (0 for no bytes)."""
    return Counter(data).most_common(1)[0][1] / len(data) if data else 0.0


def compare(kept: bytes, generated: bytes, real: bytes) -> dict[str, Any]:
    """The measures above for G = `generated` and R = `real` cut to one length (the shorter)."""
    n = min(len(generated), len(real))
    g, r = generated[:n], real[:n]
    if not n:
        return {"compared_bytes": 0}
    base = lzma_size(kept)
    added_g, added_r = lzma_size(kept + g) - base, lzma_size(kept + r) - base
    return {"compared_bytes": n, "lzma_ratio": lzma_size(g) / lzma_size(r), "top_share": top_share(g),
            "real_top_share": top_share(r), "novelty_ratio": added_g / max(added_r, 1)}
