"""The copy expert of `paired` targets (obf.mixer.input_copy): which input byte each target byte is
offered, that writing a target byte by byte offers what scoring it offers, the fit, and what a
mixer carrying it saves and serves."""

import numpy as np
import pytest

from obf.core.vocab import EOS, MODALITIES, PAD
from obf.formats.conversions import convert, input_offsets
from obf.mixer.input_copy import PAIRS, ROWS, Copies, CopyState, CopyTable, copy_hints, fit, pair_index, row
from obf.mixer.input_map import CONFIDENCES
from obf.mixer.match import MatchTable, modality_index
from obf.mixer.mix import Mixer, MixerStats, RowHints, Tail, file_hints, fit_copy, mixer_of, paired_hints
from obf.mixer.stride_hint import StrideKernel

TEXT = b"def f(x):\n    return x * 2  # Twice, as before\n"


def test_each_target_byte_is_offered_the_input_byte_its_conversion_reads():
    inp, target = convert("upper", TEXT)
    hints, runs, rows = copy_hints(inp, "text", target, "text", end=True)
    assert (rows == row(pair_index("text", "text"), CONFIDENCES - 1)).all()  # raw copies: the surest row
    assert hints[:-1].tolist() == list(inp) and hints[-1] == -1  # upper reads its own offset; EOS reads nothing
    copied = [a == b for a, b in zip(target, inp)]
    for i in range(len(target) + 1):  # the run: copies that came right just before, unbroken
        k = 0
        while k < i and copied[i - 1 - k]:
            k += 1
        assert runs[i] == k
    assert runs.max() >= 5 and runs[1] == 0  # "def" -> "DEF" breaks at once
    blob = bytes(range(200, 240))
    inp, target = convert("hex", blob)
    hints, _, _ = copy_hints(inp, "binary", target, "text", end=True)
    reads = input_offsets("binary", "text", inp, np.arange(len(target) + 1), end=True)
    assert [hints[i] for i in range(len(target)) if reads[i] < len(inp)] == [inp[reads[i]] for i in range(len(target))
                                                                             if reads[i] < len(inp)]
    assert hints[-1] == -1 and (hints[:3] == inp[0]).all()  # "c8 " all read byte 0; the end reads past the input
    assert copy_hints(b"", "text", b"AB", "text", end=False)[0].tolist() == [-1, -1, -1]


@pytest.mark.parametrize("conversion,source,target_modality", [("upper", "text", "text"), ("hex", "binary", "text"),
                                                                 ("gray", "image", "image")])
@pytest.mark.parametrize("end", [True, False])
@pytest.mark.parametrize("mapped", [False, True])
def test_writing_a_target_byte_by_byte_offers_what_scoring_it_offers(conversion, source, target_modality, end, mapped):
    from tests.test_input_map import fitted
    from tests.test_mixer import _bmp

    if conversion == "upper":  # longer than the conversion takes, to reach a second chunk of reads
        inp, target = TEXT * 8, (TEXT * 8).upper()
    else:
        inp, target = convert(conversion, bytes(range(128)) if conversion == "hex" else _bmp(16, 12, seed=2))
    target = target[:200] + b"\x00xyz" + target[204:]  # a few bytes that are not the conversion's
    imap = fitted(end) if mapped else None
    hints, runs, rows = copy_hints(inp, source, target, target_modality, end, imap)
    state = CopyState(inp, source, target_modality, end, imap)
    for i, b in enumerate(target):
        assert state.predict() == (hints[i], runs[i], rows[i]), i
        state.update(b)
    assert state.predict() == (hints[-1], runs[-1], rows[-1])
    if mapped:  # the map offers the conversion's bytes and ends the target
        assert (hints[:200] == np.frombuffer(target[:200], np.uint8)).mean() > 0.95 and hints[-1] == EOS
    assert len(target) > 256  # past one chunk of reads


def test_the_fit_raises_the_copy_where_it_comes_and_leaves_pairs_it_never_saw():
    """Positions where the network already leans to the copy and it comes get a bias; a pair of
    modalities with no training pairs gets none, whatever the others learnt."""
    rng = np.random.default_rng(0)
    k = 4000
    p = rng.uniform(0.01, 0.9, k)
    hit = (rng.uniform(size=k) < np.minimum(1.0, 1.6 * p)).astype(np.float64)  # the copy comes more often than p says
    mine = int(row(pair_index("text", "text"), 3))
    table = fit(np.full(k, mine), np.zeros(k, dtype=np.int64), p, p, hit)
    w = table.weights[mine, 0]
    assert (w[2:7] > 0.1).all() and w[7] == 0  # no position has p >= 0.95: no bias there
    assert not np.delete(table.weights, mine, axis=0).any()  # other confidences and pairs: none
    assert table.weights.shape == (ROWS, *CopyTable.zeros().weights.shape[1:]) and ROWS == PAIRS * CONFIDENCES


