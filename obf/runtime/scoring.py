"""Whole-file scoring: the bits a model needs for every byte of a file, each predicted from the
bytes before it in that file only, window after window, batched over files.

Shared by evaluation (`obf evaluate`) and training, which fits the model's mixer (`obf.mixer`)
on the network's logits of training files scored the same way. Works with any backend that
offers teacher-forced `logits(src, dec)` (and `window_logits` for a causal encoder): a torch
checkpoint and its ONNX export give the same numbers. Generation asks it for the log-probabilities
of a context's last bytes (`tail_log_probs`), from which the mixer's file-adaptive parts start.
"""

from __future__ import annotations

import hashlib
import sys
from typing import NamedTuple

import numpy as np

from obf.core.bits import LN2, log_probs_of
from obf.core.vocab import PAD
from obf.data.objectives import Example, collate, windows_example
from obf.mixer.input_copy import Copies, copy_hints
from obf.mixer.match import modality_index
from obf.mixer.mix import TAIL, Hints, Mixer, MixerStats, Tail, file_hints, mixer_of, paired_hints
from obf.runtime.backend import Backend, input_end_of, layout_input_of, meta_of, paired_places_of, query_map_of


def file_windows(data: np.ndarray | bytes, modality: str, max_src_len: int, max_tgt_len: int,
                 stride: int, group: int = 1, places: bool = False) -> list[tuple[Example, list[tuple[int, int]]]]:
    """Examples whose scored targets cover the file and its EOS once, each with `(start, first)`
    per window (in `collate`'s order: earlier windows, then the last): the window's first byte in
    the file and its first scored target.

    Window k starts at byte s_k and predicts targets s_k .. s_k + W - 1 (W = max_tgt_len) from the
    bytes before s_k (encoder) and before each target (decoder). With stride < W, windows overlap
    and only the last `stride` targets of a window are scored, so every scored byte has at least
    W - stride bytes of decoder context: the usual sliding-window evaluation. stride = W gives
    non-overlapping windows.

    `group` > 1 (a causal encoder; stride a multiple of the patch size) puts up to `group`
    consecutive windows on one encoder pass: the source ends at the last window's start and
    holds `max_src_len` ids at most, so each window sees the bytes before it back to where that
    source begins. `group_size` keeps that within a quarter of the context.

    `places`: each window carries its targets' place ids (a model with `layout_input`).
    """
    n, w = len(data), max_tgt_len
    starts = [(0, 0)]
    end = w  # positions [0, end) are scored
    while end <= n:  # the EOS at position n is not scored yet
        s = end + stride - w
        starts.append((s, w - stride))
        end = s + w
    parts = [starts[g:g + group] for g in range(0, len(starts), group)]
    return [(windows_example(data, [s for s, _ in part], modality, max_src_len, w, places=places), part)
            for part in parts]


