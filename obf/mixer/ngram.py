"""The n-gram expert: an order-0..4 model of the bytes the file itself has shown so far, and a
model of sparse contexts beside it, mixed with the model's distribution by how well each pair
of mixing weights predicted the bytes just before.

Why: the network reads a few hundred bytes of context and the match model copies only repeats of
long contexts; the statistics of short contexts within one file (a word's next letter in this
text, the next field of this table's records, the byte pairs of this format) are what PPM coders
live on, and what beat the model on prose, databases and executables from outside its corpus.
Contexts that skip the nearest byte (the bytes 2 and 3 back; 4 and 8 back) are what context-mixing
coders add for binaries: an instruction's operand after its opcode, a record's field after the
same field of the record before, whatever byte sits between. Mixed after the column expert they
lower every modality of the validation split (benchmarks/mixer.py, benchmarks/ngram.py; the
figures are in benchmarks/README.md, "The mixer").

A chain of contexts, each holding the one before it, is coded by interpolated back-off with
absolute discounting (Kneser-Ney's smoothing, PPM's escape by the number of distinct bytes
seen). q_0(v) = (c(v) + SMOOTHING) / (n + 256 SMOOTHING) over the bytes so far; for each context
k of the chain, with c the counts of the bytes that came after the bytes now at its offsets, n
their sum and u the number of distinct bytes among them,

    q_k(v) = (max(c(v) - DISCOUNT, 0) + (ESCAPE + DISCOUNT u) q_{k-1}(v)) / (n + ESCAPE).

The n-gram model q is the chain of the last 1, 2, 3 and 4 bytes (CHAIN); the sparse model s is
the mean of the two chains of SPARSE. Positions before the file's first byte are a 257th symbol
(START), so the first bytes have contexts of their own.

The mixture: p'(v) = Σ_g π_g ((1 - w_g - s_g) p(v) + w_g q(v) + s_g s(v)) over the fixed pairs
(w_g, s_g) of `grid` (WEIGHTS for q, SPARSE_WEIGHTS for s), with π_g proportional to the
likelihood the g-th mixture gave the last WINDOW bytes: a Bayesian mixture over mixing weights,
which follows the pair that has predicted this stretch of the file best ((0, 0) is one: where
the expert only hurts, it costs a few bits per window). It is one linear mixture, p' = (1 - w -
s) p + w q + s s with w = Σ_g π_g w_g and s likewise, and is computed so. EOS and the other
non-byte ids keep 1 - w - s of their probability. Without the sparse model (`sparse=False`: a
mixer saved before it) the pairs are (w, 0), the expert as it was.

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
from functools import lru_cache

import numpy as np

from obf.core.vocab import N_BYTES
from obf.mixer.columns import earlier

ORDER = 4  # the longest context, in bytes (orders 3-6: within 0.005 bpb on validation, benchmarks/ngram.py)
Chain = tuple[tuple[int, ...], ...]  # contexts, each holding the one before: the offsets back of its bytes
CHAIN: Chain = tuple(tuple(range(k, 0, -1)) for k in range(1, ORDER + 1))  # (1,), (2, 1), (3, 2, 1), (4, 3, 2, 1)
SPARSE: tuple[Chain, ...] = (((2,), (3, 2)), ((4,), (8, 4)))  # the sparse model: the mean of these chains' q
SMOOTHING = 0.3  # order 0: added to every count
ESCAPE = 0.5  # the mass a context always leaves to the order below
DISCOUNT = 0.75  # taken from every count seen, and given to the order below
WINDOW = 256  # bytes of evidence the mixture's weights look back over
WEIGHTS = np.array([0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9])  # the mixing weights w_g of q
SPARSE_WEIGHTS = np.array([0.0, 0.05, 0.1, 0.2, 0.35])  # those of the sparse model, s_g
CAP = 0.95  # w_g + s_g at most: p keeps at least 5% in every pair
FLOOR = -50.0  # a mixture's log p is floored here in the evidence (a byte the network rules out)
START = N_BYTES  # the symbol before the first byte
BASE = N_BYTES + 1  # symbols per context position


def settings() -> dict[str, object]:
    """What a saved mixer records of this expert (a mixer made with others is refused)."""
    return {"order": ORDER, "smoothing": SMOOTHING, "escape": ESCAPE, "discount": DISCOUNT, "window": WINDOW,
            "weights": WEIGHTS.tolist()}


def sparse_settings() -> dict[str, object]:
    """What a saved mixer records of the sparse model (beside `settings`)."""
    return {"chains": [[list(c) for c in chain] for chain in SPARSE], "weights": SPARSE_WEIGHTS.tolist(), "cap": CAP}


@lru_cache(maxsize=2)
def grid(sparse: bool) -> tuple[np.ndarray, np.ndarray]:
    """The mixtures' weights in log: (G,) of p, and (G, K) of q (and the sparse model: K = 2)."""
    pairs = np.array([(w, s) for w in WEIGHTS for s in (SPARSE_WEIGHTS if sparse else [0.0]) if w + s <= CAP + 1e-9])
    w = pairs if sparse else pairs[:, :1]
    with np.errstate(divide="ignore"):
        return np.log1p(-w.sum(axis=1)), np.log(w)  # log 0 = -inf


