"""The mixer's fit after the last training step (`obf.mixer`): what `obf train` appends to the
network it trained, on training files and pairs scored by that network.

Why a module of its own: the training loop (`obf.train`) needs only its entry point, and the fit
is the one place that joins the network (`obf.runtime.torch_backend`) with the mixer's numpy
parts, for `obf train` and `benchmarks/mixer.py` alike.
"""

from __future__ import annotations

import dataclasses

from obf.core.config import TrainConfig
from obf.core.vocab import MODALITIES
from obf.data.dataset import Dataset
from obf.mixer import input_map
from obf.mixer.input_copy import pair_index
from obf.mixer.mix import Mixer, MixerStats, fit_copy, fit_mixer
from obf.model.network import OmniByteFormer


def copy_map_samples(ds: Dataset, end: bool) -> list[tuple[str, tuple[int, input_map.Reads, bytes]]]:
    """Every training pair of `ds` as the copy expert's map is fitted on it: (input key, (pair row,
    `input_map.reads` of the target's positions, target)), in key order; `end`: the model's
    `input_end`. Read once, for the map's three fits."""
    out = []
    for inp, tgt in sorted(ds.pairs("train"), key=lambda p: p[0].key):
        target = ds.file_bytes(tgt).tobytes()
        r = input_map.reads(ds.file_bytes(inp).tobytes(), inp.modality, tgt.modality, len(target) + 1, end)
        out.append((inp.key, (pair_index(inp.modality, tgt.modality), r, target)))
    return out


def fit_model_mixer(model: OmniByteFormer, ds: Dataset, tcfg: TrainConfig) -> Mixer | None:
    """Fit the mixer (`obf.mixer`) on up to `train.mixer_fit_bytes` bytes of training files per
    modality (whole files, or their first 16 KiB, in key order), scored like evaluation by the
    trained network; then its copy expert: its table on training pairs, up to a quarter of that
    in target bytes per pair of modalities (in key order), scored as `paired` is with the mixer
    fitted so far, cross-fitted: each half of those pairs (alternate ones) is offered what a map
    (`obf.mixer.input_map`: no network needed) fitted on every other training pair offers, so
    that the table learns how far a map holds on pairs it never saw; the model keeps the map
    fitted on every training pair.
    None when `mixer_fit_bytes` is 0: the model is the network alone."""
    from obf.runtime.backend import input_end_of
    from obf.runtime.scoring import paired_log_probs, whole_file_bits
    from obf.runtime.torch_backend import TorchBackend

    if not tcfg.mixer_fit_bytes:
        return None
    files = []
    for m in MODALITIES:
        left = tcfg.mixer_fit_bytes
        for r in ds.select(split="train"):
            if r.modality == m and left > 0:
                data = ds.file_bytes(r)[: min(16384, left)]
                files.append((data, m))
                left -= len(data)
    pairs, left, keys = [], {}, []
    for inp, tgt in sorted(ds.pairs("train"), key=lambda p: p[0].key):
        kind = (inp.modality, tgt.modality)
        if left.setdefault(kind, tcfg.mixer_fit_bytes // 4) > 0:
            pairs.append((ds.file_bytes(inp).tobytes(), inp.modality, ds.file_bytes(tgt).tobytes(), tgt.modality))
            keys.append(inp.key)
            left[kind] -= tgt.length
    stats = MixerStats()
    was_training = model.training
    backend = TorchBackend(model, precision="fp32")
    whole_file_bits(backend, files, batch_size=32, fit=stats)
    mixer = fit_mixer(stats)
    if pairs:
        samples = copy_map_samples(ds, input_end_of(backend))
        for fold in (0, 1):
            leave_out = set(keys[fold::2])
            held_out = [p for p, k in zip(pairs, keys) if k in leave_out]
            fold_map = input_map.fit([s for k, s in samples if k not in leave_out])
            paired_log_probs(backend, held_out, batch_size=32, mixer=dataclasses.replace(mixer, copy_map=fold_map),
                             fit=stats)
        mixer = dataclasses.replace(mixer, copy_map=input_map.fit([s for _, s in samples]), copy=fit_copy(stats))
    model.train(was_training)
    return mixer