def group_size(backend: Backend, stride: int) -> int:
    """Windows per encoder pass for `file_windows`: 1 unless the model's encoder is causal and the
    stride keeps the windows on the patch grid; then as many as span a quarter of the context.
    The torch and ONNX backends group alike, so a checkpoint and its export score the same."""
    if not getattr(backend, "causal_encoder", False):
        return 1
    if stride % backend.patch_size:
        return 1
    return max(1, (backend.max_src_len - 2) // 4 // stride + 1)


class FileBits(NamedTuple):
    """Total bits per file: the model as served (the network and its mixer) and the network alone."""

    model: list[float]
    network: list[float]


class PositionLogProbs(NamedTuple):
    """Per file, (n+1,) log-probabilities in nats of its targets (n bytes, then EOS): the network
    with its mixer's hints (`Mixer.apply`, before the file-adaptive parts), the same of each
    position's match hint (0 where none), and the network alone; and the file's hints (None
    without a mixer). Positions a `tails` request left out are 0."""

    hinted: list[np.ndarray]
    hint: list[np.ndarray]
    network: list[np.ndarray]
    hints: list[Hints | None]


def position_log_probs(backend: Backend, files: list[tuple[np.ndarray, str]], batch_size: int,
                       stride: int | None = None, progress: bool = False, fit: MixerStats | None = None,
                       tails: list[int] | None = None, learn_until: list[int | None] | None = None
                       ) -> PositionLogProbs:
    """Score every position of each (bytes, modality) file, window after window as
    `file_windows` lays them out; windows of all files are batched, `batch_size` windows at most
    per batch (an example with many windows is a batch). Where the model carries a mixer
    (`obf.mixer`), each position's logits are mixed with its hints exactly as sampling mixes
    them. `fit` collects what `obf.mixer.fit_mixer` needs from the network's logits (training
    fits its mixer so). `tails[i]`: only the windows that score file i's last `tails[i]` bytes.
    `learn_until[i]`: file i's hints as generation gives them after a context of that length
    (`obf.mixer.file_hints`)."""
    from tqdm import tqdm

    w = backend.max_tgt_len
    stride = w // 2 if not stride else min(stride, w)
    group = group_size(backend, stride)
    placed = layout_input_of(backend)
    mixer = mixer_of(meta_of(backend))
    until = learn_until if learn_until is not None else [None] * len(files)
    hints = [file_hints(data, modality, u) if mixer or fit else None for (data, modality), u in zip(files, until)]
    work = []  # (file index, example, (start, first scored target) of each window)
    for fi, (data, modality) in enumerate(files):
        n = len(data)
        from_pos = 0 if tails is None else n - tails[fi]
        if tails is not None and not tails[fi]:
            continue
        for ex, windows in file_windows(data, modality, backend.max_src_len, w, stride, group, placed):
            if windows[-1][0] + w > from_pos:  # the last window scores up to its start + w
                work.append((fi, ex, windows))
    work, repeats = _unique_windows(work, files, hints, w) if fit is None else (work, [])
    work.sort(key=lambda item: len(item[1].src))  # similar lengths together: less padding
    batches, cur = [], []
    for item in work:
        if cur and sum(len(x[2]) for x in cur) + len(item[2]) > batch_size:
            batches.append(cur)
            cur = []
        cur.append(item)
    batches += [cur] if cur else []
    hinted = [np.zeros(len(data) + 1) for data, _ in files]
    hint = [np.zeros(len(data) + 1) for data, _ in files]
    network = [np.zeros(len(data) + 1) for data, _ in files]
    for chunk in tqdm(batches, desc="bpb", unit="batch", disable=not progress, file=sys.stderr):
        b = collate([ex for _, ex, _ in chunk], multiple=max(8, backend.patch_size))
        kw = {} if b.places is None else {"places": b.places}  # backends that know no places take none
        if group > 1:
            logits = backend.window_logits(b.src, b.dec, b.rows, b.visible, **kw)
        else:
            logits = backend.logits(b.src, b.dec, **kw)
        windows = [(fi, start, first) for fi, _, ws in chunk for start, first in ws]  # collate's window order
        lp_net = log_probs_of(logits, b.tgt)  # (N, T)
        lp, lp_hint = lp_net, np.zeros_like(lp_net)
        if mixer is not None or fit is not None:
            h = Hints(*(np.full(b.tgt.shape, fill, dtype=np.int64) for fill in (-1, 0, -1, 0)))  # (N, T) each
            for n, (fi, start, _) in enumerate(windows):
                k = min(b.tgt.shape[1], len(hints[fi].match) - start)
                for mine, theirs in zip(h, hints[fi]):
                    mine[n, :k] = theirs[start:start + k]
            mods = modality_index([files[fi][1] for fi, _, _ in windows])[:, None]  # (N, 1)
            if fit is not None:
                unscored = np.arange(b.tgt.shape[1])[None, :] < np.array([f for _, _, f in windows])[:, None]
                fit.add(logits, b.tgt, Hints(*(np.where(unscored, -1, x) for x in h)), mods)  # each position once
            if mixer is not None:
                mixed = mixer.apply(logits, h, mods)
                lp = log_probs_of(mixed, b.tgt)
                lp_hint = log_probs_of(mixed, np.where(h.match >= 0, h.match, PAD))  # 0 where no hint
        for n, (fi, start, first) in enumerate(windows):
            k = min(b.tgt.shape[1], len(hinted[fi]) - start)  # targets past EOS are padding
            hinted[fi][start + first:start + k] = lp[n, first:k]
            hint[fi][start + first:start + k] = lp_hint[n, first:k]
            network[fi][start + first:start + k] = lp_net[n, first:k]
    for fi, windows, fj in repeats:  # windows of file fi that file fj's scores cover
        for start, first in windows:
            k = min(w, len(hinted[fi]) - start)
            for out in (hinted, hint, network):
                out[fi][start + first:start + k] = out[fj][start + first:start + k]
    return PositionLogProbs(hinted, hint, network, hints)


Work = tuple[int, Example, list[tuple[int, int]]]  # (file index, example, (start, first scored target) per window)
Repeat = tuple[int, list[tuple[int, int]], int]  # (file index, its windows, the file whose scores it copies)


def _unique_windows(work: list[Work], files: list[tuple[np.ndarray, str]], hints: list[Hints | None], width: int
                    ) -> tuple[list[Work], list[Repeat]]:
    """`work` without the examples that repeat an earlier one: the same modality, windows, source,
    targets and place ids, and the same hints over those windows, so the same logits and mixed scores.
    Files that share a start score it once: `obf evaluate`'s samples score each kept part twice,
    once followed by what the model wrote and once by the real bytes that follow it."""
    seen: dict[bytes, int] = {}
    unique, repeats = [], []
    for fi, ex, windows in work:
        h = hints[fi]
        key = hashlib.sha256(files[fi][1].encode() + np.asarray(windows, np.int64).tobytes())
        for ids in (ex.src, ex.tgt, *(win.targets for win in ex.earlier)):
            key.update(np.asarray(ids, np.int64).tobytes() + b"|")
        for places in (ex.places, *(win.places for win in ex.earlier)):
            key.update(b"-" if places is None else places.tobytes())
        for start, _ in windows:
            for x in h or ():
                key.update(x[start:start + width].tobytes())
        digest = key.digest()
        if digest in seen:
            repeats.append((fi, windows, seen[digest]))
        else:
            seen[digest] = fi
            unique.append((fi, ex, windows))
    return unique, repeats


def served_log_probs(backend: Backend, files: list[tuple[np.ndarray, str]], batch_size: int, stride: int | None = None,
                     progress: bool = False, fit: MixerStats | None = None,
                     learn_until: list[int | None] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per file, (n+1,) log p of its targets (bytes, then EOS) under the model as served
    (`position_log_probs`, then the mixer's file-adaptive parts: `Mixer.serve`) and under the
    network alone. `learn_until[i]`: as generation serves the bytes after a context of that length."""
    until = learn_until if learn_until is not None else [None] * len(files)
    lp = position_log_probs(backend, files, batch_size, stride, progress, fit, learn_until=until)
    mixer = mixer_of(meta_of(backend))
    if mixer is None:
        return lp.hinted, lp.network
    served = [mixer.serve(data, hints, h, hl, u)
              for (data, _), hints, h, hl, u in zip(files, lp.hints, lp.hinted, lp.hint, until)]
    return served, lp.network


def whole_file_bits(backend: Backend, files: list[tuple[np.ndarray, str]], batch_size: int, stride: int | None = None,
                    progress: bool = False, fit: MixerStats | None = None) -> FileBits:
    """Total bits to code each (bytes, modality) file with the model (`served_log_probs`);
    `network` is the network alone."""
    served, network = served_log_probs(backend, files, batch_size, stride, progress, fit)
    return FileBits([-float(x.sum()) / LN2 for x in served], [-float(x.sum()) / LN2 for x in network])


def tail_log_probs(backend: Backend, contexts: list[bytes], modalities: list[str]) -> list[Tail]:
    """What `position_log_probs` (default stride) gives the last `obf.mixer.TAIL` bytes of each
    context (fewer when it is shorter): what the mixer's file-adaptive parts need to start
    generating after it as scoring would score it."""
    files = [(np.frombuffer(bytes(c), np.uint8), m) for c, m in zip(contexts, modalities)]
    tails = [min(TAIL, len(c)) for c in contexts]
    lp = position_log_probs(backend, files, batch_size=32, tails=tails)
    return [Tail(h[len(c) - t:len(c)], hl[len(c) - t:len(c)], fh)
            for h, hl, fh, c, t in zip(lp.hinted, lp.hint, lp.hints, contexts, tails)]


class PairedScores(NamedTuple):
    """Per pair, over its target's n bytes and EOS (n+1,): the log p the model as served gives
    each (given the whole input, window after window), and whether the hinted network's most
    likely byte was the target (teacher forcing)."""

    served: list[np.ndarray]
    argmax_right: list[np.ndarray]


def paired_log_probs(backend: Backend, pairs: list[tuple[bytes, str, bytes, str]], batch_size: int = 32,
                     progress: bool = False, *, mixer: Mixer | None = None, fit: MixerStats | None = None
                     ) -> PairedScores:
    """Teacher-forced `paired` scoring of (input, input modality, target, target modality) pairs:
    every window of each target with the whole input in the encoder, aligned with its part of the
    input (`obf.data.objectives.paired_example`; each query where the pair's conversion maps it for
    a model with `query_map`; an EOS id after the input for one with `input_end`; the target's
    place ids for one with `paired_places`), as generation makes them. Where the model carries a
    mixer, the target's hints come from its own bytes, with nothing learned from them and no
    stride hint (`obf.mixer.mix.paired_hints`): what generation serves a target it writes from
    nothing; its copy expert offers each target byte the input byte it reads (`obf.mixer.input_copy`).

    `mixer`: this one instead of the model's (training fits one); `fit` gathers what the copy
    expert's fit needs at the logits it comes after (`MixerStats.add_copies`)."""
    from tqdm import tqdm

    from obf.data.objectives import PAIRED_WINDOWS, paired_example

    w = backend.max_tgt_len
    query_map, end, placed = query_map_of(backend), input_end_of(backend), paired_places_of(backend)
    mixer = mixer if mixer is not None else mixer_of(meta_of(backend))
    hints = [paired_hints(t, tm) if mixer else None for _, _, t, tm in pairs]
    copies = [copy_hints(i, im, t, tm, end, mixer.copy_map) for i, im, t, tm in pairs] if mixer else []  # (n+1,) each
    if fit is not None and mixer is not None and mixer.copy is not None:
        raise ValueError("the copy expert is fitted at the logits before it: give a mixer without one")
    work = []  # (pair index, example, first target window)
    for pi, (inp, im, tgt, tm) in enumerate(pairs):
        n_windows = len(tgt) // w + 1
        for k in range(0, n_windows, PAIRED_WINDOWS):
            ks = range(k, min(n_windows, k + PAIRED_WINDOWS))
            ex = paired_example(inp, im, tgt, tm, backend.max_input_len, w, ks, query_map=query_map, input_end=end,
                                places=placed)
            work.append((pi, ex, k))
    batches, cur = [], []
    for item in work:
        if cur and sum(len(x[1].earlier) + 1 for x in cur) + len(item[1].earlier) + 1 > batch_size:
            batches.append(cur)
            cur = []
        cur.append(item)
    batches += [cur] if cur else []
    lp_h = [np.zeros(len(t) + 1) for _, _, t, _ in pairs]
    hint_lp = [np.zeros(len(t) + 1) for _, _, t, _ in pairs]
    right = [np.zeros(len(t) + 1, dtype=bool) for _, _, t, _ in pairs]
    for chunk in tqdm(batches, desc="paired", unit="batch", disable=not progress, file=sys.stderr):
        b = collate([ex for _, ex, _ in chunk], multiple=max(8, backend.patch_size))
        logits = backend.window_logits(b.src, b.dec, b.rows, b.visible, b.align, b.moved, b.places)  # (N, T, V)
        starts = [(pi, (k0 + j) * w) for pi, ex, k0 in chunk for j in range(len(ex.earlier) + 1)]  # collate's order
        mixed, lp_hint = logits, np.zeros(b.tgt.shape)
        if mixer is not None:
            h = Hints(*(np.full(b.tgt.shape, fill, dtype=np.int64) for fill in (-1, 0, -1, 0)))  # (N, T) each
            c = Copies(*(np.full(b.tgt.shape, fill, dtype=np.int64) for fill in (-1, 0, 0)))  # (N, T) each
            for n, (pi, start) in enumerate(starts):
                k = min(b.tgt.shape[1], len(hints[pi].match) - start)
                for mine, theirs in zip((*h, *c), (*hints[pi], *copies[pi])):
                    mine[n, :k] = theirs[start:start + k]
            mods = modality_index([pairs[pi][3] for pi, _ in starts])[:, None]  # (N, 1)
            mixed = mixer.apply(logits, h, mods, c)
            if fit is not None:  # a mixer without a copy expert yet: these are the logits it comes after
                fit.add_copies(mixed, b.tgt, c)
            lp_hint = log_probs_of(mixed, np.where(h.match >= 0, h.match, PAD))
        lp = log_probs_of(mixed, b.tgt)
        best = mixed.argmax(axis=-1) == b.tgt
        for n, (pi, start) in enumerate(starts):
            k = min(b.tgt.shape[1], len(lp_h[pi]) - start)
            lp_h[pi][start:start + k] = lp[n, :k]
            hint_lp[pi][start:start + k] = lp_hint[n, :k]
            right[pi][start:start + k] = best[n, :k]
    if mixer is None:
        return PairedScores(lp_h, right)
    served = [mixer.serve(t, hh, lp, hl, 0) for (_, _, t, _), hh, lp, hl in zip(pairs, hints, lp_h, hint_lp)]
    return PairedScores(served, right)