def _mixer(copy: CopyTable | None) -> Mixer:
    rng = np.random.default_rng(3)
    return Mixer(MatchTable(rng.normal(1, 1, MatchTable.zeros().weights.shape)),
                 StrideKernel(rng.normal(0, 0.5, StrideKernel.zeros().weights.shape)),
                 columns=True, adapt=True, ngram=True, copy=copy)


@pytest.mark.parametrize("conversion,source,target_modality", [("upper", "text", "text"), ("gray", "image", "image")])
def test_each_decode_step_of_a_paired_target_serves_what_teacher_forced_scoring_serves(conversion, source,
                                                                                      target_modality):
    """`Mixer.step` on a row that writes a `paired` target from nothing (its copy state beside
    its hints) gives every byte the log-probability that `Mixer.apply` with the target's copy
    hints, then `Mixer.serve` with nothing learned (`learn_until=0`), gives it: what
    `obf.runtime.scoring.paired_log_probs` computes."""
    from obf.core.bits import log_probs_of
    from tests.test_mixer import _bmp

    rng = np.random.default_rng(1)
    inp, target = convert(conversion, TEXT * 4 if conversion == "upper" else _bmp(12, 10, seed=5))
    copy = CopyTable(rng.normal(2, 1, CopyTable.zeros(ROWS).weights.shape))
    mixer = _mixer(copy)
    n = len(target)
    logits = rng.normal(0, 2, (n + 1, 262)).astype(np.float32)
    targets = np.r_[np.frombuffer(target, np.uint8).astype(np.int64), EOS]
    mods = modality_index([target_modality])
    fh = paired_hints(target, target_modality)  # what paired scoring gives the target: no stride hint
    assert (fh.stride == -1).all() and (fh.match == file_hints(target, target_modality, 0).match).all()
    copies = copy_hints(inp, source, target, target_modality, end=True)
    z = mixer.apply(logits, fh, mods, copies)
    lp = log_probs_of(z[None], targets[None])[0]
    hint_lp = log_probs_of(z[None], np.where(fh.match >= 0, fh.match, PAD)[None])[0]
    served = mixer.serve(target, fh, lp, hint_lp, 0)
    assert not np.allclose(z, mixer.apply(logits, fh, mods))  # the copy expert acts here
    tail = Tail(np.zeros(0), np.zeros(0), file_hints(b"", target_modality))
    row = RowHints(b"", target_modality, tail, learn_from_output=False,
                   copy=CopyState(inp, source, target_modality, True), stride=False)
    for i in range(n + 1):
        out = mixer.step(logits[i][None], [row], mods).astype(np.float64)[0]
        np.testing.assert_allclose(out[targets[i]], served[i], atol=1e-4)
        assert row.predict()[2] == -1  # the row's own bytes never guess its next one
        if i < n:
            row.update(int(targets[i]))


def test_a_mixer_keeps_its_copy_expert_and_one_saved_before_it_serves_without():
    import dataclasses

    from tests.test_input_map import fitted

    rng = np.random.default_rng(2)
    copy = CopyTable(rng.normal(0, 1, CopyTable.zeros(ROWS).weights.shape))
    d = dataclasses.replace(_mixer(copy), copy_map=fitted(True)).to_dict()
    back = mixer_of({"mixer": d})
    assert back is not None and back.copy is not None and back.copy_map is not None
    np.testing.assert_allclose(back.copy.weights, copy.weights, atol=1e-6)
    assert back.copy_map.to_dict() == fitted(True).to_dict()
    assert set(d["copy"]["weights"]) == {f"{s}->{t}" for s in MODALITIES for t in MODALITIES}
    before_maps = {**d["copy"], "weights": {k: v[0] for k, v in d["copy"]["weights"].items()}}
    del before_maps["map"]
    was = mixer_of({"mixer": {**d, "copy": before_maps}})  # one row per pair, raw copies: every row is it
    assert was is not None and was.copy is not None and was.copy_map is None
    np.testing.assert_allclose(was.copy.weights, np.repeat(copy.weights[::CONFIDENCES], CONFIDENCES, axis=0), atol=1e-6)
    old = dict(d)
    del old["copy"]
    assert mixer_of({"mixer": old}).copy is None  # a mixer from before the copy expert: no copy, as it was
    other = {**d, "copy": {**d["copy"], "prob_edges": [0.5]}}
    with pytest.raises(ValueError, match="copy expert"):
        mixer_of({"mixer": other})


