"""The n-gram expert: an order-0..4 model of the bytes the file itself has shown so far, mixed
with the model's distribution by how well each mixing weight predicted the bytes just before.

Why: the network reads a few hundred bytes of context and the match model copies only repeats of
long contexts; the statistics of short contexts within one file (a word's next letter in this
text, the next field of this table's records, the byte pairs of this format) are what PPM coders
live on, and what beat the model on prose, databases and executables from outside its corpus.
Mixed after the column expert it lowers every modality of the validation split
(benchmarks/mixer.py; the figures are in benchmarks/README.md, "The mixer").

The model: interpolated back-off with absolute discounting (Kneser-Ney's smoothing, PPM's escape
by the number of distinct bytes seen). q_0(v) = (c(v) + SMOOTHING) / (n + 256 SMOOTHING) over
the bytes so far; for order k = 1..ORDER, with c the counts of the bytes that came after the k
bytes now before the cursor, n their sum and u the number of distinct bytes among them,

    q_k(v) = (max(c(v) - DISCOUNT, 0) + (ESCAPE + DISCOUNT u) q_{k-1}(v)) / (n + ESCAPE),

and q = q_ORDER. Positions before the file's first byte are a 257th symbol (START), so the first
bytes have contexts of their own.

The mixture: p'(v) = Σ_g π_g ((1 - w_g) p(v) + w_g q(v)) over the fixed weights w_g of WEIGHTS,
with π_g proportional to the likelihood the g-th mixture gave the last WINDOW bytes: a Bayesian
mixture over mixing weights, which follows the weight that has predicted this stretch of the
file best (w = 0 is one: where q only hurts, it costs a few bits per window). It is one linear
mixture, p' = (1 - w) p + w q with w = Σ_g π_g w_g, and is computed so. EOS and the other
non-byte ids keep 1 - w of their probability.

With `learn_until` (generation after a real context) the counts and π stay as they were there:
the model's own samples never teach it their n-grams; the context of each byte is still the
bytes just before it, made or not. With nothing to learn from (`learn_until` 0: a `paired`
target, or a file written from nothing) the expert mixes nothing in: its q would stay uniform
and π its prior, a mean weight of 0.35 on noise (measured on the validation pairs: every
conversion's target cost 0.63–0.65 bits per byte with 99.8–100% of its bytes the model's first
choice, 0.003–0.03 without it).

Numpy only: the serving side imports it without torch.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from obf.core.vocab import N_BYTES
from obf.mixer.columns import earlier

ORDER = 4  # the longest context, in bytes (orders 3-6: within 0.005 bpb on validation, benchmarks/ngram.py)
SMOOTHING = 0.3  # order 0: added to every count
ESCAPE = 0.5  # the mass a context always leaves to the order below
DISCOUNT = 0.75  # taken from every count seen, and given to the order below
WINDOW = 256  # bytes of evidence the mixture's weights look back over
WEIGHTS = np.array([0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9])  # the mixing weights w_g of q
FLOOR = -50.0  # a mixture's log p is floored here in the evidence (a byte the network rules out)
START = N_BYTES  # the symbol before the first byte
BASE = N_BYTES + 1  # symbols per context position
with np.errstate(divide="ignore"):
    _LOG_W, _LOG_1MW = np.log(WEIGHTS), np.log1p(-WEIGHTS)  # (G,) each; log 0 = -inf


def settings() -> dict[str, object]:
    """What a saved mixer records of this expert (a mixer made with others is refused)."""
    return {"order": ORDER, "smoothing": SMOOTHING, "escape": ESCAPE, "discount": DISCOUNT, "window": WINDOW,
            "weights": WEIGHTS.tolist()}


def _ints(data: bytes | np.ndarray) -> np.ndarray:
    """(n,) int64 byte values of `data` (bytes, or an array of byte values)."""
    if isinstance(data, np.ndarray):
        return data.astype(np.int64)
    return np.frombuffer(bytes(data), np.uint8).astype(np.int64)


def _contexts(x: np.ndarray, k: int) -> np.ndarray:
    """(n,) an id of the k symbols before each position of x (n,): START before the file."""
    n = len(x)
    padded = np.concatenate([np.full(k, START, np.int64), x])
    ids = np.zeros(n, np.int64)
    for j in range(k):
        ids = ids * BASE + padded[j : j + n]
    return ids


def _lookup(keys: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """counts[keys == q] for each query (0 where absent); `keys` sorted and unique."""
    if not len(keys):
        return np.zeros(len(queries), np.int64)
    at = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[at] == queries, counts[at], 0)


def _step(q: np.ndarray, c: np.ndarray, total: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """One order up: q_k from q_{k-1} and the context's counts (any matching shapes)."""
    return (np.maximum(c - DISCOUNT, 0) + (ESCAPE + DISCOUNT * distinct) * q) / (total + ESCAPE)


