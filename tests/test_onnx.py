"""ONNX export and ONNX Runtime generation: parity, identical greedy output, files that open,
no torch on the serving path, tampered graphs refused, per-input errors in `obf generate`."""

import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile
import wave

import av
import numpy as np
import onnx as onnx_ir
import pytest
from PIL import Image

from obf.core.params import load_params
from obf.data.ingest import ingest
from obf.export.onnx_export import export
from obf.formats.layouts import bmp_layout
from obf.formats.repair import opens
from obf.generate.files import generate_files, prepare
from obf.generate.sampling import RowSpec, SamplingOptions, generate
from obf.runtime.onnx_backend import OnnxBackend, OnnxModelError
from obf.runtime.torch_backend import load as load_torch
from obf.train import train

from .conftest import RAW, ROOT, no_aws_credentials

TINY = ["model.preset=tiny", "model.patch_size=4", "model.max_src_len=128", "model.max_tgt_len=64",
        "train.batch_size=8", "train.steps=120", "train.warmup_steps=10", "train.eval_every=1000",
        "train.checkpoint_every=1000", "train.lr=0.003", "ingest.val_fraction=0.0", "ingest.test_fraction=0.0"]
INPUTS = {"text": "text/heapq.py", "image": "image/coffee.jpg", "audio": "audio/numbers.wav",
          "video": "video/hubble_pan.y4m", "binary": "binary/true.elf"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    raw = root / "raw"
    for rel in INPUTS.values():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes((RAW / rel).read_bytes())
    params = load_params(None, TINY)
    ingest(str(raw), root / "ds", params.ingest, progress=False)
    train(root / "ds", root / "model", params, progress=False)
    info = export(
        root / "model",
        root / "onnx",
        params.export,
        real=[((RAW / "text/heapq.py").read_bytes(), "text")],
        progress=False,
    )
    return root, params, info


def test_export_layout_and_parity(exported):
    root, _, info = exported
    onnx = root / "onnx"
    assert sorted(p.name for p in onnx.iterdir()) == [".obf-output", "decoder.onnx", "encoder.onnx", "obf.json"]
    meta = json.loads((onnx / "obf.json").read_text())
    assert meta == json.loads(json.dumps(info))
    assert meta["opset"] >= 17
    # parity measured here, not read back from what export reported: teacher-forced logits of the
    # torch checkpoint and of the graphs on random ids and a real file, across batch rows
    torch_backend, ort_backend = load_torch(str(root / "model")), OnnxBackend(onnx, provider="cpu")
    rng = np.random.default_rng(5)
    real = np.frombuffer((RAW / "text/heapq.py").read_bytes()[:96], np.uint8).astype(np.int64)
    src = np.stack([rng.integers(0, 256, 96), real])  # (2, 96)
    dec = np.stack([rng.integers(0, 256, 40), real[:40]])  # (2, 40)
    diff = float(np.abs(torch_backend.logits(src, dec) - ort_backend.logits(src, dec)).max())
    assert diff < 1e-3 and abs(diff - meta["parity"]["max_abs_diff"]) < 1e-3
    assert set(meta["sha256"]) == {"encoder.onnx", "decoder.onnx"} and meta["vocab"]["size"] == 320
    # one fixed-size cache buffer per decoder layer and K/V, updated in place by the fused attention
    backend = OnnxBackend(onnx, provider="cpu")
    cfg = meta["config"]
    per_layer = [f"{kv}_{i}" for i in range(cfg["decoder_layers"]) for kv in "kv"]
    assert [i.name for i in backend.dec.get_inputs()] == [
        "dec_ids",
        "past_len",
        "memory_mask",
        *(f"cross_{n}" for n in per_layer),
        *(f"past_{n}" for n in per_layer),
        "align",
        "places",
    ]
    assert [o.name for o in backend.dec.get_outputs()] == ["logits", *(f"present_{n}" for n in per_layer)]
    ops = {n.op_type for n in onnx_ir.load(onnx / "decoder.onnx").graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= ops and "Concat" not in ops


def test_decoder_cache_is_written_in_place(exported):
    """Each step writes its K/V into column `length` of the bound buffers, leaves the others as
    they were, and a full cache is a clear error rather than a silent overwrite."""
    root, _, info = exported
    backend = OnnxBackend(root / "onnx", provider="cpu")
    memory = backend.encode(np.full((2, 40), 70, dtype=np.int64))
    cache = backend.init_cache(memory)
    assert cache.capacity == info["config"]["max_tgt_len"] + 1
    before = [b.numpy().copy() for b in cache.buffers]
    _, cache = backend.step(np.array([1, 2]), memory, cache)
    _, cache = backend.step(np.array([3, 4]), memory, cache)
    for old, buf in zip(before, cache.buffers):
        new = buf.numpy()
        assert np.abs(new[:, :, :2]).sum() > 0 and np.array_equal(new[:, :, 2:], old[:, :, 2:])
    for _ in range(cache.capacity - 2):
        backend.step(np.array([5, 6]), memory, cache)
    with pytest.raises(ValueError, match="cache is full"):
        backend.step(np.array([5, 6]), memory, cache)


def test_graphs_of_an_older_layout_are_refused(exported, tmp_path):
    import shutil

    root, _, _ = exported
    old = tmp_path / "onnx"
    shutil.copytree(root / "onnx", old)
    meta = json.loads((old / "obf.json").read_text())
    (old / "obf.json").write_text(json.dumps({**meta, "version": 1}))
    with pytest.raises(OnnxModelError, match="graph layout version 1.*re-run `obf export`"):
        OnnxBackend(old, provider="cpu")


def test_greedy_output_identical_torch_and_onnx(exported):
    root, _, _ = exported
    ctx = [(RAW / "text/heapq.py").read_bytes()[:300], (RAW / "text/shlex.py").read_bytes()[:50], b""]
    mods = ["text", "text", "binary"]
    opts = SamplingOptions(max_bytes=300, stop_at_eos=False)
    t = generate(load_torch(str(root / "model")), ctx, mods, opts=opts)
    o = generate(OnnxBackend(root / "onnx", provider="cpu"), ctx, mods, opts=opts)
    assert [len(x) for x in o] == [300, 300, 300]  # several 64-byte decoder windows
    assert t == o


def test_every_modality_generates_a_file_that_opens(exported, tmp_path):
    root, params, _ = exported
    backend = OnnxBackend(root / "onnx", provider="auto")
    assert backend.providers[-1] == "CPUExecutionProvider"
    prepared = [prepare(str(RAW / rel), params.ingest, max_input_bytes=10**7) for rel in INPUTS.values()]
    results = generate_files(backend, prepared, opts=SamplingOptions(max_bytes=200, temperature=0.9, seed=3))
    assert [r.modality for r in results] == list(INPUTS)
    for r in results:
        assert r.error is None and opens(r.output, r.modality)
    image, audio, video = results[1].output, results[2].output, results[3].output
    with Image.open(io.BytesIO(image)) as im:
        im.load()
    with wave.open(io.BytesIO(audio)) as w:
        assert w.getnframes() > 0
    with av.open(io.BytesIO(video)) as c:
        assert len(list(c.decode(video=0))) >= 1
    assert results[0].output.decode("utf-8")


def test_serving_path_imports_no_torch(exported):
    root, _, _ = exported
    code = f"""
import sys
from obf.runtime.onnx_backend import OnnxBackend
from obf.generate.files import generate_files, prepare
from obf.config import IngestConfig
from obf.generate.sampling import SamplingOptions
import flows.generate  # the batch-generate flow module must not pull torch in either
b = OnnxBackend({str(root / "onnx")!r}, provider='cpu')
p = [prepare({str(RAW / "text/heapq.py")!r}, IngestConfig(), max_input_bytes=10**7)]
r = generate_files(b, p, opts=SamplingOptions(max_bytes=40))
assert r[0].error is None and len(r[0].output) > 40
assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_cuda_provider_matches_cpu(exported):
    """The CUDA path (IO binding, per-layer cache kept on the device); skips where CUDA can't run."""
    root, _, _ = exported
    try:
        gpu = OnnxBackend(root / "onnx", provider="cuda")
    except OnnxModelError as e:
        pytest.skip(f"no usable CUDA provider here ({e})")
    assert gpu.cuda and gpu.providers[0] == "CUDAExecutionProvider"
    cpu = OnnxBackend(root / "onnx", provider="cpu")
    rng = np.random.default_rng(0)
    src, dec = rng.integers(0, 256, (3, 100)), rng.integers(0, 256, (3, 40))
    assert np.abs(gpu.logits(src, dec) - cpu.logits(src, dec)).max() < 1e-2
    ctx = [(RAW / "text/heapq.py").read_bytes()[:300], b"\x00\x01"]
    out = generate(gpu, ctx, ["text", "binary"], opts=SamplingOptions(max_bytes=100, stop_at_eos=False))
    assert [len(o) for o in out] == [100, 100]  # two 64-byte decoder windows each


def test_tampered_graph_is_refused(exported, tmp_path):
    import shutil

    root, _, _ = exported
    bad = tmp_path / "onnx"
    shutil.copytree(root / "onnx", bad)
    data = bytearray((bad / "decoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(OnnxModelError, match="sha256 does not match"):
        OnnxBackend(bad, provider="cpu")


def test_int8_export_reports_its_bpb_and_generates(exported, tmp_path):
    from obf.core.errors import ObfError
    from obf.export.onnx_export import dataset_samples
    from obf.runtime.backend import open_backend

    root, params, _ = exported
    samples = dataset_samples(root / "ds")
    assert {m for _, m in samples} == {"text", "image", "audio", "video", "binary"}
    cfg = dataclasses.replace(params.export, int8=True)
    info = export(root / "model", tmp_path / "q", cfg, real=samples, progress=False)
    q = info["int8"]
    assert info["parity"]["samples"] == len(samples) and info["parity"]["max_abs_diff"] < 1e-3
    # the quantised model scores the same real samples within a few hundredths of a bit per byte
    assert 0 < q["bpb_fp32"] < 8 and abs(q["bpb_int8"] - q["bpb_fp32"]) < 0.1, q
    backend = open_backend(tmp_path / "q", provider="cpu", precision="int8")
    assert backend.precision == "int8"
    out = generate(backend, [b"def heap"], ["text"], opts=SamplingOptions(max_bytes=40, stop_at_eos=False))
    assert len(out[0]) == 40
    from obf.evaluate.run import evaluate

    data = tmp_path / "data"
    data.mkdir()
    for rel in ("text/bisect.py", "binary/true.elf"):
        (data / rel.replace("/", "_")).write_bytes((RAW / rel).read_bytes())
    fp32 = evaluate(str(tmp_path / "q"), str(data), tmp_path / "a" / "metrics.json", params, progress=False)
    int8 = evaluate(
        str(tmp_path / "q"), str(data), tmp_path / "b" / "metrics.json", params, precision="int8", progress=False
    )
    assert 0 < abs(int8["overall"]["bpb"] - fp32["overall"]["bpb"]) < 0.1  # other graphs, nearly the same model
    with pytest.raises(OnnxModelError, match="exported without int8 graphs"):
        OnnxBackend(root / "onnx", provider="cpu", precision="int8")
    with pytest.raises(ObfError, match="fp32, int8 or fp16, not bf16"):
        open_backend(root / "onnx", precision="bf16")
    with pytest.raises(ObfError, match="fp32 or bf16, not int8"):
        open_backend(root / "model", precision="int8")


@pytest.fixture(scope="module")
def exported_fp16(exported):
    """The same model exported with the fp16 graph pair beside the fp32 one."""
    root, params, _ = exported
    info = export(
        root / "model",
        root / "onnx16",
        dataclasses.replace(params.export, fp16=True),
        real=[((RAW / "text/heapq.py").read_bytes(), "text")],
        progress=False,
    )
    return root / "onnx16", info


def test_fp16_export_matches_fp32_on_cpu(exported, exported_fp16):
    """The fp16 pair (made for CUDA) is hashed in obf.json, types its cache and cross K/V fp16 with
    fp32 logits, and gives the fp32 pair's logits and greedy bytes on the CPU provider."""
    root, _, _ = exported
    onnx16, info = exported_fp16
    h = info["fp16"]
    assert {"encoder.fp16.onnx", "decoder.fp16.onnx"} <= set(info["sha256"])
    assert h["max_abs_diff"] < 0.05 and abs(h["bpb_fp16"] - h["bpb_fp32"]) < 0.01, h
    half = OnnxBackend(onnx16, provider="cpu", precision="fp16")
    full = OnnxBackend(onnx16, provider="cpu")
    types = {i.name: i.type for i in half.dec.get_inputs()}
    assert types["past_k_0"] == types["cross_v_0"] == "tensor(float16)" and half.cache_dtype == np.float16
    assert half.dec.get_outputs()[0].type == "tensor(float)" and not half.cache_on_device
    assert [o.type for o in half.enc.get_outputs()][1:] == ["tensor(float16)"] * (2 * half.layers)
    rng = np.random.default_rng(1)
    src, dec = rng.integers(0, 256, (3, 100)), rng.integers(0, 256, (3, 40))
    assert np.abs(half.logits(src, dec) - full.logits(src, dec)).max() < 0.05
    ctx = [(RAW / "text/heapq.py").read_bytes()[:300], b"\x00\x01"]
    opts = SamplingOptions(max_bytes=100, stop_at_eos=False)
    a, b = generate(half, ctx, ["text", "binary"], opts=opts), generate(full, ctx, ["text", "binary"], opts=opts)
    assert [len(o) for o in a] == [100, 100]
    assert sum(x == y for p, q in zip(a, b) for x, y in zip(p, q)) >= 180  # near-ties may flip a byte or two
    with pytest.raises(OnnxModelError, match="exported without fp16 graphs"):
        OnnxBackend(root / "onnx", provider="cpu", precision="fp16")


def test_fp16_on_cuda_keeps_the_cache_on_the_device(exported_fp16):
    """The fp16 pair on the CUDA provider: cache buffers on the GPU, logits as on CPU; skips where
    CUDA can't run."""
    onnx16, _ = exported_fp16
    try:
        gpu = OnnxBackend(onnx16, provider="cuda", precision="fp16")
    except OnnxModelError as e:
        pytest.skip(f"no usable CUDA provider here ({e})")
    assert gpu.cache_on_device
    cache = gpu.init_cache(gpu.encode(np.full((2, 10), 65, np.int64)))
    assert all(buf.device_name() == "cuda" for buf in cache.buffers)
    cpu = OnnxBackend(onnx16, provider="cpu")
    rng = np.random.default_rng(0)
    src, dec = rng.integers(0, 256, (3, 100)), rng.integers(0, 256, (3, 40))
    assert np.abs(gpu.logits(src, dec) - cpu.logits(src, dec)).max() < 0.05
    out = generate(
        gpu, [b"def heap", b"\x00"], ["text", "binary"], opts=SamplingOptions(max_bytes=100, stop_at_eos=False)
    )
    assert [len(o) for o in out] == [100, 100]


def test_failed_parity_leaves_nothing(exported, tmp_path):
    from obf.core.config import ExportConfig
    from obf.export.onnx_export import ExportError

    root, _, _ = exported
    with pytest.raises(ExportError, match="parity check failed"):
        export(root / "model", tmp_path / "strict", ExportConfig(max_abs_diff=1e-12), progress=False)
    assert list(tmp_path.iterdir()) == []


_NO_TORCH = (
    "import sys\n"
    "for m in ('torch', 'safetensors', 'onnx', 'dvc', 'dvclive'): sys.modules[m] = None  # unimportable\n"
)


def test_the_serving_path_runs_without_torch(exported, tmp_path):
    """What `pip install ".[serve]"` installs is enough: `obf generate` on an ONNX dir, and the
    batch-generate flow's module, with torch, safetensors, onnx and DVC unimportable."""
    root, _, _ = exported
    cli = _NO_TORCH + "from obf.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", cli, "generate", str(root / "onnx"), str(RAW / "text/bisect.py"),
                        "--out", str(out), "--max-bytes", "32", "--params", "none", "-q"],
                       capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stderr
    assert (out / "bisect.py.txt").read_bytes().startswith((RAW / "text/bisect.py").read_bytes()[:64])
    flow = _NO_TORCH + "import flows.generate, obf.runtime, obf.generate\nprint('ok')\n"
    r = subprocess.run([sys.executable, "-c", flow], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def test_cli_generate_reports_bad_inputs_and_completes_the_rest(exported, tmp_path):
    root, _, _ = exported
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(25000))
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "obf.cli",
            "generate",
            str(root / "onnx"),
            str(RAW / "text/bisect.py"),
            str(tmp_path / "missing.txt"),
            str(big),
            str(fake),
            str(RAW / "image/coffee.jpg"),
            "s3://obf-no-such-bucket/a.txt",  # no credentials: the store's failure is this input's alone
            "--out",
            str(out),
            "--max-bytes",
            "64",
            "--max-input-bytes",
            "20000",
            "--provider",
            "cpu",
            "-q",
            "--params",
            "none",
        ],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        env=no_aws_credentials(),
    )
    assert r.returncode == 1
    assert "missing.txt" in r.stderr and "over the cap" in r.stderr and "image does not decode" in r.stderr
    assert "s3://obf-no-such-bucket/a.txt: no credentials for the object store" in r.stderr
    assert "4 of 6 inputs failed" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count(str(tmp_path / "missing.txt")) == 1  # each input named once in its line
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["bisect.py.txt", "coffee.jpg.bmp"]  # the input's whole name + the output's extension
    assert (out / "bisect.py.txt").read_bytes().startswith((RAW / "text/bisect.py").read_bytes())
    assert opens((out / "coffee.jpg.bmp").read_bytes(), "image")


def test_cli_generate_refuses_bad_settings_before_any_work(exported, tmp_path):
    """A batch size or size cap below 1, an unknown target modality, or an --out that is a file are
    refused in one line before the model is opened (a batch size of -1 wrote nothing and exited 0;
    an --out file failed with a traceback after every input was generated)."""
    root, _, _ = exported
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    cases = [(["--out", str(tmp_path / "o"), "--batch-size", "0"], 2, "must be 1 or more"),
             (["--out", str(tmp_path / "o"), "--batch-size", "-1"], 2, "must be 1 or more"),
             (["--out", str(tmp_path / "o"), "--max-input-bytes", "-5"], 2, "must be 1 or more"),
             (["--out", str(tmp_path / "o"), "--task", "paired", "--target-modality", "picture"], 2, "invalid choice"),
             (["--out", str(taken)], 1, "exists and is not a folder")]
    for extra, code, expect in cases:
        r = subprocess.run([sys.executable, "-m", "obf.cli", "generate", str(root / "onnx"),
                            str(RAW / "text/bisect.py"), *extra, "--provider", "cpu", "-q", "--params", "none"],
                           capture_output=True, text=True, cwd=tempfile.gettempdir())
        assert r.returncode == code and expect in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
    assert taken.read_text() == "mine\n" and not (tmp_path / "o").exists()


def _cli_generate(root, inputs, out, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "obf.cli",
            "generate",
            str(root / "onnx"),
            *map(str, inputs),
            "--out",
            str(out),
            "--provider",
            "cpu",
            "-q",
            "--params",
            "none",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )


def _first_bytes_of_wav(wav: bytes, n: int) -> bytes:
    """The WAV cut to about `n` bytes of whole frames, its header rewritten: the tests' generation
    time grows with what is left to make, and the whole recording (51 KB) took most of a minute."""
    with wave.open(io.BytesIO(wav)) as r:
        params = r.getparams()
        frames = r.readframes(n // (params.sampwidth * params.nchannels))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes(frames)
    return out.getvalue()


def _media_inputs(tmp_path):
    """A 64x64 BMP, a WAV (12 KB) and a Y4M, in the canonical forms the model knows."""
    from obf.formats.canonical import canonicalize

    cfg = load_params(None, TINY).ingest
    im = io.BytesIO()
    Image.open(RAW / "image/astronaut.png").convert("RGB").resize((64, 64)).save(im, format="BMP")
    files = {
        "in.bmp": im.getvalue(),
        "in.wav": (RAW / "audio/numbers.wav").read_bytes(),
        "in.y4m": (RAW / "video/hubble_pan.y4m").read_bytes(),
    }
    paths = []
    for name, data in files.items():
        data = canonicalize(data, cfg)[0]
        if name == "in.wav":
            data = _first_bytes_of_wav(data, 12_000)
            assert canonicalize(data, cfg)[0] == data  # still the canonical form
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    return paths


def test_generate_completes_bmp_wav_y4m_from_a_prefix_to_their_declared_size(exported, tmp_path):
    """Done when of #18: the kept part equals the input, the rest is the model's, and the file is
    whole and opens as generated (its header and size unchanged, so no repair was needed)."""
    from obf.formats.sniff import sniff
    from obf.generate.planning import complete

    root, _, _ = exported
    bmp, wav, y4m = _media_inputs(tmp_path)
    r = _cli_generate(root, [bmp, wav, y4m], tmp_path / "out", "--prefix-bytes", "3000", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    backend = OnnxBackend(root / "onnx", provider="cpu")
    for src, modality in ((bmp, "image"), (wav, "audio"), (y4m, "video")):
        data = src.read_bytes()
        got = (tmp_path / "out" / f"{src.name}{src.suffix}").read_bytes()
        p = complete(data, modality, 3000)
        assert len(got) == len(data) and got[: len(p.keep)] == p.keep and len(p.keep) >= 2900
        made = generate(backend, [p.keep], [modality], opts=SamplingOptions(max_bytes=1024), specs=[p.spec])[0]
        assert got[len(p.keep) :] == made and made != data[len(p.keep) :]
        assert opens(p.keep + made, modality) and sniff(got).format == sniff(data).format
    with Image.open(tmp_path / "out" / "in.bmp.bmp") as im:
        assert im.size == (64, 64)
    with wave.open(str(tmp_path / "out" / "in.wav.wav")) as w, wave.open(str(wav)) as w0:
        assert w.getnframes() == w0.getnframes()
    with av.open(str(tmp_path / "out" / "in.y4m.y4m")) as c, av.open(str(y4m)) as c0:
        assert len(list(c.decode(video=0))) == len(list(c0.decode(video=0)))


def test_continue_on_a_whole_media_file_extends_it_with_its_header_updated(exported, tmp_path):
    from obf.generate.planning import extend

    root, _, _ = exported
    bmp, wav, y4m = _media_inputs(tmp_path)
    r = _cli_generate(root, [bmp, wav, y4m], tmp_path / "out", "--max-bytes", "2000", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    with Image.open(out / "in.bmp.bmp") as im, Image.open(bmp) as im0:
        assert im.size == (64, 64 + 10)  # 2000 bytes -> 10 rows of 192 bytes
        assert im.crop((0, 10, 64, 74)).tobytes() == im0.tobytes()  # bottom-up: new rows on top
    with wave.open(str(out / "in.wav.wav")) as w, wave.open(str(wav)) as w0:
        assert w.getnframes() == w0.getnframes() + 2000
    with av.open(str(out / "in.y4m.y4m")) as c, av.open(str(y4m)) as c0:
        assert len(list(c.decode(video=0))) == len(list(c0.decode(video=0))) + 1
    backend = OnnxBackend(root / "onnx", provider="cpu")
    for src, modality in ((bmp, "image"), (wav, "audio"), (y4m, "video")):  # the new part is the model's
        p = extend(src.read_bytes(), modality, 2000)
        made = generate(backend, [p.keep], [modality], opts=SamplingOptions(max_bytes=2000), specs=[p.spec])[0]
        assert (out / f"{src.name}{src.suffix}").read_bytes() == p.keep + made


def test_generate_never_overwrites_what_it_did_not_write(exported, tmp_path):
    root, _, _ = exported
    out = tmp_path / "out"
    out.mkdir()
    (out / "bisect.py.txt").write_bytes(b"mine")
    r = _cli_generate(root, [RAW / "text/bisect.py"], out, "--max-bytes", "16")
    assert r.returncode == 1 and "obf did not write it" in r.stderr
    assert (out / "bisect.py.txt").read_bytes() == b"mine"
    assert _cli_generate(root, [RAW / "text/bisect.py"], out, "--max-bytes", "16", "--overwrite").returncode == 0
    assert _cli_generate(root, [RAW / "text/bisect.py"], out, "--max-bytes", "16").returncode == 0  # its own: fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "bisect.py").write_bytes(b"another file of the same name\n")
    r = _cli_generate(root, [RAW / "text/bisect.py", other / "bisect.py"], tmp_path / "two", "--max-bytes", "16")
    assert r.returncode == 1 and "same file name as" in r.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [".obf-generate.json", "bisect.py.txt"]


def test_evaluate_checkpoint_and_onnx_give_the_same_bpb(exported, tmp_path):
    from obf.evaluate.run import evaluate

    root, params, _ = exported
    data = tmp_path / "data"
    data.mkdir()
    for rel in ("text/bisect.py", "binary/true.elf", "image/horse.png"):
        (data / rel.replace("/", "_")).write_bytes((RAW / rel).read_bytes())
    a = evaluate(str(root / "model"), str(data), tmp_path / "a" / "metrics.json", params, progress=False)
    b = evaluate(str(root / "onnx"), str(data), tmp_path / "b" / "metrics.json", params, progress=False)
    for m in a["modalities"]:
        assert abs(a["modalities"][m]["bpb"] - b["modalities"][m]["bpb"]) < 1e-3
    assert abs(a["overall"]["bpb"] - b["overall"]["bpb"]) < 1e-3


def test_mixer_travels_with_the_model_and_copies_what_repeats(exported):
    """Training fits the mixer into config.json, the export carries it, and both backends apply it
    alike: a file that repeats a random block costs far less than the network alone says, the
    same on torch and ONNX Runtime, and greedy generation after the block copies it."""
    from obf.mixer.mix import Mixer
    from obf.runtime.scoring import whole_file_bits

    root, _, _ = exported
    saved = json.loads((root / "model" / "config.json").read_text())["mixer"]
    assert json.loads((root / "onnx" / "obf.json").read_text())["mixer"] == saved
    mixer = Mixer.from_dict(saved)
    assert (mixer.match.weights[:, -1] > 1).any()  # long matches are trusted
    assert (mixer.stride.weights != 0).any(axis=(1, 2)).tolist() == [False, True, True, True, False]  # media only
    tb, ob = load_torch(str(root / "model")), OnnxBackend(root / "onnx", provider="cpu")
    block = np.random.default_rng(0).integers(0, 256, 700, dtype=np.uint8).tobytes()
    files = [(np.frombuffer(block * 3, np.uint8), "binary")]
    a, b = whole_file_bits(tb, files, 16), whole_file_bits(ob, files, 16)
    assert abs(a.model[0] - b.model[0]) / 2101 < 1e-3 and abs(a.network[0] - b.network[0]) / 2101 < 1e-3
    assert a.model[0] < 0.5 * a.network[0]  # the two copies cost next to nothing
    tb.meta = {**tb.meta, "mixer": None}  # the network alone: model and network bits agree
    alone = whole_file_bits(tb, files, 16)
    assert alone.model == alone.network == pytest.approx(a.network)
    opts = SamplingOptions(max_bytes=150, stop_at_eos=False)
    ctx = [block + block[:20], block[:300]]
    out = generate(ob, ctx, ["binary", "binary"], opts=opts)
    assert out[0] == block[20:170]
    assert out == generate(load_torch(str(root / "model")), ctx, ["binary", "binary"], opts=opts)


def test_files_that_share_a_start_score_it_once(exported):
    """Two files with the same first 900 bytes (evaluate's samples: a kept part followed by what
    the model wrote, and by the real bytes) score those windows once, and each file's scores are
    the ones it gets alone."""
    from obf.runtime.scoring import served_log_probs

    root, _, _ = exported
    tb = load_torch(str(root / "model"))
    rng = np.random.default_rng(3)
    head = rng.integers(0, 256, 900, dtype=np.uint8).tobytes()
    files = [(np.frombuffer(head + rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), np.uint8), "binary")
             for _ in range(2)]
    windows = [0]
    logits = tb.logits

    def counted(src, dec, **kw):
        windows[0] += len(dec)
        return logits(src, dec, **kw)

    tb.logits = counted
    alone = [served_log_probs(tb, [f], 16, learn_until=[900]) for f in files]
    each = windows[0]
    together = served_log_probs(tb, files, 16, learn_until=[900, 900])
    assert windows[0] - each < 0.7 * each  # the shared ~26 windows of ~37 a file are scored once
    for i in range(2):
        np.testing.assert_allclose(together[0][i], alone[i][0][0], atol=1e-5)  # served
        np.testing.assert_allclose(together[1][i], alone[i][1][0], atol=1e-5)  # network alone


def test_column_expert_codes_records_the_network_never_saw(exported):
    """A dump of float64 samples: the column expert (obf.mixer.columns) makes it cost well under the
    network's bits, alike on torch and ONNX Runtime; generation starts from the weight scoring
    gives the context's end, and greedy bytes keep the records' exponent columns."""
    from obf.mixer.adapt import adapt_log_probs
    from obf.mixer.columns import column_log_probs, evidence_logits
    from obf.mixer.mix import TAIL, RowHints, file_hints
    from obf.runtime.scoring import position_log_probs, tail_log_probs, whole_file_bits

    root, _, _ = exported
    saved = json.loads((root / "model" / "config.json").read_text())["mixer"]
    assert saved["columns"]["strides"] == [1, 2, 4, 8]
    tb, ob = load_torch(str(root / "model")), OnnxBackend(root / "onnx", provider="cpu")
    walk = np.cumsum(np.random.default_rng(3).normal(0, 1e-3, 500)) + 1.5  # exponent bytes 0x3f, 0xf8
    records = walk.astype("<f8").tobytes()
    files = [(np.frombuffer(records, np.uint8), "binary")]
    a, b = whole_file_bits(tb, files, 16), whole_file_bits(ob, files, 16)
    assert abs(a.model[0] - b.model[0]) / len(records) < 1e-3
    assert a.model[0] < a.network[0] - 1.0 * len(records)  # a bit per byte and more
    tb.meta = {**tb.meta, "mixer": {k: v for k, v in saved.items() if k not in ("columns", "ngram")}}
    without = whole_file_bits(tb, files, 16)
    tb.meta = {**tb.meta, "mixer": {k: v for k, v in saved.items() if k != "ngram"}}
    columns = whole_file_bits(tb, files, 16)
    assert without.model[0] > columns.model[0] + 0.5 * len(records)  # the column expert alone
    assert a.model[0] < columns.model[0]  # and the n-gram expert after it
    tb.meta = {**tb.meta, "mixer": saved}
    ctx = records[:3600]
    n = len(ctx)
    whole = position_log_probs(tb, [(np.frombuffer(ctx, np.uint8), "binary")], 16)
    tail = tail_log_probs(tb, [ctx], ["binary"])[0]
    np.testing.assert_allclose(tail.lp, whole.hinted[0][n - TAIL : n], atol=1e-4)
    np.testing.assert_allclose(tail.hint_lp, whole.hint[0][n - TAIL : n], atol=1e-4)
    # generation starts where scoring the whole context would leave the file-adaptive parts
    fh = file_hints(ctx, "binary")
    assert (fh.match[:n] >= 0).sum() > 100
    adapted = adapt_log_probs(
        np.frombuffer(ctx, np.uint8).astype(np.int64),
        fh.match[:n],
        fh.length[:n],
        whole.hinted[0][:n],
        whole.hint[0][:n],
    )
    lq, _ = column_log_probs(ctx)
    row = RowHints(ctx, "binary", tail)
    assert row.columns.logit() == pytest.approx(evidence_logits(lq, adapted)[-1], abs=1e-3)
    opts = SamplingOptions(max_bytes=80, stop_at_eos=False)
    out = generate(ob, [ctx], ["binary"], opts=opts)
    modes = bytes(int(np.bincount(np.frombuffer(ctx[c::8], np.uint8)).argmax()) for c in range(8))
    made = np.frombuffer(out[0], np.uint8).reshape(10, 8)
    assert bytes(made[:, 6:].ravel()) == modes[6:] * 10  # greedy keeps the exponent columns of the records
    assert out == generate(tb, [ctx], ["binary"], opts=opts)


def test_report_shows_each_sample_beside_its_source(exported, tmp_path):
    """Each sample completes a real file (its start kept); images and video frames are PNGs next to
    the source's, audio is linked with a waveform, text is inline."""
    from obf.evaluate.run import evaluate

    root, params, _ = exported
    data = tmp_path / "data"
    data.mkdir()
    for rel in INPUTS.values():
        (data / rel.replace("/", "_")).write_bytes((RAW / rel).read_bytes())
    params = dataclasses.replace(
        params, evaluate=dataclasses.replace(params.evaluate, sample_bytes=600, denoise_windows=2)
    )
    m = evaluate(str(root / "onnx"), str(data), tmp_path / "eval" / "metrics.json", params, progress=False)
    report = (tmp_path / "eval" / "report.md").read_text()
    for mod in ("image", "video"):
        s = m["modalities"][mod]["sample"]
        assert f"![sample]({s['preview']})" in report and f"![source]({s['source_preview']})" in report
        with (
            Image.open(tmp_path / "eval" / s["preview"]) as a,
            Image.open(tmp_path / "eval" / s["source_preview"]) as b,
        ):
            assert a.format == b.format == "PNG" and a.size == b.size and min(a.size) >= 96
        assert s["opens_raw"] and 0 < s["generated_bytes"] <= 600 + 1542
    audio = m["modalities"]["audio"]["sample"]
    assert f"[sample]({audio['file']})" in report and f"[source]({audio['source_file']})" in report
    text = m["modalities"]["text"]["sample"]
    assert text["kept_tail"] in report and "generated_hex" in m["modalities"]["binary"]["sample"]
    for mod, s in ((k, v["sample"]) for k, v in m["modalities"].items()):  # the start of a real file, kept
        sample = (tmp_path / "eval" / s["file"]).read_bytes()
        src = data / INPUTS[mod].replace("/", "_")
        assert s["prefix_bytes"] > 0 and s["source"] == src.name
        if mod in ("text", "binary"):
            assert sample[: s["prefix_bytes"]] == src.read_bytes()[: s["prefix_bytes"]]


def test_export_and_evaluate_never_replace_what_they_did_not_write(exported, tmp_path):
    from obf import stages
    from obf.core.errors import ObfError

    root, params, _ = exported
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    for out, match in (
        (root / "model", "is the input"),
        (root / "model" / "sub", "lies inside"),
        (root, "holds the input"),
        (foreign, "not written by obf export"),
        (root / "onnx-from-ingest", "written by obf ingest"),
    ):
        if out.name == "onnx-from-ingest":
            ingest(str(RAW / "text"), out, params.ingest, progress=False)
        with pytest.raises(ObfError, match=match):
            stages.export(str(root / "model"), out, params, progress=False)
    assert (foreign / "keep.txt").read_text() == "mine" and not (root / "model" / "sub").exists()
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello there\n" * 20)
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(ObfError, match="not written by obf evaluate"):
        stages.evaluate(str(root / "onnx"), str(data), tmp_path / "metrics.json", params, progress=False)
    (tmp_path / "samples" / "photo.jpg").unlink()
    (tmp_path / "report.md").write_text("# my notes\n")
    with pytest.raises(ObfError, match="report.md: exists and is not an obf evaluate output"):
        stages.evaluate(str(root / "onnx"), str(data), tmp_path / "metrics.json", params, progress=False)
    assert (tmp_path / "report.md").read_text() == "# my notes\n"
    (tmp_path / "report.md").unlink()
    for _ in range(2):  # its own outputs are replaced
        stages.evaluate(str(root / "onnx"), str(data), tmp_path / "metrics.json", params, progress=False)
    with pytest.raises(ObfError, match="is the input"):  # samples/ beside --out would replace the data
        stages.evaluate(
            str(root / "onnx"), str(tmp_path / "samples"), tmp_path / "metrics.json", params, progress=False
        )


def test_long_context_export_parity_scoring_and_generation(exported, tmp_path):
    """A 16 KiB causal-encoder model: the export's parity gate passes on a full-length source,
    whole-file scoring groups windows per encoder pass alike on both backends (same bits), and
    greedy generation after a context longer than the encoder's gives the same bytes."""
    from obf.runtime.scoring import group_size, whole_file_bits

    root, _, _ = exported
    params = load_params(
        None,
        [
            *TINY,
            "model.causal_encoder=true",
            "model.max_src_len=16384",
            "model.patch_size=16",
            "train.windows=4",
            "train.batch_size=2",
            "train.steps=4",
        ],
    )
    train(root / "ds", tmp_path / "model", params, progress=False)
    elf = (RAW / "binary/_json.so").read_bytes()  # 210 KB: the parity source is a whole 16 KiB
    info = export(tmp_path / "model", tmp_path / "onnx", params.export, real=[(elf, "binary")], progress=False)
    assert info["config"]["max_src_len"] == 16384 and info["config"]["causal_encoder"] is True
    assert info["parity"]["max_abs_diff"] < 1e-3
    tb, ob = load_torch(str(tmp_path / "model")), OnnxBackend(tmp_path / "onnx", provider="cpu")
    assert group_size(tb, 32) == group_size(ob, 32) > 1
    files = [(np.frombuffer(elf[:20000], np.uint8), "binary")]
    a, b = whole_file_bits(tb, files, 16), whole_file_bits(ob, files, 16)
    assert abs(a.model[0] - b.model[0]) / 20001 < 1e-3
    opts = SamplingOptions(max_bytes=80, stop_at_eos=False)
    ctx = [elf[:20000], elf[5000:5100]]
    assert generate(tb, ctx, ["binary", "binary"], opts=opts) == generate(ob, ctx, ["binary", "binary"], opts=opts)


class _RecordingShifts:
    """A backend as it is, recording the sources it encodes and the query move of every decode
    step generation asks for."""

    def __init__(self, inner) -> None:
        self.inner, self.shifts, self.sources = inner, [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, src_ids, align=None):
        self.sources.append(src_ids.copy())
        return self.inner.encode(src_ids, align)

    def step(self, tokens, memory, cache, shift=None, places=None):
        self.shifts.append(None if shift is None else shift.copy())
        return self.inner.step(tokens, memory, cache, shift, places)


def test_paired_queries_read_where_the_conversion_maps_them_in_training_scoring_and_generation(exported):
    """binary -> text is `hex`: each character's query moves to the byte it encodes. Teacher-forced
    windows (what training and scoring run) and cached steps (what generation runs) agree on both
    runtimes, and generation asks each step for exactly the move training used, over the source
    training used: the input, then the EOS id that marks its end (`model.input_end`)."""
    from obf.data.objectives import collate, paired_example
    from obf.formats.conversions import convert, input_offsets

    root, _, _ = exported
    inp, target = convert("hex", (RAW / "binary/true.elf").read_bytes()[:100])  # 300 characters
    greedy = []
    for backend in (load_torch(str(root / "model")), OnnxBackend(root / "onnx", provider="cpu")):
        assert backend.query_map and backend.input_end
        w = backend.max_tgt_len
        b = collate([paired_example(inp, "binary", target, "text", backend.max_input_len, w, range(0, 3),
                                    query_map=True, input_end=True)], multiple=8)
        assert b.shift.any()
        full = backend.window_logits(b.src, b.dec, b.rows, b.visible, b.align, b.shift)  # (3, T, V)
        flat = backend.window_logits(b.src, b.dec, b.rows, b.visible, b.align)
        assert np.abs(full - flat).max() > 1e-3  # where a query reads changes what the model says
        for n in range(3):
            mem = backend.encode(b.src, b.align[n:n + 1])
            cache = backend.init_cache(mem)
            for t in range(w):
                logits, cache = backend.step(b.dec[n, t:t + 1], mem, cache, b.shift[n, t:t + 1])
                assert np.abs(logits[0] - full[n, t]).max() < 1e-3
        rec = _RecordingShifts(backend)
        opts = SamplingOptions(max_bytes=len(target), stop_at_eos=False)
        greedy += generate(rec, [inp], ["binary"], task="paired", target_modalities=["text"], opts=opts)
        moved = np.concatenate(rec.shifts)[:len(target)]
        t = np.arange(len(target))
        assert (moved == input_offsets("binary", "text", inp, t, end=True) - t).all()
        assert moved[-1] == len(inp) - (len(target) - 1)  # the last newline reads the end marker
        assert all((src[:, -len(inp) - 1:] == b.src[0, -len(inp) - 1:]).all() for src in rec.sources)
    assert greedy[0] == greedy[1]


def test_an_export_from_before_query_map_still_runs_and_refuses_moved_windows(exported, tmp_path):
    """Exports made before `query_map` take one cross position per row (align (B,)). Rebuilt here
    from today's graph (the Unsqueeze they had put back), such an export generates what today's
    does for a model that moves no query, and a teacher-forced window whose queries move is a
    one-line error rather than wrong logits."""
    import shutil

    from obf.runtime.onnx_backend import sha256_file

    root, _, _ = exported
    old = tmp_path / "onnx"
    shutil.copytree(root / "onnx", old)
    graph = onnx_ir.load(str(old / "decoder.onnx"))
    g = graph.graph
    align = next(i for i in g.input if i.name == "align")
    align.type.tensor_type.shape.ClearField("dim")
    align.type.tensor_type.shape.dim.add().dim_param = "batch"
    add = next(n for n in g.node if n.output[0] == "first_pos")
    add.input[0] = "align_col"
    g.initializer.append(onnx_ir.numpy_helper.from_array(np.array([1], np.int64), "axis_col"))
    g.node.insert(0, onnx_ir.helper.make_node("Unsqueeze", ["align", "axis_col"], ["align_col"]))
    onnx_ir.save(graph, str(old / "decoder.onnx"))
    meta = json.loads((old / "obf.json").read_text())
    meta["sha256"]["decoder.onnx"] = sha256_file(old / "decoder.onnx")
    (old / "obf.json").write_text(json.dumps(meta))
    before, now = OnnxBackend(old, provider="cpu"), OnnxBackend(root / "onnx", provider="cpu")
    assert not before.align_per_id and not before.query_map and now.query_map
    ctx, opts = [(RAW / "text/heapq.py").read_bytes()[:200]], SamplingOptions(max_bytes=100, stop_at_eos=False)
    assert generate(before, ctx, ["text"], opts=opts) == generate(now, ctx, ["text"], opts=opts)

    from obf.data.objectives import collate, paired_example
    from obf.formats.conversions import convert

    inp, target = convert("hex", (RAW / "binary/true.elf").read_bytes()[:40])
    b = collate([paired_example(inp, "binary", target, "text", now.max_input_len, now.max_tgt_len, range(0, 1),
                                query_map=True)], multiple=8)
    with pytest.raises(ValueError, match="re-run `obf export`"):
        before.window_logits(b.src, b.dec, b.rows, b.visible, b.align, b.shift)


class _RecordingPlaces:
    """A backend as it is, recording the place ids every decode step generation gives it."""

    def __init__(self, inner) -> None:
        self.inner, self.places = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, tokens, memory, cache, shift=None, places=None):
        self.places.append(None if places is None else places.copy())
        return self.inner.step(tokens, memory, cache, shift, places)


def test_layout_input_trains_exports_scores_and_generates_alike(exported, tmp_path, monkeypatch):
    """A model with `model.layout_input`: its training windows carry the place ids of their media
    targets; the export's parity gate passes on an image and a video (places included); torch and
    ONNX Runtime score those files to the same bits and generate the same greedy bytes; and every
    decode step is given the ids that the finished file gives that byte, as training reads them.
    With `paired_places` the same holds for a `paired` gray target, whose places come from the
    header it writes first."""
    from obf.data.dataset import Dataset
    from obf.data.objectives import ExampleSampler
    from obf.formats.canonical import canonicalize
    from obf.formats.conversions import convert
    from obf.formats.places import NO_PLACE, place_ids
    from obf.runtime.scoring import paired_log_probs, whole_file_bits

    root, _, _ = exported
    params = load_params(None, [*TINY, "model.layout_input=true", "model.paired_places=true", "train.steps=6"])
    ds = Dataset(root / "ds")
    sampler = ExampleSampler(ds, "train", max_src_len=128, max_tgt_len=64, task_weights={"continue": 1.0},
                             modality_weights={"image": 1.0}, layout_input=True)
    b = sampler.batch(list(range(8)))
    assert b.places is not None and (b.places[..., 0] > 0).any() and (b.places[..., 1] < 256).any()
    train(root / "ds", tmp_path / "model", params, progress=False)
    bmp, _ = canonicalize((RAW / INPUTS["image"]).read_bytes(), params.ingest)
    y4m, _ = canonicalize((RAW / INPUTS["video"]).read_bytes(), params.ingest)
    info = export(tmp_path / "model", tmp_path / "onnx", params.export, real=[(bmp, "image"), (y4m, "video")],
                  progress=False)
    assert info["config"]["layout_input"] is True and info["parity"]["max_abs_diff"] < 1e-3
    tb, ob = load_torch(str(tmp_path / "model")), OnnxBackend(tmp_path / "onnx", provider="cpu")
    assert tb.layout_input and ob.layout_input
    files = [(np.frombuffer(bmp[:3000], np.uint8), "image"), (np.frombuffer(y4m[:4000], np.uint8), "video")]
    a, c = whole_file_bits(tb, files, 16), whole_file_bits(ob, files, 16)
    assert np.allclose(a.network, c.network, rtol=1e-4)
    opts = SamplingOptions(max_bytes=150, stop_at_eos=False)
    ctx = [bmp[:2000], y4m[:3000]]
    outs = []
    for backend in (tb, ob):
        rec = _RecordingPlaces(backend)
        outs.append(generate(rec, ctx, ["image", "video"], opts=opts))
        given = np.stack(rec.places)  # (steps, B, 3)
        for row, (context, modality) in enumerate(zip(ctx, ["image", "video"])):
            made = context + outs[-1][row]
            want = place_ids(made, modality, np.arange(len(context), len(made)))
            assert (given[:len(want), row] == want).all()
    assert outs[0] == outs[1]
    assert tb.paired_places and ob.paired_places
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (4, 3, 3), dtype=np.uint8)).save(buf, format="PNG")
    small, gray = convert("gray", buf.getvalue())  # a 3x4 BMP (102 bytes) and its gray BMP
    pair = [(small, "image", gray, "image")]
    placed = paired_log_probs(tb, pair).served[0]  # (len(gray) + 1,)
    assert np.allclose(placed, paired_log_probs(ob, pair).served[0], atol=1e-3)
    tb.paired_places = False  # the same network scoring the target without its places
    assert not np.allclose(placed, paired_log_probs(tb, pair).served[0])
    tb.paired_places = True
    spec = RowSpec(length=len(gray), fixed=dict(enumerate(gray[:40])))  # the header's first bytes, as written
    import obf.generate.sampling as sampling

    rows, row_hints = [], sampling.RowHints
    monkeypatch.setattr(sampling, "RowHints", lambda *a, **k: rows.append(k) or row_hints(*a, **k))
    made = []
    for backend in (tb, ob):
        rec = _RecordingPlaces(backend)
        made += generate(rec, [small], ["image"], task="paired", specs=[spec])
        given = np.stack(rec.places)[:, 0]  # (steps, 3)
        assert (given == place_ids(made[-1], "image", np.arange(len(made[-1])))).all()
    assert made[0] == made[1] and bmp_layout(made[0]) is not None
    assert len(rows) == 2 and all(k["stride"] is False for k in rows)  # a target's mixer row: no stride hint
    assert (given[:54] == NO_PLACE).all() and (given[54:, 0] > 0).all()  # places from the pixels on