def _ints(data: bytes | np.ndarray) -> np.ndarray:
    """(n,) int64 byte values of `data` (bytes, or an array of byte values)."""
    if isinstance(data, np.ndarray):
        return data.astype(np.int64)
    return np.frombuffer(bytes(data), np.uint8).astype(np.int64)


def _contexts(x: np.ndarray, offsets: tuple[int, ...]) -> np.ndarray:
    """(n,) an id of the symbols at `offsets` back from each position of x (n,): START before the file."""
    n, far = len(x), max(offsets)
    padded = np.concatenate([np.full(far, START, np.int64), x])
    ids = np.zeros(n, np.int64)
    for o in offsets:
        ids = ids * BASE + padded[far - o : far - o + n]
    return ids


def _lookup(keys: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """counts[keys == q] for each query (0 where absent); `keys` sorted and unique."""
    if not len(keys):
        return np.zeros(len(queries), np.int64)
    at = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[at] == queries, counts[at], 0)


def _step(q: np.ndarray, c: np.ndarray, total: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """One context up the chain: q_k from q_{k-1} and the context's counts (any matching shapes)."""
    return (np.maximum(c - DISCOUNT, 0) + (ESCAPE + DISCOUNT * distinct) * q) / (total + ESCAPE)


def _chain_q(x: np.ndarray, cut: int, chain: Chain) -> np.ndarray:
    """(n,) q of each byte of x (n,) under `chain`: positions before `cut` counted from all the
    bytes before them, those from there on from the bytes before `cut`."""
    n = len(x)
    head = x[:cut]
    q = (earlier(head) + SMOOTHING) / (np.arange(cut) + N_BYTES * SMOOTHING)
    later = x[cut:]
    q_later = (np.bincount(head, minlength=N_BYTES)[later] + SMOOTHING) / (cut + N_BYTES * SMOOTHING)
    for offsets in chain:
        ctx = _contexts(x, offsets)
        key = ctx * BASE + x
        c = earlier(key[:cut])
        q = _step(q, c, earlier(ctx[:cut]), earlier(ctx[:cut], (c == 0).astype(np.int64)))
        if cut < n:  # counted over the head only
            keys, counts = np.unique(key[:cut], return_counts=True)
            ctxs, totals = np.unique(ctx[:cut], return_counts=True)
            _, distinct = np.unique(keys // BASE, return_counts=True)  # ctxs again, in the same order
            q_later = _step(q_later, _lookup(keys, counts, key[cut:]), _lookup(ctxs, totals, ctx[cut:]),
                            _lookup(ctxs, distinct, ctx[cut:]))
    return np.concatenate([q, q_later])


def _cut(n: int, learn_until: int | None) -> int:
    return n if learn_until is None else min(max(learn_until, 0), n)


def ngram_log_probs(data: bytes | np.ndarray, learn_until: int | None = None) -> np.ndarray:
    """(n,) log q of each byte of `data` given the bytes before it (all of them, or those before
    `learn_until` for the counts of the positions from there on)."""
    x = _ints(data)
    return np.log(_chain_q(x, _cut(len(x), learn_until), CHAIN))


def sparse_log_probs(data: bytes | np.ndarray, learn_until: int | None = None) -> np.ndarray:
    """(n,) log s of each byte of `data`: the mean of the SPARSE chains' q (as `ngram_log_probs`)."""
    x = _ints(data)
    cut = _cut(len(x), learn_until)
    return np.log(np.mean([_chain_q(x, cut, chain) for chain in SPARSE], axis=0))


def _mixtures(lp: np.ndarray, lqs: list[np.ndarray], sparse: bool) -> np.ndarray:
    """(G, ...) log of each mixture of `grid`, from log p and the experts' log q of one shape."""
    log_w0, log_w = grid(sparse)
    shape = (-1, *[1] * lp.ndim)
    terms = [log_w0.reshape(shape) + lp] + [log_w[:, k].reshape(shape) + lq for k, lq in enumerate(lqs)]
    return np.logaddexp.reduce(np.stack(terms), axis=0)


def _weights(evidence: np.ndarray, sparse: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """(...) log of p's weight and [(...)] of each expert's, the posterior means of `grid` under
    the (G, ...) summed log-likelihoods of each mixture (π: their posterior, uniform prior)."""
    log_w0, log_w = grid(sparse)
    log_pi = evidence - np.logaddexp.reduce(evidence, axis=0, keepdims=True)
    shape = (-1, *[1] * (evidence.ndim - 1))
    return (np.logaddexp.reduce(log_pi + log_w0.reshape(shape), axis=0),
            [np.logaddexp.reduce(log_pi + log_w[:, k].reshape(shape), axis=0) for k in range(log_w.shape[1])])


def file_log_probs(data: bytes | np.ndarray, lp: np.ndarray, learn_until: int | None = None,
                   sparse: bool = False) -> np.ndarray:
    """(n+1,) log p' of the targets of a whole file (its n bytes, then EOS) from the (n+1,) log p
    the model before this expert gives them. `learn_until`: positions from there on are coded with
    the counts and the weights π the bytes before it gave. `sparse`: with the sparse model."""
    n = len(data)
    cut = _cut(n, learn_until)
    if cut == 0:  # nothing to learn from: q stays uniform and π its prior, so it mixes nothing in
        return lp.copy()
    lqs = [ngram_log_probs(data, learn_until)] + ([sparse_log_probs(data, learn_until)] if sparse else [])
    lm = _mixtures(lp[:n], lqs, sparse)  # (G, n)
    total = np.concatenate([np.zeros((len(lm), 1)), np.cumsum(np.maximum(lm[:, :cut], FLOOR), axis=1)], axis=1)
    at = np.minimum(np.arange(n + 1), cut)  # the evidence stops growing at `cut`
    log_w0, log_ws = _weights(total[:, at] - total[:, np.maximum(at - WINDOW, 0)], sparse)  # (n+1,) each
    out = log_w0 + lp
    for log_w, lq in zip(log_ws, lqs):
        out = np.logaddexp(out, log_w + np.concatenate([lq, [-np.inf]]))
    return out


class _ChainState:
    """What one chain has counted in a file being written: the context's counts (sorted unique
    context id * BASE + byte, per context of the chain), what it learned since, and, frozen,
    the q met after each context."""

    def __init__(self, x: np.ndarray, chain: Chain) -> None:
        self.chain = chain
        self.far = max(max(offsets) for offsets in chain)
        self.tables = []
        for offsets in chain:
            keys, counts = np.unique(_contexts(x, offsets) * BASE + x, return_counts=True)
            self.tables.append((keys, counts.astype(np.float64)))
        self.learned: list[dict[int, np.ndarray]] = [{} for _ in chain]  # per context: counts after each id
        self.known: dict[tuple[int, ...], np.ndarray] = {}  # frozen: q after the symbols the chain reads

    def ids(self, before: list[int]) -> list[int]:
        """The ids of the chain's contexts now, `before` ending with the last symbols (`_contexts`' ids)."""
        out = []
        for offsets in self.chain:
            ctx = 0
            for o in offsets:
                ctx = ctx * BASE + before[-o]
            out.append(ctx)
        return out

    def _counts(self, k: int, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """The bytes seen after context `ctx` of the chain's k-th context, and how often: (m,) each."""
        keys, counts = self.tables[k]
        lo, hi = np.searchsorted(keys, (ctx * BASE, ctx * BASE + N_BYTES))
        ys, cs = keys[lo:hi] - ctx * BASE, counts[lo:hi]
        extra = self.learned[k].get(ctx)
        if extra is None:
            return ys, cs
        c = extra.copy()
        c[ys] += cs
        ys = np.flatnonzero(c)
        return ys, c[ys]

    def q(self, before: list[int], q0: np.ndarray, frozen: bool) -> np.ndarray:
        """(256,) q of the next byte from the order-0 q0. The recursion of `_step` unrolled:
        q = Σ_k scale_k max(c_k - D, 0) / (n_k + A) + scale_0 q_0, each context's counts touching
        only the bytes it has seen; frozen, a function of the symbols the chain reads: kept."""
        key = tuple(before[-self.far :])
        if frozen and key in self.known:
            return self.known[key]
        parts, scale = [], 1.0
        for k, ctx in reversed(list(enumerate(self.ids(before)))):
            ys, cs = self._counts(k, ctx)
            total = float(cs.sum())
            parts.append((ys, scale * (cs - DISCOUNT) / (total + ESCAPE)))  # every count seen is >= 1 > D
            scale *= (ESCAPE + DISCOUNT * len(ys)) / (total + ESCAPE)
        q = scale * q0
        for ys, part in parts:
            q[ys] += part
        if frozen:
            self.known[key] = q
        return q

    def learn(self, before: list[int], byte: int) -> None:
        for k, ctx in enumerate(self.ids(before)):
            self.learned[k].setdefault(ctx, np.zeros(N_BYTES))[byte] += 1.0


class NgramState:
    """The n-gram model (and the sparse model) and the mixture's weights of one file being
    written, byte by byte (generation): what `file_log_probs` computes at every position, given
    the log p the model before this expert gave each earlier byte (`tail_lp`: those of the
    context's last WINDOW bytes, or of all when it is shorter)."""

    def __init__(self, context: bytes, tail_lp: np.ndarray, sparse: bool = False) -> None:
        x = _ints(context)
        self.n = len(x)
        self.sparse = sparse
        tail = min(WINDOW, self.n)
        if len(tail_lp) != tail:
            raise ValueError(f"the context's last {tail} bytes need their log-probabilities, got {len(tail_lp)}")
        self.counts0 = np.bincount(x, minlength=N_BYTES).astype(np.float64)  # (256,)
        self.seen = self.n  # bytes counted in counts0
        self.chains = [_ChainState(x, CHAIN)]
        self.sparse_chains = [_ChainState(x, chain) for chain in SPARSE] if sparse else []
        far = max(c.far for c in self.chains + self.sparse_chains)
        self.before = ([START] * far + x[-far:].tolist())[-far:]  # the last symbols, START before the file
        lqs = [ngram_log_probs(x)[self.n - tail :]] + ([sparse_log_probs(x)[self.n - tail :]] if sparse else [])
        lm = np.maximum(_mixtures(tail_lp, lqs, sparse), FLOOR)  # (G, tail)
        self.window: deque[np.ndarray] = deque(lm.T)  # (G,) per byte of the last WINDOW
        self.evidence = lm.sum(axis=1)  # (G,)
        self.frozen = False
        self.step_log_q: list[np.ndarray] | None = None  # [(256,)] log q (and log s) of the next byte, from `mix`
        self.known: dict[tuple[int, ...], list[np.ndarray]] = {}  # frozen: `log_q` after each context met

    def freeze(self) -> None:
        """Keep the counts and the weights as they stand (`learn_until` of `file_log_probs`)."""
        self.frozen = True

    def log_q(self) -> list[np.ndarray]:
        """[(256,)] log q of the next byte, and log s with the sparse model (frozen, a function of
        the last symbols alone: kept)."""
        before = tuple(self.before)
        if self.frozen and before in self.known:
            return self.known[before]
        q0 = (self.counts0 + SMOOTHING) / (self.seen + N_BYTES * SMOOTHING)
        out = [np.log(self.chains[0].q(self.before, q0, self.frozen))]
        if self.sparse_chains:
            out.append(np.log(np.mean([c.q(self.before, q0, self.frozen) for c in self.sparse_chains], axis=0)))
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
            lqs = [np.array(lq[byte]) for lq in self.step_log_q]
            lm = np.maximum(_mixtures(np.array(log_p_byte), lqs, self.sparse), FLOOR)  # (G,)
            self.window.append(lm)
            self.evidence = self.evidence + lm
            if len(self.window) > WINDOW:
                self.evidence = self.evidence - self.window.popleft()
            for c in self.chains + self.sparse_chains:
                c.learn(self.before, byte)
            self.counts0[byte] += 1.0
            self.seen += 1
        self.before = [*self.before[1:], byte]
        self.n += 1
        self.step_log_q = None


def mix_rows(log_p: np.ndarray, states: list[NgramState]) -> np.ndarray:
    """(B, V) log p' of the next id of B files being written from their (B, V) log p (the rows
    of one mixer: all with the sparse model or all without)."""
    sparse = states[0].sparse
    assert all(s.sparse == sparse for s in states), "rows of one mixer, with the sparse model or without"
    lqs = [np.full(log_p.shape, -np.inf) for _ in range(1 + sparse)]
    for j, s in enumerate(states):
        s.step_log_q = s.log_q()
        for lq, row in zip(lqs, s.step_log_q):
            lq[j, :N_BYTES] = row
    log_w0, log_ws = _weights(np.stack([s.evidence for s in states], axis=1), sparse)  # (B,) each
    empty = np.array([s.frozen and s.seen == 0 for s in states])  # learned nothing, never will: p alone
    out = np.where(empty, 0.0, log_w0)[:, None] + log_p
    for log_w, lq in zip(log_ws, lqs):
        out = np.logaddexp(out, np.where(empty, -np.inf, log_w)[:, None] + lq)
    return out