def ngram_log_probs(data: bytes | np.ndarray, learn_until: int | None = None) -> np.ndarray:
    """(n,) log q of each byte of `data` given the bytes before it (all of them, or those before
    `learn_until` for the counts of the positions from there on)."""
    x = _ints(data)
    n = len(x)
    cut = n if learn_until is None else min(max(learn_until, 0), n)
    head = x[:cut]
    q = (earlier(head) + SMOOTHING) / (np.arange(cut) + N_BYTES * SMOOTHING)
    later = x[cut:]
    q_later = (np.bincount(head, minlength=N_BYTES)[later] + SMOOTHING) / (cut + N_BYTES * SMOOTHING)
    for k in range(1, ORDER + 1):
        ctx = _contexts(x, k)
        key = ctx * BASE + x
        c = earlier(key[:cut])
        q = _step(q, c, earlier(ctx[:cut]), earlier(ctx[:cut], (c == 0).astype(np.int64)))
        if cut < n:  # counted over the head only
            keys, counts = np.unique(key[:cut], return_counts=True)
            ctxs, totals = np.unique(ctx[:cut], return_counts=True)
            _, distinct = np.unique(keys // BASE, return_counts=True)  # ctxs again, in the same order
            q_later = _step(q_later, _lookup(keys, counts, key[cut:]), _lookup(ctxs, totals, ctx[cut:]),
                            _lookup(ctxs, distinct, ctx[cut:]))
    return np.log(np.concatenate([q, q_later]))


def _mixtures(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """(G, ...) log((1 - w_g) p + w_g q) for every weight, from log p and log q of one shape."""
    return np.logaddexp(_LOG_1MW.reshape(-1, *[1] * lp.ndim) + lp, _LOG_W.reshape(-1, *[1] * lq.ndim) + lq)


def _weight(evidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(...) log w and log(1 - w) of the mixture, w = Σ_g π_g w_g, from the (G, ...) summed
    log-likelihoods of each weight's mixture (π: their posterior under a uniform prior)."""
    log_pi = evidence - np.logaddexp.reduce(evidence, axis=0, keepdims=True)
    shape = (-1, *[1] * (evidence.ndim - 1))
    return (np.logaddexp.reduce(log_pi + _LOG_W.reshape(shape), axis=0),
            np.logaddexp.reduce(log_pi + _LOG_1MW.reshape(shape), axis=0))


def file_log_probs(data: bytes | np.ndarray, lp: np.ndarray, learn_until: int | None = None) -> np.ndarray:
    """(n+1,) log p' of the targets of a whole file (its n bytes, then EOS) from the (n+1,) log p
    the model before this expert gives them. `learn_until`: positions from there on are coded with
    the counts and the weights π the bytes before it gave."""
    n = len(data)
    cut = n if learn_until is None else min(max(learn_until, 0), n)
    if cut == 0:  # nothing to learn from: q stays uniform and π its prior, so it mixes nothing in
        return lp.copy()
    lq = ngram_log_probs(data, learn_until)
    lm = _mixtures(lp[:n], lq)  # (G, n)
    total = np.concatenate([np.zeros((len(WEIGHTS), 1)), np.cumsum(np.maximum(lm[:, :cut], FLOOR), axis=1)], axis=1)
    at = np.minimum(np.arange(n + 1), cut)  # the evidence stops growing at `cut`
    log_w, log_1mw = _weight(total[:, at] - total[:, np.maximum(at - WINDOW, 0)])  # (n+1,) each
    return np.logaddexp(log_1mw + lp, log_w + np.concatenate([lq, [-np.inf]]))


class NgramState:
    """The n-gram model and the mixture's weights of one file being written, byte by byte
    (generation): what `file_log_probs` computes at every position, given the log p the model
    before this expert gave each earlier byte (`tail_lp`: those of the context's last WINDOW
    bytes, or of all when it is shorter)."""

    def __init__(self, context: bytes, tail_lp: np.ndarray) -> None:
        x = _ints(context)
        self.n = len(x)
        tail = min(WINDOW, self.n)
        if len(tail_lp) != tail:
            raise ValueError(f"the context's last {tail} bytes need their log-probabilities, got {len(tail_lp)}")
        self.counts0 = np.bincount(x, minlength=N_BYTES).astype(np.float64)  # (256,)
        self.seen = self.n  # bytes counted in counts0
        self.tables = []  # per order k >= 1: sorted unique (context id * BASE + byte) and their counts
        for k in range(1, ORDER + 1):
            keys, counts = np.unique(_contexts(x, k) * BASE + x, return_counts=True)
            self.tables.append((keys, counts.astype(np.float64)))
        self.learned: list[dict[int, np.ndarray]] = [{} for _ in range(ORDER)]  # per order: counts after the context
        self.before = ([START] * ORDER + x[-ORDER:].tolist())[-ORDER:]  # the last ORDER symbols
        lm = np.maximum(_mixtures(tail_lp, ngram_log_probs(x)[self.n - tail :]), FLOOR)  # (G, tail)
        self.window: deque[np.ndarray] = deque(lm.T)  # (G,) per byte of the last WINDOW
        self.evidence = lm.sum(axis=1)  # (G,)
        self.frozen = False
        self.step_log_q: np.ndarray | None = None  # (256,) log q of the next byte, from `mix`
        self.known: dict[tuple[int, ...], np.ndarray] = {}  # frozen: log q after each context met

    def freeze(self) -> None:
        """Keep the counts and the weights as they stand (`learn_until` of `file_log_probs`)."""
        self.frozen = True

    def _contexts_now(self) -> list[int]:
        """The ids of the 1..ORDER symbols before the cursor (`_contexts`' ids)."""
        ids, ctx, scale = [], 0, 1
        for s in reversed(self.before):
            ctx += s * scale
            scale *= BASE
            ids.append(ctx)
        return ids

    def _counts(self, k: int, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """The bytes seen after context `ctx` of order k, and how often: (m,) each, m distinct."""
        keys, counts = self.tables[k - 1]
        lo, hi = np.searchsorted(keys, (ctx * BASE, ctx * BASE + N_BYTES))
        ys, cs = keys[lo:hi] - ctx * BASE, counts[lo:hi]
        extra = self.learned[k - 1].get(ctx)
        if extra is None:
            return ys, cs
        c = extra.copy()
        c[ys] += cs
        ys = np.flatnonzero(c)
        return ys, c[ys]

    def log_q(self) -> np.ndarray:
        """(256,) log q of the next byte (frozen, a function of the last ORDER symbols alone: kept).
        The recursion of `_step` unrolled: q = Σ_k scale_k max(c_k - D, 0) / (n_k + A) + scale_0 q_0,
        each order's counts touching only the bytes it has seen."""
        before = tuple(self.before)
        if self.frozen and before in self.known:
            return self.known[before]
        parts, scale = [], 1.0
        for k, ctx in reversed(list(enumerate(self._contexts_now(), start=1))):
            ys, cs = self._counts(k, ctx)
            total = float(cs.sum())
            parts.append((ys, scale * (cs - DISCOUNT) / (total + ESCAPE)))  # every count seen is >= 1 > D
            scale *= (ESCAPE + DISCOUNT * len(ys)) / (total + ESCAPE)
        q = scale * (self.counts0 + SMOOTHING) / (self.seen + N_BYTES * SMOOTHING)
        for ys, part in parts:
            q[ys] += part
        out = np.log(q)
        if self.frozen:
            self.known[before] = out
        return out

    def mix(self, log_p: np.ndarray) -> np.ndarray:
        """(V,) log p' of the next id from the (V,) log p of the model before this expert."""
        return mix_rows(log_p[None], [self])[0]

    def update(self, byte: int, log_p_byte: float) -> None:
        """The byte that came and the log-probability the model before this expert gave it."""
        if not self.frozen:
            assert self.step_log_q is not None, "mix comes before update"
            lm = np.maximum(_mixtures(np.array(log_p_byte), np.array(self.step_log_q[byte])), FLOOR)  # (G,)
            self.window.append(lm)
            self.evidence = self.evidence + lm
            if len(self.window) > WINDOW:
                self.evidence = self.evidence - self.window.popleft()
            for k, ctx in enumerate(self._contexts_now(), start=1):
                self.learned[k - 1].setdefault(ctx, np.zeros(N_BYTES))[byte] += 1.0
            self.counts0[byte] += 1.0
            self.seen += 1
        self.before = [*self.before[1:], byte]
        self.n += 1
        self.step_log_q = None


def mix_rows(log_p: np.ndarray, states: list[NgramState]) -> np.ndarray:
    """(B, V) log p' of the next id of B files being written from their (B, V) log p."""
    lq = np.full(log_p.shape, -np.inf)
    for j, s in enumerate(states):
        s.step_log_q = s.log_q()
        lq[j, :N_BYTES] = s.step_log_q
    log_w, log_1mw = _weight(np.stack([s.evidence for s in states], axis=1))  # (B,) each
    empty = np.array([s.frozen and s.seen == 0 for s in states])  # learned nothing, never will: w = 0
    log_w, log_1mw = np.where(empty, -np.inf, log_w), np.where(empty, 0.0, log_1mw)
    return np.logaddexp(log_1mw[:, None] + log_p, log_w[:, None] + lq)
