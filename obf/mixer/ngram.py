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


class _Counts:
    """What a file being written has shown its models: per model (a list of chains whose q are
    averaged: the n-gram model's one chain, the sparse model's two), the context's counts and
    what they learned since. The counts of every context of every chain lie in one sorted array
    (level j's at j * span + context id * BASE + byte), so a frozen step finds them all with one
    search and adds them up with one bincount."""

    def __init__(self, x: np.ndarray, models: list[tuple[Chain, ...]]) -> None:
        self.levels = [(m, c, offsets) for m, chains in enumerate(models) for c, chain in enumerate(chains)
                       for offsets in chain]  # (model, chain, offsets) per context, each chain's in order
        self.n_models = len(models)
        self.n_chains = [len(chains) for chains in models]
        self.reads = sorted({o for _, _, offsets in self.levels for o in offsets})  # the offsets back read
        self.span = BASE ** (1 + max(len(offsets) for _, _, offsets in self.levels))  # above any key of a level
        self.chains: dict[tuple[int, int], list[int]] = {}  # (model, chain) -> its levels, shortest context first
        for j, (m, c, _) in enumerate(self.levels):
            self.chains.setdefault((m, c), []).append(j)
        tables = [np.unique(_contexts(x, offsets) * BASE + x, return_counts=True) for _, _, offsets in self.levels]
        self.flat_keys = np.concatenate([np.zeros(0, np.int64)] + [j * self.span + t[0] for j, t in enumerate(tables)])
        self.flat_slot = (self.flat_keys % BASE  # the byte of each count (span is a multiple of BASE), in its model
                          + N_BYTES * np.repeat([m for m, _, _ in self.levels], [len(t[0]) for t in tables]))
        self.flat_counts = np.concatenate([np.zeros(0)] + [t[1].astype(np.float64) for t in tables])
        self.cum = np.concatenate([[0.0], np.cumsum(self.flat_counts)])  # counts before each entry
        self.learned: list[dict[int, np.ndarray]] = [{} for _ in self.levels]  # per level: counts after each id

    def ids(self, before: list[int]) -> list[int]:
        """The id of each level's context now, `before` ending with the last symbols (`_contexts`' ids)."""
        out = []
        for _, _, offsets in self.levels:
            ctx = 0
            for o in offsets:
                ctx = ctx * BASE + before[-o]
            out.append(ctx)
        return out

    def q(self, before: list[int], q0: np.ndarray, frozen: bool) -> np.ndarray:
        """(models, 256) q of the next byte under each model from the order-0 q0: each chain's
        recursion of `_step` unrolled, q = Σ_k scale_k max(c_k - D, 0) / (n_k + A) + scale_0 q_0
        (each context's counts touching only the bytes it has seen), averaged over the model's chains."""
        if not frozen:
            return self._q_learning(before, q0)
        ids = self.ids(before)
        low = [j * self.span + ctx * BASE for j, ctx in enumerate(ids)]
        at = self.flat_keys.searchsorted(low + [v + N_BYTES for v in low])  # (2L,) each context's entries
        bounds, seen = at.tolist(), self.cum[at].tolist()
        n_levels = len(ids)
        base = [0.0] * self.n_models  # each model's share of q0
        picks, coefs, sizes = [], [], []
        scale, chain = 1.0, None
        for j in reversed(range(n_levels)):  # each chain from its longest context down
            m, c, _ = self.levels[j]
            if (m, c) != chain:
                if chain is not None:
                    base[chain[0]] += scale / self.n_chains[chain[0]]
                scale, chain = 1.0, (m, c)
            lo, hi = bounds[j], bounds[n_levels + j]
            if hi > lo:  # a context never seen leaves everything to the one below
                total = seen[n_levels + j] - seen[j] + ESCAPE
                picks.append(np.arange(lo, hi))
                coefs.append(scale / total / self.n_chains[m])
                sizes.append(hi - lo)
                scale *= (ESCAPE + DISCOUNT * (hi - lo)) / total
        if chain is not None:
            base[chain[0]] += scale / self.n_chains[chain[0]]
        q = np.array(base)[:, None] * q0  # (models, 256)
        if picks:
            idx = np.concatenate(picks)
            add = np.bincount(self.flat_slot[idx], (self.flat_counts[idx] - DISCOUNT) * np.repeat(coefs, sizes),
                              N_BYTES * self.n_models)
            q += add.reshape(self.n_models, N_BYTES)
        return q

    def _counts(self, j: int, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """The bytes seen after context `ctx` of level j, and how often: (m,) each."""
        low = j * self.span + ctx * BASE
        lo, hi = self.flat_keys.searchsorted((low, low + N_BYTES)).tolist()
        ys, cs = self.flat_keys[lo:hi] - low, self.flat_counts[lo:hi]
        extra = self.learned[j].get(ctx)
        if extra is None:
            return ys, cs
        c = extra.copy()
        c[ys] += cs
        ys = np.flatnonzero(c)
        return ys, c[ys]

    def _q_learning(self, before: list[int], q0: np.ndarray) -> np.ndarray:
        """`q` of models that still learn: the context's counts and what they learned since."""
        q = np.zeros((self.n_models, N_BYTES))
        ids = self.ids(before)
        for (m, _), levels in self.chains.items():
            parts, scale = [], 1.0
            for j in reversed(levels):
                ys, cs = self._counts(j, ids[j])
                total = float(cs.sum())
                parts.append((ys, scale * (cs - DISCOUNT) / (total + ESCAPE)))  # every count seen is >= 1 > D
                scale *= (ESCAPE + DISCOUNT * len(ys)) / (total + ESCAPE)
            one = scale * q0
            for ys, part in parts:
                one[ys] += part
            q[m] += one / self.n_chains[m]
        return q

    def learn(self, before: list[int], byte: int) -> None:
        for j, ctx in enumerate(self.ids(before)):
            self.learned[j].setdefault(ctx, np.zeros(N_BYTES))[byte] += 1.0


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
        self.counts = _Counts(x, [(CHAIN,), SPARSE] if sparse else [(CHAIN,)])
        far = self.counts.reads[-1]
        self.before = ([START] * far + x[-far:].tolist())[-far:]  # the last symbols, START before the file
        lqs = [ngram_log_probs(x)[self.n - tail :]] + ([sparse_log_probs(x)[self.n - tail :]] if sparse else [])
        lm = np.maximum(_mixtures(tail_lp, lqs, sparse), FLOOR)  # (G, tail)
        self.window: deque[np.ndarray] = deque(lm.T)  # (G,) per byte of the last WINDOW
        self.evidence = lm.sum(axis=1)  # (G,)
        self.frozen = False
        self.step_log_q: np.ndarray | None = None  # (K, 256) log q (and log s) of the next byte, from `mix`
        self.known: dict[tuple[int, ...], np.ndarray] = {}  # frozen: `log_q` after the bytes the models read
        self.weights: np.ndarray | None = None  # frozen: `log_weights`

    def freeze(self) -> None:
        """Keep the counts and the weights as they stand (`learn_until` of `file_log_probs`)."""
        self.frozen = True

    def log_q(self) -> np.ndarray:
        """(K, 256) log q of the next byte, and log s with the sparse model (frozen, a function of
        the bytes the models read: kept)."""
        key = tuple(self.before[-o] for o in self.counts.reads)
        if self.frozen and key in self.known:
            return self.known[key]
        q0 = (self.counts0 + SMOOTHING) / (self.seen + N_BYTES * SMOOTHING)
        out = np.log(self.counts.q(self.before, q0, self.frozen))
        if self.frozen:
            self.known[key] = out
        return out

    def log_weights(self) -> np.ndarray:
        """(1 + K,) log of the weights of p, of q (and of s) at the next byte: the posterior means
        of `grid` under the evidence (frozen: kept; learned nothing and never will: p alone)."""
        if self.frozen and self.weights is not None:
            return self.weights
        if self.frozen and self.seen == 0:
            w = np.r_[0.0, np.full(1 + self.sparse, -np.inf)]
        else:
            log_w0, log_ws = _weights(self.evidence[:, None], self.sparse)  # (1,) each
            w = np.concatenate([log_w0, *log_ws])
        if self.frozen:
            self.weights = w
        return w

    def mix(self, log_p: np.ndarray) -> np.ndarray:
        """(V,) log p' of the next id from the (V,) log p of the model before this expert."""
        return mix_rows(log_p[None], [self])[0]

    def update(self, byte: int, log_p_byte: float) -> None:
        """The byte that came and the log-probability the model before this expert gave it."""
        if not self.frozen:
            assert self.step_log_q is not None, "mix comes before update"
            lm = np.maximum(_mixtures(np.array(log_p_byte), list(self.step_log_q[:, byte]), self.sparse), FLOOR)  # (G,)
            self.window.append(lm)
            self.evidence = self.evidence + lm
            if len(self.window) > WINDOW:
                self.evidence = self.evidence - self.window.popleft()
            self.counts.learn(self.before, byte)
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
    lq = np.full((1 + sparse, *log_p.shape), -np.inf)  # (K, B, V)
    w = np.empty((len(states), 2 + sparse))  # (B, 1 + K) log weights of p, q (and s)
    for j, s in enumerate(states):
        s.step_log_q = s.log_q()
        lq[:, j, :N_BYTES] = s.step_log_q
        w[j] = s.log_weights()
    out = w[:, :1] + log_p
    for k in range(1 + sparse):
        out = np.logaddexp(out, w[:, k + 1 : k + 2] + lq[k])
    return out
