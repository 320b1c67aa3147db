"""Evaluation: honest bpb (random ~8, repeated ~0), baselines, per-file sums, samples, errors."""

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import tempfile
import zlib

import brotli
import numpy as np
import pyppmd
import pytest
import zstandard

from obf.core.params import load_params
from obf.core.vocab import EOS
from obf.data.ingest import ingest
from obf.evaluate.run import evaluate, headline
from obf.train import train

from .conftest import RAW

TINY = ["model.preset=tiny", "model.max_src_len=128", "model.max_tgt_len=64", "train.batch_size=16",
        "train.steps=250", "train.warmup_steps=10", "train.eval_every=1000", "train.checkpoint_every=1000",
        "train.lr=0.003", "train.task_weights={continue: 1.0}", "train.balance_modalities=false",
        "ingest.val_fraction=0.0", "ingest.test_fraction=0.0", "evaluate.split=all", "evaluate.sample_bytes=64",
        "evaluate.denoise_windows=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on uniformly random files and files of one repeated byte."""
    root = tmp_path_factory.mktemp("evalmodel")
    raw = root / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        (raw / f"random{i}.bin").write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    for i, b in enumerate([0x00, 0x41, 0x7F, 0xC3, 0xFF, 0x10]):
        (raw / f"repeat{i}.bin").write_bytes(bytes([b]) * 3000)
    params = load_params(None, TINY)
    ingest(str(raw), root / "ds", params.ingest, progress=False)
    train(root / "ds", root / "model", params, progress=False)
    return root / "model", params


def test_random_bytes_score_about_8_and_repeats_far_below_1(trained, tmp_path):
    model, params = trained
    held = tmp_path / "held"
    held.mkdir()
    (held / "random.bin").write_bytes(np.random.default_rng(123).integers(0, 256, 8000, dtype=np.uint8).tobytes())
    # compressed payloads are as unpredictable as random bytes: a gzip and an LZMA2 stream of real text
    text = (RAW / "text/GPL-3.txt").read_bytes()
    (held / "gpl.gz").write_bytes(gzip.compress(text, 9, mtime=0))
    (held / "gpl.lzma2").write_bytes(lzma.compress(text, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]))
    m = evaluate(str(model), str(held), tmp_path / "out" / "metrics.json", params, per_file=True, progress=False)
    scores = {f["path"]: f["bpb"] for f in m["files"]}
    assert all(7.9 <= b <= 8.05 for b in scores.values()), scores  # no leak below, no worse than storing above
    for name in ("gpl.gz", "gpl.lzma2"):
        (held / name).unlink()
    (held / "random.bin").unlink()
    (held / "repeat.bin").write_bytes(b"\x41" * 5000)
    m = evaluate(str(model), str(held), tmp_path / "out2" / "metrics.json", params, progress=False)
    assert m["overall"]["bpb"] < 0.5  # (sniffed as text: "AAAA...")


