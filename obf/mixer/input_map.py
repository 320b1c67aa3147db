"""The copy expert's learned map (`obf.mixer.input_copy`): which target byte a conversion writes for
the input it reads, learned from training pairs.

Why: the copy expert offered each `paired` target byte the input byte its conversion reads, as it
is. That is right for `upper`'s unchanged bytes and `gray`'s header, and wrong wherever the
conversion changes the byte (a letter `upper` raises, a hex digit, a grey pixel, an ASCII-art
character); those were left to the network, which after minutes of CPU training still misses
enough of them that few files come out whole (measured: benchmarks/README.md, "The copy
expert"). Conversions of this kind write a function of what they read, and a small table learned
from the training pairs can state that function. This module learns one per (pair of modalities,
slot) and offers its output instead of the raw byte.

Slot: how many target bytes read the same input offset before this one (0 to 3: `hex` writes
two digits and a separator for each byte) x where the read byte lies (outside an image input's
pixel array, in channel 0 to 3 of a pixel, or past the input).

Feature: per slot, the one of these whose table predicts the training targets best, each position
predicted by the table of all the others (leave-one-out, so a sparse table cannot win by
memorising; ties keep the simpler, earlier one):
* `copy`: the read byte itself (the raw offer);
* `none`: one value for the slot (the EOS of a target's end);
* `byte`, `high`, `low`: a table over the read byte, its high or its low four bits;
* `offset`: a table over the read offset's low eight bits (`hex`'s line ends);
* `before`: a table over where the position before read (`ascii`'s first row ends in a newline
  after a pixel, and in EOS after its input's row padding);
* `pixel` (pixel slots only): a table over a weighted sum of the pixel's first three bytes, the
  weights integers over 4096 summing to 4096, searched coarse to fine on that simplex: a
  function of one channel, or of a luminance of any weights, is found by the same search.

A position that reads past the input (`hex`'s last newline, the EOS of every target) gets a slot
of its own, where `none` can learn to offer EOS. A slot whose best table is right less than
`MIN_RIGHT` of the time offers the raw byte instead: a guess that sure of itself misleads. A key
the training pairs never showed offers the raw byte (nothing past the input), in the confidence
bucket of the slot's raw copies. Each key also carries a confidence bucket (its commonest
target's count over all its count + 1), which picks the copy table's row: a key seen once and
one seen thousands of times are not trusted alike.

Integer arithmetic throughout, so that scoring a target and writing it byte by byte
(`input_copy.CopyState`) offer the same byte. Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from obf.core.vocab import EOS, MODALITIES
from obf.formats.conversions import input_offsets
from obf.formats.layouts import bmp_layout

K_MAX = 3  # earlier reads of the same offset are counted up to this
CHANNELS = 6  # where the read byte lies: outside an image's pixels, channel 0..3 of a pixel, past the input
PAST = CHANNELS - 1
SLOTS = (K_MAX + 1) * CHANNELS
MIN_RIGHT = 0.9  # a slot whose best table is right less often (left out) offers the raw byte
TARGETS = EOS + 1  # what a target position holds: a byte, or EOS
SCALE = 4096  # pixel weights are integers over SCALE
SEARCH = ((256, 0), (32, 256), (4, 32), (1, 4))  # rounds of the weight search: (step, half-width around the best)
SEARCH_SAMPLES = 1 << 15  # positions of a slot the weight search scores (the first ones)
CONF_EDGES = (0.6, 0.9, 0.98)  # buckets of a key's confidence
CONFIDENCES = len(CONF_EDGES) + 2  # 0: the raw byte offered as a fallback; 1..: the buckets
FEATURES = ("copy", "none", "byte", "high", "low", "offset", "before", "pixel")  # in the order ties are kept


class Reads(NamedTuple):
    """What target positions 0..n-1 read of their input, each array with leading shape (n,)."""

    byte: np.ndarray  # the read input byte; -1 past the input (its end marker, or nothing)
    slot: np.ndarray  # the slot (module doc)
    pixel: np.ndarray  # (n, 3) the first three bytes of the read byte's pixel; -1 outside an image's pixels
    offset: np.ndarray  # the read offset
    before: np.ndarray  # where the position before read (`slot % CHANNELS`); CHANNELS for the first

    def at(self, idx: np.ndarray) -> Reads:
        """The positions `idx` of these reads."""
        return Reads(*(a[idx] for a in self))


def reads(data: bytes, source: str, target: str, n: int, end: bool) -> Reads:
    """What target positions 0..n-1 read of `data` (an input of modality `source`; `end`: the
    model's `input_end`): the byte at `input_offsets`, the slot and the pixel."""
    raw = np.frombuffer(bytes(data), np.uint8).astype(np.int64)
    if not len(raw):
        return Reads(np.full(n, -1, dtype=np.int64), np.full(n, PAST, dtype=np.int64),
                     np.full((n, 3), -1, dtype=np.int64), np.zeros(n, dtype=np.int64),
                     np.concatenate([[CHANNELS], np.full(max(n - 1, 0), PAST)]).astype(np.int64)[:n])
    at = input_offsets(source, target, bytes(data), np.arange(n), end)
    inside = at < len(raw)
    byte = np.where(inside, raw[np.minimum(at, len(raw) - 1)], -1)
    order = np.argsort(at, kind="stable")  # equal offsets keep the order of their target positions
    first = np.searchsorted(at[order], at[order], side="left")
    earlier = np.empty(n, dtype=np.int64)
    earlier[order] = np.arange(n) - first  # target positions before this one reading the same offset
    channel = np.where(inside, -1, PAST - 1)
    pixel = np.full((n, 3), -1, dtype=np.int64)
    lay = bmp_layout(bytes(data)) if source == "image" else None
    if lay is not None:
        size = lay.bpp // 8
        rel = at - lay.offset
        col = np.mod(rel, lay.stride)
        inpix = inside & (rel >= 0) & (rel < lay.rows * lay.stride) & (col < lay.width * size)
        inpix &= at - col % size + 2 < len(raw)  # a pixel cut short by a short file is no pixel
        c = col % size
        channel = np.where(inpix, np.minimum(c, PAST - 2), channel)
        idx = np.where(inpix, at - c, 0)[:, None] + np.arange(3)  # (n, 3)
        pixel = np.where(inpix[:, None], raw[np.minimum(idx, len(raw) - 1)], -1)
    where = channel + 1
    before = np.concatenate([[CHANNELS], where[:-1]])
    return Reads(byte, np.minimum(earlier, K_MAX) * CHANNELS + where, pixel, at, before)


def keys(feature: str, weights: tuple[int, int, int], r: Reads) -> np.ndarray:
    """(n,) the key of each position of `r` in `feature`'s table (0..255), -1 where it has none."""
    byte, pixel = r.byte, r.pixel
    if feature == "none":
        return np.zeros_like(byte)
    if feature == "offset":  # a place in the input: nothing past it
        return np.where(byte >= 0, r.offset & 255, -1)
    if feature == "before":
        return r.before
    if feature in ("copy", "byte"):
        return byte
    if feature == "high":
        return np.where(byte >= 0, byte >> 4, -1)
    if feature == "low":
        return np.where(byte >= 0, byte & 15, -1)
    w0, w1, w2 = weights  # elementwise integers: the same key however many positions at once
    q = (pixel[:, 0] * w0 + pixel[:, 1] * w1 + pixel[:, 2] * w2 + SCALE // 2) // SCALE
    return np.where(pixel[:, 0] >= 0, q, -1)


@dataclass(frozen=True)
class SlotMap:
    """One slot's map: its feature, and per key the target byte offered (-1: the raw byte) and its
    confidence bucket."""

    feature: str
    weights: tuple[int, int, int]  # `pixel` only; (0, 0, 0) otherwise
    out: np.ndarray  # (256,) int64
    conf: np.ndarray  # (256,) int64
    fallback: int = 0  # the confidence bucket of the raw byte where the table has no key: the slot's copy rate


@dataclass(frozen=True)
class InputMap:
    """The maps of the (pair of modalities, slot)s the training pairs showed."""

    maps: dict[tuple[int, int], SlotMap]  # (pair row, slot) -> map

    def offers(self, pair: int, r: Reads) -> tuple[np.ndarray, np.ndarray]:
        """Per position of `r` the byte offered (EOS where the map ends the target; -1: none) and
        its confidence bucket -> ((n,), (n,)) int64."""
        hint, conf = r.byte.copy(), np.zeros(len(r.byte), dtype=np.int64)
        for s in np.unique(r.slot):
            m = self.maps.get((pair, int(s)))
            if m is None:
                continue
            at = np.flatnonzero(r.slot == s)
            key = keys(m.feature, m.weights, r.at(at))
            ok = key >= 0
            out = np.where(ok, m.out[np.maximum(key, 0)], -1)
            hint[at] = np.where(out >= 0, out, hint[at])
            conf[at] = np.where(out >= 0, m.conf[np.maximum(key, 0)], np.where(hint[at] >= 0, m.fallback, 0))
        return hint, conf

    def to_dict(self) -> dict[str, Any]:
        n = len(MODALITIES)
        return {"slots": SLOTS, "scale": SCALE, "conf_edges": list(CONF_EDGES),
                "maps": [{"pair": f"{MODALITIES[p // n]}->{MODALITIES[p % n]}", "slot": s, "feature": m.feature,
                          "weights": list(m.weights), "out": m.out.tolist(), "conf": m.conf.tolist(),
                          "fallback": m.fallback}
                         for (p, s), m in sorted(self.maps.items())]}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> InputMap:
        if (d.get("slots"), d.get("scale"), tuple(d.get("conf_edges", ()))) != (SLOTS, SCALE, CONF_EDGES):
            raise ValueError("the copy expert's map was made with other slots or buckets than this obf uses")
        maps = {}
        for e in d["maps"]:
            s, t = e["pair"].split("->")
            pair = MODALITIES.index(s) * len(MODALITIES) + MODALITIES.index(t)
            w0, w1, w2 = (int(w) for w in e["weights"])
            maps[(pair, int(e["slot"]))] = SlotMap(e["feature"], (w0, w1, w2), np.array(e["out"], dtype=np.int64),
                                                   np.array(e["conf"], dtype=np.int64), int(e["fallback"]))
        return InputMap(maps)


def _table(key: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(256, TARGETS) counts of target per key; keys -1 left out."""
    ok = key >= 0
    return np.bincount(key[ok] * TARGETS + target[ok], minlength=256 * TARGETS).reshape(256, TARGETS)


def _loo(counts: np.ndarray) -> int:
    """Positions a table of `counts` (K, 256) gets right when each is left out of it: its key's
    commonest target, still strictly commonest without it."""
    first = counts.argmax(axis=1)
    a = counts[np.arange(len(counts)), first]
    rest = counts.copy()
    rest[np.arange(len(counts)), first] = 0
    b = rest.max(axis=1)
    return int((a * (a - 1 > b)).sum())


def _bucket(right: np.ndarray | float, seen: np.ndarray | float) -> np.ndarray:
    """The confidence bucket (1..) of offers right `right` times in `seen`; 0 where never seen."""
    v = np.asarray(right, dtype=np.float64) / (np.asarray(seen, dtype=np.float64) + 1.0)
    return np.where(np.asarray(seen) > 0, 1 + np.searchsorted(np.asarray(CONF_EDGES), v), 0).astype(np.int64)


def _search(r: Reads, target: np.ndarray) -> tuple[tuple[int, int, int], int]:
    """The pixel weights whose table predicts `target` (n,) best (leave-one-out) from the pixels of
    `r`, coarse to fine on the simplex, and that score."""
    best, score = (SCALE // 3, SCALE // 3, SCALE - 2 * (SCALE // 3)), -1
    for step, half in SEARCH:
        c0, c1 = (0, 0) if not half else best[:2]
        lo0, lo1 = (0, 0) if not half else (c0 - half, c1 - half)
        hi0, hi1 = (SCALE, SCALE) if not half else (c0 + half, c1 + half)
        for w0 in range(max(lo0, 0), min(hi0, SCALE) + 1, step):
            for w1 in range(max(lo1, 0), min(hi1, SCALE - w0) + 1, step):
                w = (w0, w1, SCALE - w0 - w1)
                s = _loo(_table(keys("pixel", w, r), target))
                if s > score:
                    best, score = w, s
    return best, score


def _slot_map(r: Reads, target: np.ndarray) -> SlotMap:
    """The best feature's map of one slot's positions `r` and their targets (n,)."""
    ok = r.byte >= 0
    byte = r.byte[ok]
    hits = np.bincount(byte, weights=(byte == target[ok]), minlength=256)
    seen = np.bincount(byte, minlength=256)
    score = int(hits.sum())
    fallback = int(_bucket(score, len(byte))) if len(byte) else 0
    best = SlotMap("copy", (0, 0, 0), np.arange(256, dtype=np.int64), _bucket(hits, seen), fallback)
    candidates: list[tuple[str, tuple[int, int, int]]] = [(f, (0, 0, 0)) for f in FEATURES[1:-1]]
    if (r.pixel[:, 0] >= 0).all():
        w, _ = _search(r.at(np.arange(min(len(target), SEARCH_SAMPLES))), target[:SEARCH_SAMPLES])
        candidates.append(("pixel", w))
    for feature, w in candidates:
        counts = _table(keys(feature, w, r), target)
        s = _loo(counts)
        if s > score:
            out = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1).astype(np.int64)
            best, score = SlotMap(feature, w, out, _bucket(counts.max(axis=1), counts.sum(axis=1)), fallback), s
    if best.feature != "copy" and score < MIN_RIGHT * len(target):  # too often wrong to offer
        return SlotMap("copy", (0, 0, 0), np.arange(256, dtype=np.int64), _bucket(hits, seen), fallback)
    return best


def fit(samples: list[tuple[int, Reads, bytes]]) -> InputMap:
    """The map on training pairs: each (pair row, `reads` of its target positions 0..n, its
    target's n bytes; position n holds EOS)."""
    if not samples:
        return InputMap({})
    pair = np.concatenate([np.full(len(t) + 1, p, dtype=np.int64) for p, _, t in samples])
    r = Reads(*(np.concatenate(parts) for parts in zip(*(r for _, r, _ in samples))))
    target = np.concatenate([np.append(np.frombuffer(bytes(t), np.uint8).astype(np.int64), EOS)
                             for _, _, t in samples])
    if len(target) != len(r.byte):
        raise ValueError("each target of n bytes needs the reads of its n + 1 positions")
    group = pair * SLOTS + r.slot
    maps = {}
    for g in np.unique(group):
        at = np.flatnonzero(group == g)
        maps[(int(g) // SLOTS, int(g) % SLOTS)] = _slot_map(r.at(at), target[at])
    return InputMap(maps)
