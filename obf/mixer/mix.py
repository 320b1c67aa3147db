"""The mixer: the network's logits plus two hints from the file itself, as the model serves.

`logits' = logits + w_match · onehot(match hint) + K[activity] · (bytes around the stride hint)`:
the match model (`obf.mixer.match`) names the byte that followed the last copy of the current context
anywhere earlier in the file; the stride hint (`obf.mixer.stride_hint`) predicts a media byte from the
bytes one row (images: left, above and upper-left), sample frame or frame back. Both biases
are fitted after training on training files
(`fit_mixer`: the match table first, then the kernel on top of it) and saved in the checkpoint's
config.json and the export's obf.json under `"mixer"`. Evaluation (`whole_file_bits`) and
sampling (`obf.generate.sampling.generate`) apply the same mixer on torch and ONNX Runtime, so the
distribution that is sampled is the one that is scored. Then come three parts that learn from
the file itself as it goes, nothing fitted: the match trust re-estimated from the match model's
recent hits in this file (`obf.mixer.adapt`), the column expert (`obf.mixer.columns`: an order-0 model
per byte column, weighted by how it predicted the bytes just before against the hinted
network), and the n-gram expert (`obf.mixer.ngram`: an order-0..4 model of the file and a model
of its sparse contexts, mixed by the weights that predicted the bytes just before best):
`Mixer.step` in sampling, `Mixer.serve` in scoring. A `paired` target also gets the copy expert
(`obf.mixer.input_copy`: the input byte its conversion reads, with a bias fitted on training
pairs after the rest), after the hints' biases and before the parts that learn from the file.
A model without a mixer (trained with `train.mixer_fit_bytes=0`, or by an obf before it) is the
network alone.

Numpy only: the serving side imports it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from obf.core.vocab import EOS, N_BYTES
from obf.formats.layouts import MEDIA
from obf.mixer import adapt
from obf.mixer import columns as col
from obf.mixer import input_copy as cp
from obf.mixer import ngram as ng
from obf.mixer.input_copy import Copies, CopyState
from obf.mixer.input_map import InputMap
from obf.mixer.match import MatchModel, MatchTable, fit_table, log_softmax_at, match_hints, min_len_of
from obf.mixer.stride_hint import OFFSETS, StrideKernel, StrideState, fit_kernel, predictor_of, stride_hints, window


class Hints(NamedTuple):
    """Per position: the match model's byte (-1: none) and match length, the stride hint (-1: none)
    and its activity bucket."""

    match: np.ndarray
    length: np.ndarray
    stride: np.ndarray
    activity: np.ndarray


def file_hints(data: bytes | np.ndarray, modality: str, learn_until: int | None = None) -> Hints:
    """Hints for every position 0..n of a file (n: where EOS is the target), each (n+1,);
    `learn_until`: the match model copies only bytes before it (`obf.mixer.match.MatchModel`)."""
    h, ln = match_hints(data, min_len_of(modality), learn_until)
    return Hints(h, ln, *stride_hints(data, modality))


def paired_hints(target: bytes | np.ndarray, modality: str) -> Hints:
    """The hints of a `paired` target written from nothing: its match model's, which learns
    nothing (`learn_until=0`), and no stride hint. A target is what its input says, and the copy
    expert offers that; a stride hint guesses each byte from the target's own neighbours, which in
    generation are the bytes the row just wrote, so one wrong row makes the next wrong: greedy gray
    pictures wrote their first row again and again (`RowHints(stride=False)` in generation)."""
    h, ln = match_hints(target, min_len_of(modality), 0)
    return Hints(h, ln, np.full(len(h), -1, np.int64), np.zeros(len(h), np.int64))


TAIL = ng.WINDOW + col.WINDOW + adapt.WINDOW  # positions of a context generation scores before it starts
HEADER_MAX = 1024  # a file being written that declares no layout by here gets no stride hint


class Tail(NamedTuple):
    """What scoring gives the last T positions of a context (T = min(len, TAIL)): the hinted log p
    of each byte and of its match hint (0 where none); and the context's `file_hints`, which
    scoring computed for them; see `obf.runtime.scoring.tail_log_probs`."""

    lp: np.ndarray
    hint_lp: np.ndarray
    hints: Hints


class RowHints:
    """The hints of one generated row, kept up to date byte by byte: the bytes its file holds so
    far (a `continue` context and what the row made; a `paired` target's own bytes). With the
    context's `tail` from scoring, also the state of the match trust's correction (`obf.mixer.adapt`)
    of the column expert (`obf.mixer.columns`) and of the n-gram expert (`obf.mixer.ngram`).

    `copy` (a `paired` target's): the input byte each target byte reads, for the copy expert.
    `stride` False (a `paired` target's row): no stride hint, as `paired_hints` scores it.
    `sparse`: the n-gram expert with its sparse model, as the mixer the row serves (`Mixer.sparse`).
    `learn_from_output` False (what generation does by default): the parts that learn from the
    file (the match model's table and what it may copy, the match trust, the column counts and
    weight, the n-gram counts and weights) learn from the context only, as scoring with
    `learn_until=len(context)` does; the
    stride hint still reads the bytes just made, as it reads any earlier byte."""

    def __init__(self, context: bytes, modality: str, tail: Tail | None = None, *,
                 learn_from_output: bool = True, copy: CopyState | None = None, sparse: bool = False,
                 stride: bool = True) -> None:
        learn_until = None if learn_from_output else len(context)
        self.copy = copy  # a `paired` target's copy expert (`obf.mixer.input_copy`)
        self.match = MatchModel(context, min_len_of(modality), learn_until)
        self.modality = modality
        predictor = predictor_of(context, modality) if stride else None
        self.stride = StrideState(context, predictor) if predictor else None
        # a file whose header is still being written: look for its layout as it grows (`stride`
        # False, a `paired` target's row: never, as `paired_hints`)
        self.head: bytearray | None = (bytearray(context) if stride and predictor is None and modality in MEDIA
                                       else None)
        self.adapt: adapt.AdaptState | None = None
        self.columns: col.ColumnState | None = None
        self.ngram: ng.NgramState | None = None
        self.step_log_p: np.ndarray | None = None  # (V,) this step's log p before the column expert
        self.ngram_log_p: np.ndarray | None = None  # (V,) this step's log p before the n-gram expert
        if tail is not None:
            n, t = len(context), len(tail.lp)
            fh = tail.hints
            self.adapt = adapt.AdaptState.of_context(context, fh.match, fh.length, tail.hint_lp)
            targets = np.frombuffer(bytes(context), np.uint8).astype(np.int64)[n - t:]
            lp = adapt.adapt_log_probs(targets, fh.match[n - t:n], fh.length[n - t:n], tail.lp, tail.hint_lp)
            self.columns = col.ColumnState(context, lp[t - min(t, col.WINDOW + ng.WINDOW):])
            served = self.columns.served_tail  # what the column expert gives the last bytes
            self.ngram = ng.NgramState(context, served[len(served) - min(n, ng.WINDOW):], sparse)
            if not learn_from_output:
                self.adapt.freeze()
                self.columns.freeze()
                self.ngram.freeze()

    def predict(self) -> tuple[int, int, int, int]:
        """(match byte, match length, stride hint, activity) of the next byte, as `file_hints`."""
        h, ln = self.match.predict()
        s, a = self.stride.predict() if self.stride else (-1, 0)
        return h, ln, s, a

    def update(self, byte: int) -> None:
        """The byte the row made (or the format fixed), after `Mixer.step`."""
        self.match.update(byte)
        if self.stride:
            self.stride.update(byte)
        elif self.head is not None:
            self.head.append(byte)
            predictor = predictor_of(bytes(self.head), self.modality)
            if predictor is not None:  # the header is complete: hints from here on, as scoring gives them
                self.stride, self.head = StrideState(bytes(self.head), predictor), None
            elif len(self.head) >= HEADER_MAX:
                self.head = None
        if self.copy is not None:
            self.copy.update(byte)
        if self.adapt is not None:
            self.adapt.update(byte)
        if self.columns is not None:
            assert self.step_log_p is not None, "Mixer.step comes before update"
            self.columns.update(byte, float(self.step_log_p[byte]))
        if self.ngram is not None and self.ngram_log_p is not None:  # a mixer saved without it never sets it
            self.ngram.update(byte, float(self.ngram_log_p[byte]))
            self.ngram_log_p = None


def _column_settings() -> dict[str, Any]:
    return {"strides": list(col.STRIDES), "smoothing": col.SMOOTHING, "window": col.WINDOW,
            "prior_logit": col.PRIOR_LOGIT}


def _adapt_settings() -> dict[str, Any]:
    return {"window": adapt.WINDOW, "smoothing": adapt.SMOOTHING, "limit": adapt.LIMIT}


@dataclass(frozen=True)
class Mixer:
    """The hints' biases (fitted), then, each where enabled (nothing fitted), the match trust
    re-estimated in the file (`obf.mixer.adapt`), the column expert (`obf.mixer.columns`) and the
    n-gram expert (`obf.mixer.ngram`). A mixer saved by an obf without one of them serves without
    it."""

    match: MatchTable
    stride: StrideKernel
    columns: bool = False
    adapt: bool = False
    ngram: bool = False
    copy: cp.CopyTable | None = None  # `paired` targets' copy expert (`obf.mixer.input_copy`)
    copy_map: InputMap | None = None  # what it offers for what it reads (`obf.mixer.input_map`); None: the raw byte
    sparse: bool = False  # the n-gram expert's sparse model (`obf.mixer.ngram`); a mixer saved before it has none

    @property
    def needs_tail(self) -> bool:
        """Whether generation needs scoring's log-probabilities of the context's last positions."""
        return self.columns or self.adapt or self.ngram

    def apply(self, logits: np.ndarray, hints: Hints, modality_ids: np.ndarray, copies: Copies | None = None
              ) -> np.ndarray:
        """Logits (..., V) mixed with hints whose arrays have the leading shape (...);
        modality_ids broadcasts to it; `copies` (a `paired` target's, same shape) after them.
        The file-adaptive parts come after (`serve`, `step`)."""
        out = self.match.apply(logits, hints.match, hints.length, modality_ids)
        out = self.stride.apply(out, hints.stride, hints.activity, modality_ids)
        if self.copy is None or copies is None:
            return out
        return self.copy.apply(out, copies.hint, copies.run, copies.row)

    def serve(self, data: bytes | np.ndarray, hints: Hints, lp: np.ndarray, hint_lp: np.ndarray,
              learn_until: int | None = None) -> np.ndarray:
        """(n+1,) log p of a whole file's targets (its bytes, then EOS) as the model serves them,
        from the (n+1,) log p after `apply` of each target and of each position's match hint.
        `learn_until`: the file-adaptive parts learn from the bytes before it only (the hints
        must have been made with the same, `file_hints`): how generation serves the bytes it
        makes after a context of that length."""
        if self.adapt:
            targets = np.concatenate([np.frombuffer(bytes(data), np.uint8).astype(np.int64), [EOS]])
            lp = adapt.adapt_log_probs(targets, hints.match, hints.length, lp, hint_lp, learn_until)
        if self.columns:
            lp = col.file_log_probs(data, lp, learn_until)
        return ng.file_log_probs(data, lp, learn_until, self.sparse) if self.ngram else lp

    def step(self, logits: np.ndarray, rows: Sequence[RowHints], modality_ids: np.ndarray) -> np.ndarray:
        """One decode step of B rows: (B, V) logits -> (B, V) logits of the model as served (the
        hints' biases, then the match trust's correction, the column expert and the n-gram expert:
        log p' of every id). Each row keeps its step's log p for `RowHints.update`."""
        hints = Hints(*np.array([r.predict() for r in rows], dtype=np.int64).T)  # (B,) each
        copies = None
        if self.copy is not None and any(r.copy is not None for r in rows):
            copies = Copies(*np.array([r.copy.predict() if r.copy is not None else (-1, 0, 0) for r in rows],
                                      dtype=np.int64).T)  # (B,) each
        z = self.apply(logits, hints, modality_ids, copies)
        if not self.needs_tail:
            return z
        z = z.astype(np.float64)
        top = z.max(axis=-1, keepdims=True)
        log_p = z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))  # (B, V)
        for j, r in enumerate(rows):
            assert r.columns is not None and r.adapt is not None and r.ngram is not None, \
                "rows of this mixer need a context tail"
            assert not self.ngram or r.ngram.sparse == self.sparse, \
                "rows of this mixer: RowHints(..., sparse=mixer.sparse)"
            if self.adapt:
                h = int(hints.match[j])
                p = float(np.exp(log_p[j, h])) if h >= 0 else 0.0
                a = r.adapt.bias(h, int(hints.length[j]), p)
                if a:
                    log_p[j] -= np.log1p(p * np.expm1(a))
                    log_p[j, h] += a
            r.step_log_p = log_p[j]
        if self.columns:
            log_p = col.mix_rows(log_p, [r.columns for r in rows])
        if not self.ngram:
            return log_p
        for j, r in enumerate(rows):
            r.ngram_log_p = log_p[j]
        return ng.mix_rows(log_p, [r.ngram for r in rows])

    def to_dict(self) -> dict[str, Any]:
        d = {"match": self.match.to_dict(), "stride": self.stride.to_dict()}
        if self.adapt:
            d["adapt"] = _adapt_settings()
        if self.columns:
            d["columns"] = _column_settings()
        if self.ngram:
            d["ngram"] = ng.settings()
            if self.sparse:
                d["ngram_sparse"] = ng.sparse_settings()
        if self.copy is not None:
            d["copy"] = cp.to_dict(self.copy, self.copy_map)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Mixer:
        if d.get("columns") and d["columns"] != _column_settings():
            raise ValueError("the mixer's column expert was made with other settings than this obf uses")
        if d.get("adapt") and d["adapt"] != _adapt_settings():
            raise ValueError("the mixer's match trust correction was made with other settings than this obf uses")
        if d.get("ngram") and d["ngram"] != ng.settings():
            raise ValueError("the mixer's n-gram expert was made with other settings than this obf uses")
        if d.get("ngram_sparse") and d["ngram_sparse"] != ng.sparse_settings():
            raise ValueError("the mixer's sparse contexts were made with other settings than this obf uses")
        copy, copy_map = cp.from_dict(d["copy"]) if d.get("copy") else (None, None)
        return Mixer(MatchTable.from_dict(d["match"]), StrideKernel.from_dict(d["stride"]), bool(d.get("columns")),
                     bool(d.get("adapt")), bool(d.get("ngram")), copy, copy_map,
                     sparse=bool(d.get("ngram") and d.get("ngram_sparse")))


def mixer_of(meta: Mapping[str, Any]) -> Mixer | None:
    """The mixer a loaded model carries (`meta`: its checkpoint or export config), or None."""
    return Mixer.from_dict(meta["mixer"]) if meta.get("mixer") else None


@dataclass
class MixerStats:
    """What `fit_mixer` needs, gathered position by position from the network's logits."""

    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def _put(self, **arrays: np.ndarray) -> None:
        for k, v in arrays.items():
            self.parts.setdefault(k, []).append(v)

    def add(self, logits: np.ndarray, targets: np.ndarray, hints: Hints, modality_ids: np.ndarray) -> None:
        """logits (..., V) of positions whose targets and hints have the leading shape (...);
        a hint of -1 leaves the position out of that hint's fit."""
        mods = np.broadcast_to(modality_ids, targets.shape)
        at = np.nonzero(hints.match >= 0)
        h = hints.match[at]
        self._put(m_mod=mods[at], m_len=hints.length[at], m_p=np.exp(log_softmax_at(logits[at], h)),
                  m_hit=(targets[at] == h).astype(np.float64))
        at = np.nonzero(hints.stride >= 0)
        rows, s = logits[at].astype(np.float64), hints.stride[at]
        lse = np.logaddexp.reduce(rows, axis=-1)[:, None]  # (K, 1)
        mh = hints.match[at]
        came = targets[at] - s
        self._put(s_mod=mods[at], s_act=hints.activity[at],
                  s_win=window(rows, s) - lse,  # (K, 2R+1) log-probabilities around the hint
                  s_came=np.where((np.abs(came) <= OFFSETS[-1]) & (targets[at] < N_BYTES), came + OFFSETS[-1], -1),
                  s_hint=s, s_match=mh,
                  s_mlen=hints.length[at],
                  s_mp=np.where(mh >= 0, np.exp(np.take_along_axis(rows, np.maximum(mh, 0)[:, None], -1) - lse)[:, 0],
                                0.0))

    def add_copies(self, logits: np.ndarray, targets: np.ndarray, copies: Copies) -> None:
        """`paired` targets' logits (..., V) after the match and stride biases, where the copy
        expert comes; a hint of -1 leaves the position out."""
        at = np.nonzero(copies.hint >= 0)
        h = copies.hint[at]
        self._put(c_row=copies.row[at], c_run=copies.run[at], c_p=np.exp(log_softmax_at(logits[at], h)),
                  c_signal=cp.CopyTable.signal(logits[at], h),
                  c_hit=(targets[at] == h).astype(np.float64))

    def get(self, key: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate(self.parts[key]) if self.parts.get(key) else empty


def fit_copy(stats: MixerStats) -> MatchTable | None:
    """The copy expert's table on what `MixerStats.add_copies` gathered; None without pairs."""
    f, i = np.zeros(0), np.zeros(0, dtype=np.int64)
    rows = stats.get("c_row", i)
    if not len(rows):
        return None
    return cp.fit(rows, stats.get("c_run", i), stats.get("c_p", f), stats.get("c_signal", f), stats.get("c_hit", f))


def fit_mixer(stats: MixerStats) -> Mixer:
    """The match table on the network's logits, then the stride kernel on the network's logits
    with the fitted match bias applied: each position's window probabilities renormalised by
    the match bias it gets (exactly what `Mixer.apply` does before the kernel)."""
    f, i = np.zeros(0), np.zeros(0, dtype=np.int64)
    table = fit_table(stats.get("m_mod", i), stats.get("m_len", i), stats.get("m_p", f), stats.get("m_hit", f))
    mod = stats.get("s_mod", i)
    if not len(mod):
        return Mixer(table, StrideKernel.zeros(), columns=True, adapt=True, ngram=True, sparse=True)
    win, mh = stats.get("s_win", np.zeros((0, len(OFFSETS)))), stats.get("s_match", i)
    mp = stats.get("s_mp", f)
    has = mh >= 0
    at = mh - stats.get("s_hint", i) + OFFSETS[-1]  # the match hint's index in the window
    w = np.zeros(len(mod))
    cells = MatchTable.cells(mod[has], stats.get("s_mlen", i)[has], mp[has])
    w[has] = table.weights[cells]
    win = win - np.log1p(np.expm1(w) * mp)[:, None]  # the match bias's normaliser
    inside = np.flatnonzero(has & (at >= 0) & (at < len(OFFSETS)))
    win[inside, at[inside]] += w[inside]
    kernel = fit_kernel(mod, stats.get("s_act", i), win, stats.get("s_came", i))
    return Mixer(table, kernel, columns=True, adapt=True, ngram=True, sparse=True)