def test_fit_copy_gathers_at_the_logits_it_follows():
    """`MixerStats.add_copies` keeps every copy-hinted position and `fit_copy` fits on them; no
    pairs, no copy expert."""
    rng = np.random.default_rng(4)
    stats = MixerStats()
    assert fit_copy(stats) is None
    logits = rng.normal(0, 1, (2, 5, 262))
    hints = np.array([[65, 66, -1, 67, 68], [1, 2, 3, 4, -1]])
    targets = np.array([[65, 66, 0, 0, 68], [1, 9, 3, 4, EOS]])
    stats.add_copies(logits, targets, Copies(hints, np.zeros_like(hints), np.full_like(hints, 6)))
    assert stats.get("c_hit", np.zeros(0)).tolist() == [1, 1, 0, 1, 1, 0, 1, 1]
    table = fit_copy(stats)
    assert table is not None and table.weights[6].any() and not np.delete(table.weights, 6, axis=0).any()


def test_training_fits_the_copy_expert_on_its_pairs_and_generation_follows_it(tmp_path):
    """`obf.mixer_fit.fit_model_mixer` fits the copy table on the dataset's training pairs through
    teacher-forced `paired` scoring (here `upper` pairs only: its text -> text row learns, no other);
    an untrained network then writes the conversion of a new input (its map raises the letters;
    a few bytes whose cells of the table no training position reached may slip), which it does
    not without the expert."""
    import dataclasses
    from pathlib import Path

    import torch

    from obf.core.config import ModelConfig
    from obf.core.params import load_params
    from obf.data.dataset import Dataset
    from obf.data.ingest import ingest
    from obf.generate.sampling import SamplingOptions, generate
    from obf.mixer_fit import fit_model_mixer
    from obf.model.network import OmniByteFormer
    from obf.runtime.torch_backend import TorchBackend

    raw = Path(__file__).resolve().parents[1] / "data" / "raw" / "pairs" / "upper"
    for side in ("inputs", "targets"):
        (tmp_path / "raw" / "pairs" / side).mkdir(parents=True)
        for f in sorted((raw / side).iterdir())[:40]:
            (tmp_path / "raw" / "pairs" / side / f.name).write_bytes(f.read_bytes())
    params = load_params(None, ["ingest.val_fraction=0.0", "ingest.test_fraction=0.0", "train.mixer_fit_bytes=4096"])
    ingest(str(tmp_path / "raw"), tmp_path / "ds", params.ingest, progress=False)
    torch.manual_seed(0)
    model = OmniByteFormer(ModelConfig.from_preset("tiny", max_src_len=128, max_input_len=512, max_tgt_len=64)).eval()
    mixer = fit_model_mixer(model, Dataset(tmp_path / "ds"), params.train)
    assert mixer is not None and mixer.copy is not None
    mine = np.arange(row(pair_index("text", "text"), 0), row(pair_index("text", "text") + 1, 0))
    assert mixer.copy.weights[mine].max() > 1.0 and not np.delete(mixer.copy.weights, mine, axis=0).any()
    assert mixer.copy_map is not None and {p for p, _ in mixer.copy_map.maps} == {pair_index("text", "text")}
    inp = b"1234, the rest; (90) -- [42]!\n"
    backend = TorchBackend(model)
    made = {}
    for name, m in (("with", mixer), ("without", dataclasses.replace(mixer, copy=None))):
        backend.meta = {"mixer": m.to_dict()}
        opts = SamplingOptions(max_bytes=len(inp), temperature=0.0, stop_at_eos=False)
        made[name] = generate(backend, [inp], ["text"], task="paired", target_modalities=["text"], opts=opts)[0]
    right = {k: sum(a == b for a, b in zip(v, inp.upper())) for k, v in made.items()}
    assert right["with"] >= len(inp) - 3 and right["without"] < len(inp) // 2, (made, right)