def test_baselines_equal_direct_compressor_calls_and_per_file_sums(trained, tmp_path):
    model, params = trained
    names = ["text/heapq.py", "text/shlex.py", "binary/true.elf", "image/horse.png", "audio/numbers.wav"]
    src = tmp_path / "src"
    for n in names:
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        (src / n).write_bytes((RAW / n).read_bytes())
    for i, line in enumerate([b"import heapq\n", b"def merge(a, b):\n"]):  # two `upper` pairs: not scored as files
        (src / "inputs").mkdir(exist_ok=True)
        (src / "targets").mkdir(exist_ok=True)
        (src / "inputs" / f"{i}.txt").write_bytes(line)
        (src / "targets" / f"{i}.txt").write_bytes(line.upper())
    out = tmp_path / "eval" / "metrics.json"
    m = evaluate(str(model), str(src), out, params, per_file=True, progress=False)
    upper = m["conversions"]["upper"]
    assert upper["pairs"] == 2 and 0 <= upper["exact"] <= 1 and upper["bpb"]["with_input"] > 0
    assert set(upper["byte_accuracy"]) == {"generated", "teacher_forced"}
    assert json.loads((out.parent / "details.json").read_text()) == json.loads(json.dumps(m))  # every figure
    assert json.loads(out.read_text()) == json.loads(json.dumps(headline(m, per_file=True)))  # what DVC reads
    assert "sample" not in json.loads(out.read_text())["modalities"]["text"]
    # text and binary are stored as they are, so the baselines are the compressors on the raw files
    for modality, files in (("text", ["text/heapq.py", "text/shlex.py"]), ("binary", ["binary/true.elf"])):
        datas = [(RAW / f).read_bytes() for f in files]
        n = sum(len(d) for d in datas)
        sizes = {
            "gzip": [len(gzip.compress(d, 9, mtime=0)) for d in datas],
            "bz2": [len(bz2.compress(d, 9)) for d in datas],
            "xz": [len(lzma.compress(d, preset=9 | lzma.PRESET_EXTREME)) for d in datas],
            "zstd": [len(zstandard.ZstdCompressor(level=19).compress(d)) for d in datas],
            # the raw streams: no gzip/xz/zstd container, header or checksum
            "deflate_raw": [len(zlib.compress(d, 9, wbits=-15)) for d in datas],
            "lzma2_raw": [len(lzma.compress(d, format=lzma.FORMAT_RAW, filters=[
                {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])) for d in datas],
            "zstd_raw": [len(zstandard.ZstdCompressor(level=19, write_checksum=False, write_content_size=False)
                             .compress(d)) for d in datas],
            # the strongest classical coders: PPMd (7-Zip's text method) and brotli's largest window
            "ppmd6": [len(pyppmd.compress(d, max_order=6, mem_size=16 << 20)) for d in datas],
            "ppmd32": [len(pyppmd.compress(d, max_order=32, mem_size=256 << 20)) for d in datas],
            "brotli": [len(brotli.compress(d, quality=11, lgwin=24)) for d in datas],
        }
        sizes["best"] = [min(col) for col in zip(*sizes.values())]  # the smallest per file
        got = m["modalities"][modality]["baselines"]
        assert set(got) == set(sizes)
        for k, v in sizes.items():
            assert got[k] == pytest.approx(8 * sum(v) / n, rel=1e-12), k
        assert sizes["deflate_raw"] == [g - 18 for g in sizes["gzip"]]  # gzip = raw deflate + 18 bytes
        assert all(pyppmd.decompress(pyppmd.compress(d, max_order=32, mem_size=256 << 20), max_order=32,
                                     mem_size=256 << 20) == d for d in datas)  # real coders: they decode
    # per-file figures sum back to the per-modality ones
    for modality, v in m["modalities"].items():
        rows = [f for f in m["files"] if f["modality"] == modality]
        assert sum(f["bytes"] for f in rows) == v["bytes"] and len(rows) == v["files"]
        assert sum(f["bpb"] * f["bytes"] for f in rows) / v["bytes"] == pytest.approx(v["bpb"], rel=1e-9)
        assert 0.0 <= v["denoise_accuracy"] <= 1.0
        assert v["sample"]["opens"]
        sample = v["sample"]  # the generated part beside the real part it replaces (none when it ended at once)
        if sample["compared_bytes"]:
            assert sample["generated_bpb"] > 0 and sample["real_bpb"] > 0 and sample["lzma_ratio"] > 0
            assert 0 < sample["top_share"] <= 1 and 0 < sample["real_top_share"] <= 1 and sample["novelty_ratio"] >= 0
    assert sum(v["sample"]["compared_bytes"] > 0 for v in m["modalities"].values()) >= 4
    report = (out.parent / "report.md").read_text()
    assert report.startswith("# Evaluation") and "bits per byte under the model" in report
    assert "Decoded at temperature 1, with the thermostat, min-p 0.03, share guard 40, seed 0" in report  # the defaults
    assert "as `obf generate` decodes by default." in report
    assert "## Conversions" in report and "| upper | 2 |" in report
    assert (out.parent / "bpb.csv").read_text().splitlines()[0] == "label,modality,method,bpb"
    assert all((out.parent / v["sample"]["file"]).is_file() for v in m["modalities"].values())


def _obf(*args):
    return subprocess.run([sys.executable, "-m", "obf.cli", *args, "--params", "none"], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_bad_model_or_data_are_clear_errors(trained, tmp_path):
    model, _ = trained
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello world\n" * 20)
    out = tmp_path / "o" / "metrics.json"
    cases = [
        ((str(tmp_path / "missing"), str(data)), "model dir not found"),
        ((str(data), str(data)), "not a model dir"),
        ((str(model), str(tmp_path / "empty")), None),
    ]
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((model / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    cases.append(((str(corrupt), str(data)), "corrupt weights"))
    for (m, d), expect in cases:
        r = _obf("evaluate", m, d, "--out", str(out), "-q")
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
        if expect:
            assert expect in r.stderr
        assert not out.exists()
    # an --out that cannot be written is refused before any scoring: a folder (an easy slip), or a
    # path through a file (both ran the whole evaluation first, then ended in a traceback)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    for bad, expect in ((tmp_path / "empty", "is a folder; --out names the metrics file"),
                        (a_file / "metrics.json", "is a file, so")):
        r = _obf("evaluate", str(model), str(data), "--out", str(bad), "-q")
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and expect in r.stderr, r.stderr
    assert a_file.read_text() == "mine\n" and not any((tmp_path / "empty").iterdir())
    r = _obf("evaluate", str(model), str(data), "--out", str(out), "-q", "--set", "evaluate.split=all")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 33, 100])
@pytest.mark.parametrize("stride", [8, 4, 3, 1])
@pytest.mark.parametrize("group", [1, 3])
def test_windows_score_every_byte_and_eos_exactly_once(n, stride, group):
    from obf.runtime.scoring import file_windows

    data = np.arange(n, dtype=np.uint8)
    scored = []
    for ex, windows in file_windows(data, "binary", 64, 8, stride, group):
        assert len(windows) == len(ex.earlier) + 1 <= group
        for (start, tgt, *_), (at, first) in zip((*ex.earlier, (len(ex.src), ex.tgt, None)), windows):
            ctx = ex.src[2:start]  # what this window's encoder sees: the bytes right before it
            s = ctx[-1] + 1 if ctx else 0  # the bytes are their own offsets (n <= 256)
            assert at == s  # the window's start in the file, as scoring maps targets to positions
            assert list(ctx) == list(range(s - len(ctx), s)) and len(ctx) >= min(s, 62 - (group - 1) * stride)
            assert list(tgt[:len(tgt) - (tgt[-1] == EOS)]) == list(range(s, min(n, s + 8)))
            scored.extend(s + j for j in range(first, len(tgt)))
    assert sorted(scored) == list(range(n + 1))  # bytes 0..n-1 and the EOS at n, each once
