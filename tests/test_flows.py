"""Prefect flows end to end on a moto S3 server: registry, train-flow, batch-generate (idempotence,
poisoned inputs, crash + rerun, Dask), a real `prefect deployment run`, and DVC push/pull to S3."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from obf.core import storage
from obf.core.config import GenerateSettings
from obf.core.params import apply_overrides, load_params
from obf.data.ingest import ingest
from obf.export.onnx_export import export
from obf.formats.repair import opens
from obf.registry import RegistryError, describe, publish, resolve
from obf.train import train

from .conftest import BIN, RAW, ROOT, free_port

TINY = ["model.preset=tiny", "model.patch_size=4", "model.max_src_len=128", "model.max_input_len=512",
        "model.max_tgt_len=32", "train.batch_size=4", "train.steps=20", "train.warmup_steps=2", "train.eval_every=1000",
        "train.eval_batches=1", "train.checkpoint_every=1000", "train.task_weights={continue: 1.0}",
        "evaluate.sample_bytes=32", "evaluate.denoise_windows=2"]
MIXED = ["text/bisect.py", "text/this_py.txt", "image/horse.png", "image/text.gif", "audio/hello_world.wav",
         "video/hubble_pan.y4m", "binary/true.elf"]


def _wait_http(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` (SQLite) on a free port: the module's flows run against it,
    in this process (`harness`), from `serve` and by deployment."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        _wait_http(f"{api}/health", 120)
        yield api, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def harness(prefect_server):
    """Flows run in this process against the module's real Prefect server: one server start for
    the whole module (Prefect's test harness would start another, ~20 s on a 2-core host)."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server[0]}):
        yield
        APILogHandler().flush()  # the runs' logs reach the server before it stops


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowmodel")
    raw = root / "raw"
    for rel in MIXED:
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(RAW / rel, raw / rel)
    params = load_params(None, [*TINY, "ingest.val_fraction=0.0", "ingest.test_fraction=0.0"])
    ingest(str(raw), root / "ds", params.ingest, progress=False)
    train(root / "ds", root / "model", params, progress=False)
    export(root / "model", root / "onnx", params.export, progress=False)
    return root / "onnx"


def upload(local: Path, url: str, names: list[str]) -> None:
    for rel in names:
        storage.write_bytes_atomic(storage.join(url, rel), (local / rel).read_bytes())


def test_registry_publish_resolve_verify(onnx_model, s3_bucket, tmp_path):
    reg = f"{s3_bucket}/models"
    m1 = publish(onnx_model, reg, "obf")
    m2 = publish(onnx_model, reg, "obf")
    assert (m1["version"], m2["version"]) == ("v0001", "v0002")
    path, version = resolve(reg, "obf", cache_dir=tmp_path / "cache")
    assert version == "v0002" and sorted(p.name for p in path.iterdir()) == [
        "decoder.onnx", "encoder.onnx", "manifest.json", "obf.json"]
    pinned, v = resolve(reg, "obf", "v0001", cache_dir=tmp_path / "cache")
    assert v == "v0001" and pinned != path
    with pytest.raises(RegistryError, match="immutable"):
        publish(onnx_model, reg, "obf", version="v0001")
    # a corrupted object in the registry is refused, nothing is cached
    storage.write_bytes_atomic(f"{reg}/obf/v0001/decoder.onnx", b"garbage")
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        resolve(reg, "obf", "v0001", cache_dir=tmp_path / "cache2")
    assert not (tmp_path / "cache2" / "obf" / "v0001").exists()
    with pytest.raises(RegistryError, match="not found"):
        resolve(reg, "nope", cache_dir=tmp_path / "cache")


def test_concurrent_publishes_never_interleave_and_latest_only_moves_forward(onnx_model, s3_bucket):
    from concurrent.futures import ThreadPoolExecutor

    from obf.registry import _move_latest

    reg = f"{s3_bucket}/models"
    with ThreadPoolExecutor(4) as pool:
        manifests = list(pool.map(lambda _: publish(onnx_model, reg, "obf"), range(6)))
    assert sorted(m["version"] for m in manifests) == [f"v{i:04d}" for i in range(1, 7)]  # one version each
    want = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in onnx_model.iterdir()
            if not p.name.startswith(".")}
    for m in manifests:  # every version whole: its own files, none of another publisher's
        stored = json.loads(storage.read_bytes(f"{reg}/obf/{m['version']}/manifest.json"))
        assert {k: v["sha256"] for k, v in stored["files"].items()} == want
        for fname, sha in want.items():
            assert hashlib.sha256(storage.read_bytes(f"{reg}/obf/{m['version']}/{fname}")).hexdigest() == sha
    assert json.loads(storage.read_bytes(f"{reg}/obf/latest.json"))["version"] == "v0006"
    _move_latest(f"{reg}/obf", "obf", "v0003", "0" * 64)  # a slow publisher of an older version finishing last
    assert json.loads(storage.read_bytes(f"{reg}/obf/latest.json"))["version"] == "v0006"
    with pytest.raises(RegistryError, match="already published"):
        publish(onnx_model, reg, "obf", version="v0002")


def test_train_flow_with_a_missing_params_file_fails_before_any_work(harness, s3_bucket, tmp_path):
    from flows.train import train_flow
    from obf.core.config import ConfigError

    with pytest.raises(ConfigError, match="params file not found"):
        train_flow(source=f"{s3_bucket}/raw", registry=f"{s3_bucket}/models", params=str(tmp_path / "nope.yaml"),
                   workdir=str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_train_flow_refuses_a_bad_name_url_or_dask_address_before_any_work(harness, s3_bucket, tmp_path):
    """Each was found only after ingest and training (the name at publish, the address inside the
    ingest task), or never: `s3:/models` was a local folder, and `../x` a way out of the registry."""
    from flows.train import train_flow

    kw = dict(source=f"{s3_bucket}/raw", registry=f"{s3_bucket}/models", params=None, workdir=str(tmp_path / "work"))
    for bad, error, match in ((dict(name="../../elsewhere"), RegistryError, "bad name"),
                              (dict(registry="s3:/obf-models"), storage.StorageError, "mistyped URL"),
                              (dict(source="s3://"), storage.StorageError, "no bucket"),
                              (dict(dask_address="notanaddress"), storage.StorageError, "not an address")):
        with pytest.raises(error, match=match):
            train_flow(**{**kw, **bad})
        assert not (tmp_path / "work").exists()
    # an error in the run's own input fails it at once; a store's own failure is retried
    with pytest.raises(storage.NotFoundError, match="no such file or prefix"):
        train_flow(**{**kw, "source": f"{s3_bucket}/nothing-here"})


def test_only_what_a_second_try_may_fix_is_retried():
    from prefect.states import Failed

    from obf.core.errors import prefect_retry_condition
    from obf.core.storage import ConflictError, NotFoundError, StorageError

    retried = {type(e).__name__: prefect_retry_condition(None, None, Failed(data=e))
               for e in (StorageError("s3://b/x: ConnectionError: reset"), ConflictError("lost"), OSError("reset"),
                         NotFoundError("s3://b/x: no such file or prefix"), RegistryError("bad name"))}
    assert retried == {"StorageError": True, "ConflictError": True, "OSError": True, "NotFoundError": False,
                       "RegistryError": False}


def test_train_flow_from_s3_publishes_a_verifiable_model(harness, s3_bucket, tmp_path, monkeypatch):
    """The published model verifies on load, and was made with the settings the run read at its
    start: an edit to the params file while the run goes on (here, right after the ingest) reaches
    none of its stages."""
    import flows.train as ft

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(apply_overrides({}, [*TINY, "ingest.val_fraction=0.3"])))
    real_ingest = ft.stages.ingest

    def ingest_then_edit(*args, **kw):
        out = real_ingest(*args, **kw)
        params_file.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(params_file.read_text()),
                                                              ["train.steps=3"])))
        return out

    monkeypatch.setattr(ft.stages, "ingest", ingest_then_edit)
    upload(RAW, f"{s3_bucket}/raw", MIXED + ["text/heapq.py"])
    out = ft.train_flow(source=f"{s3_bucket}/raw", registry=f"{s3_bucket}/models", name="tiny",
                        params=str(params_file), workdir=str(tmp_path / "work"))
    assert out["version"] == "v0001"
    build = json.loads(storage.read_bytes(f"{s3_bucket}/models/_builds/tiny/{out['build']}/build.json"))
    assert build["train"]["steps"] == 20 == build["card"]["settings"]["train"]["steps"]
    path, _ = resolve(f"{s3_bucket}/models", "tiny", cache_dir=tmp_path / "cache")
    from obf.runtime.onnx_backend import OnnxBackend

    assert OnnxBackend(path, provider="cpu").max_tgt_len == 32  # hashes verified on load
    assert storage.exists(f"{s3_bucket}/models/tiny/latest.json")


def test_train_flow_keeps_its_build_and_a_failed_publish_does_not_train_again(harness, s3_bucket, tmp_path,
                                                                              monkeypatch):
    """The exported model and its evaluation persist as a build keyed by the dataset, the settings
    and the code; a rerun after a failed publish publishes that build without training, with its
    model card; the run's temp work dir is gone either way."""
    import tempfile

    import flows.train as ft
    from obf import provenance

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    upload(RAW, f"{s3_bucket}/raw", MIXED + ["text/heapq.py"])
    reg = f"{s3_bucket}/models"
    broken = [True]
    real_publish = ft.publish

    def flaky_publish(*args, **kw):
        if broken[0]:
            raise RuntimeError("the registry is unreachable")
        return real_publish(*args, **kw)

    monkeypatch.setattr(ft, "publish", flaky_publish)
    monkeypatch.setattr(ft, "publish_task", ft.publish_task.with_options(retries=0))
    kw = dict(source=f"{s3_bucket}/raw", registry=reg, name="tiny", params=None,
              overrides=[*TINY, "ingest.val_fraction=0.3"])
    with pytest.raises(RuntimeError, match="unreachable"):
        ft.train_flow(**kw)
    assert _work_dirs(tmp_path / "tmp") == []  # the work dir went with the run
    builds = [e.key for e in storage.list_files(f"{reg}/_builds/tiny")]
    assert any(k.endswith("/build.json") for k in builds) and any(k.endswith("onnx/decoder.onnx") for k in builds)
    assert not storage.exists(f"{reg}/tiny/latest.json")

    broken[0] = False
    monkeypatch.setattr(ft.stages, "train", lambda *a, **k: pytest.fail("trained again"))
    out = ft.train_flow(**kw)
    assert out["version"] == "v0001" and out["trained"] is False
    assert _work_dirs(tmp_path / "tmp") == []
    card = describe(reg, "tiny")["card"]
    build = json.loads(storage.read_bytes(f"{reg}/_builds/tiny/{out['build']}/build.json"))
    evaluated = storage.read_bytes(f"{reg}/_builds/tiny/{out['build']}/{build['attempt']}/eval/metrics.json")
    assert card["code_version"] == provenance.code_version() and card["obf_version"]
    assert card["settings"]["model"]["preset"] == "tiny" and card["settings"]["train"]["steps"] == 20
    assert len(card["dataset_manifest_sha256"]) == 64 and len(card["dataset_sha256"]) == 64
    assert sorted(f.rsplit("/", 1)[-1] for f in build["files"] if "/onnx/" in f and "/onnx/." not in f) == sorted(
        k for k in describe(reg, "tiny")["files"])  # the version holds exactly the build's files
    assert card["evaluation"]["bpb"] == pytest.approx(json.loads(evaluated)["overall"]["bpb"])
    path, _ = resolve(reg, "tiny", cache_dir=tmp_path / "cache")
    assert (path / "decoder.onnx").is_file()
    # the registry tools show the card
    r = subprocess.run([sys.executable, "-m", "obf.cli", "registry", "show", reg, "tiny"], capture_output=True,
                       text=True, env=os.environ)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["version"] == "v0001" and shown["card"]["dataset_manifest_sha256"] == card["dataset_manifest_sha256"]
    r = subprocess.run([sys.executable, "-m", "obf.cli", "registry", "list", reg, "tiny"], capture_output=True,
                       text=True, env=os.environ)
    assert r.returncode == 0 and "v0001" in r.stdout, r.stderr


def _work_dirs(tmp: Path) -> list[str]:
    """The train-flow's own work dirs under `tmp` (torch may leave caches of its own there)."""
    return [p.name for p in tmp.iterdir() if p.name.startswith("obf-train-flow-")]


def _outputs(out_url: str) -> list[str]:
    """The output files under `out_url`: not the flow's own records or its in-flight claims."""
    return sorted(e.key for e in storage.list_files(out_url)
                  if not e.key.startswith(("_runs/", "_state/", "_claims/")) and e.key != "_obf.json")


def _manifests(out_url: str) -> list[dict]:
    try:
        return [json.loads(storage.read_bytes(e.url)) for e in storage.list_files(f"{out_url}/_runs")]
    except storage.StorageError:
        return []


def test_batch_generate_idempotent_incremental_and_poison(harness, onnx_model, s3_bucket, tmp_path, monkeypatch):
    from flows.generate import BatchGenerateFailed, batch_generate, fingerprint

    monkeypatch.setenv("OBF_CACHE", str(tmp_path / "cache"))
    reg, inp, out = f"{s3_bucket}/models", f"{s3_bucket}/in", f"{s3_bucket}/out"
    publish(onnx_model, reg, "obf")
    upload(RAW, inp, MIXED)
    kw = dict(input_url=inp, output_url=out, registry=reg, max_bytes=48, batch_size=3)
    first = batch_generate(**kw)
    assert first["ok"] == len(MIXED) and first["failed"] == 0
    outs = _outputs(out)
    assert outs == sorted(["text/bisect.py.txt", "text/this_py.txt.txt", "image/horse.png.bmp", "image/text.gif.bmp",
                           "audio/hello_world.wav.wav", "video/hubble_pan.y4m.y4m", "binary/true.elf.bin"])
    for key in outs:
        modality = key.split("/")[0]
        assert opens(storage.read_bytes(f"{out}/{key}"), modality), key
    man = _manifests(out)[0]
    assert man["counts"] == {"ok": len(MIXED), "skipped": 0, "failed": 0}
    assert {i["input"] for i in man["inputs"]} == set(MIXED)

    second = batch_generate(**kw)
    assert (second["ok"], second["skipped"]) == (0, len(MIXED))

    upload(RAW, inp, ["text/getopt.py"])
    third = batch_generate(**kw)
    assert (third["ok"], third["skipped"]) == (1, len(MIXED))
    assert "text/getopt.py.txt" in _outputs(out)

    # a changed input (same key, new content) is generated again; the rest stays skipped
    storage.write_bytes_atomic(f"{inp}/text/this_py.txt", b"a new version of this file\n" * 3)
    fourth = batch_generate(**kw)
    assert (fourth["ok"], fourth["skipped"]) == (1, len(MIXED))

    # other settings are another job: every output is made again, replacing the old one, and the
    # one record per input says which settings made it; going back regenerates again
    n = len(MIXED) + 1
    for max_bytes, made in ((40, n), (40, 0), (48, n)):
        res = batch_generate(**{**kw, "max_bytes": max_bytes})
        assert (res["ok"], res["skipped"]) == (made, n - made), max_bytes
        current = {fingerprint(e) for e in storage.list_files(inp)}  # (an input's old version keeps its record)
        records = [r for e in storage.list_files(f"{out}/_state")
                   if (r := json.loads(storage.read_bytes(e.url)))["fingerprint"] in current]
        assert len(records) == n and {(r["max_bytes"], r["task"], r["precision"]) for r in records} == {
            (max_bytes, "continue", "fp32")}

    # poisoned inputs: undecodable media, over the size cap, an unsafe key
    storage.write_bytes_atomic(f"{inp}/image/broken.png", b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    storage.write_bytes_atomic(f"{inp}/binary/huge.bin", os.urandom(300_000))
    storage.write_bytes_atomic(f"{inp}/text/../escape.txt", b"sneaky")
    upload(RAW, inp, ["text/glob.py"])
    with pytest.raises(BatchGenerateFailed, match="3 of"):
        batch_generate(**{**kw, "max_input_bytes": 200_000})
    assert "text/glob.py.txt" in _outputs(out)  # the good one still completed
    latest = max(_manifests(out), key=lambda m: m["counts"]["failed"])
    failed = {i["input"]: i["error"] for i in latest["inputs"] if i["status"] == "failed"}
    assert set(failed) == {"image/broken.png", "binary/huge.bin", "text/../escape.txt"}
    assert "does not decode" in failed["image/broken.png"] and "over the cap" in failed["binary/huge.bin"]
    assert "unsafe key" in failed["text/../escape.txt"]
    assert not any(".." in k or k.startswith("escape") for k in _outputs(out))


def test_batch_generate_paired_conversion_and_prefix_completion(harness, onnx_model, s3_bucket, tmp_path,
                                                                monkeypatch):
    """The flow takes the CLI's options: continue with a kept prefix completed to the file's size,
    and paired with a target modality: each input's conversion, the same bytes `obf generate`
    makes, its decoding in the state record; inputs a conversion cannot take fail by name."""
    from flows.generate import BatchGenerateFailed, batch_generate
    from obf.generate.files import generate_files, ingest_config_of, prepare
    from obf.runtime.onnx_backend import OnnxBackend

    monkeypatch.setenv("OBF_CACHE", str(tmp_path / "cache"))
    reg, inp, out = f"{s3_bucket}/models", f"{s3_bucket}/in", f"{s3_bucket}/out"
    publish(onnx_model, reg, "obf")
    names = ["image/horse.png", "text/bisect.py", "image/horse.bmp"]
    upload(RAW, inp, names[:2])
    storage.write_bytes_atomic(f"{inp}/image/horse.bmp", storage.read_bytes(str(RAW / "image/coins.bmp")))
    kw = dict(input_url=inp, output_url=out, registry=reg, max_bytes=40, batch_size=4)
    res = batch_generate(**kw, prefix_fraction=0.5)
    assert (res["ok"], res["failed"]) == (3, 0)
    assert _outputs(out) == ["image/horse.bmp.bmp", "image/horse.png.bmp", "text/bisect.py.txt"]
    with Image.open(io.BytesIO(storage.read_bytes(f"{out}/image/horse.png.bmp"))) as im:
        assert im.mode == "RGBA" and im.size == (64, 52)  # completed to the declared size, alpha kept
    with pytest.raises(ValueError, match="target_modality"):
        batch_generate(**kw, target_modality="text")

    # paired to text: each input's built-in conversion (ascii of a picture, upper of a line, hex of
    # binary data), made exactly as `obf generate --task paired` makes it from the same model
    pin, pout = f"{s3_bucket}/pin", f"{s3_bucket}/pout"
    pic, see_through = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (6, 5), (200, 30, 90)).save(pic, format="PNG")
    Image.new("RGBA", (6, 5), (200, 30, 90, 0)).save(see_through, format="PNG")  # transparent: refused
    sources = {"pic.png": pic.getvalue(), "line.txt": b"a line of text to upper-case\n", "chunk.bin": bytes(range(48)),
               "alpha.png": see_through.getvalue(), "long.txt": b"x" * 300}
    for name, data in sources.items():
        storage.write_bytes_atomic(f"{pin}/{name}", data)
    pkw = dict(input_url=pin, output_url=pout, registry=reg, max_bytes=64, batch_size=8, task_name="paired",
               target_modality="text")
    with pytest.raises(BatchGenerateFailed, match="2 of 5"):
        batch_generate(**pkw)
    failed = {i["input"]: i["error"] for i in _manifests(pout)[0]["inputs"] if i["status"] == "failed"}
    assert "transparency" in failed["alpha.png"] and "256 bytes" in failed["long.txt"]
    assert _outputs(pout) == ["chunk.bin.txt", "line.txt.txt", "pic.png.txt"]
    backend = OnnxBackend(onnx_model, provider="cpu")
    good = ["chunk.bin", "line.txt", "pic.png"]  # the flow's batch, in its order
    prepared = [prepare(n, ingest_config_of(backend), max_input_bytes=1 << 20, data=sources[n]) for n in good]
    want = generate_files(backend, prepared, GenerateSettings(task="paired", target_modality="text", max_bytes=64),
                          batch_size=8)
    for name, r in zip(good, want):
        assert storage.read_bytes(f"{pout}/{name}.txt") == r.output, name
    records = [json.loads(storage.read_bytes(e.url)) for e in storage.list_files(f"{pout}/_state")]
    assert len(records) == 3 and {(r["task"], r["target_modality"], r["temperature"], r["top_k"], r["top_p"],
                                   r["min_p"], r["share_guard"], r["match_surprise"])
                                  for r in records} == {("paired", "text", 0.0, 0, 1.0, 0.0, 0.0, False)}  # greedy
    # other decoding is another job: every input is made again, and its record says how
    with pytest.raises(BatchGenerateFailed):
        batch_generate(**pkw, temperature=0.7, top_k=20, min_p=0.05, share_guard=5.0, match_surprise=True)
    records = [json.loads(storage.read_bytes(e.url)) for e in storage.list_files(f"{pout}/_state")]
    assert len(records) == 3 and {(r["temperature"], r["top_k"], r["top_p"], r["min_p"], r["share_guard"],
                                   r["match_surprise"]) for r in records} == {(0.7, 20, 1.0, 0.05, 5.0, True)}
    with pytest.raises(ValueError, match="temperature"):
        batch_generate(**pkw, temperature=-1.0)


def test_batch_generate_in_int8(harness, onnx_model, s3_bucket, tmp_path, monkeypatch):
    """A model exported with export.int8 publishes its quantised graphs; the flow runs them on request."""
    from flows.generate import batch_generate

    monkeypatch.setenv("OBF_CACHE", str(tmp_path / "cache"))
    root = onnx_model.parent
    params = load_params(None, TINY)
    export(root / "model", tmp_path / "onnx8", dataclasses.replace(params.export, int8=True), progress=False)
    reg, inp, out = f"{s3_bucket}/models8", f"{s3_bucket}/in8", f"{s3_bucket}/out8"
    publish(tmp_path / "onnx8", reg, "obf")
    upload(RAW, inp, MIXED[:4])
    res = batch_generate(input_url=inp, output_url=out, registry=reg, max_bytes=48, batch_size=4, precision="int8")
    assert (res["ok"], res["failed"]) == (4, 0)
    assert _manifests(out)[0]["model"]["precision"] == "int8"
    for key in _outputs(out):
        assert opens(storage.read_bytes(f"{out}/{key}"), key.split("/")[0]), key


def test_crash_mid_run_then_rerun_leaves_no_gap_or_duplicate(onnx_model, prefect_server, s3_server, s3_bucket,
                                                              tmp_path):
    N = 16  # inputs, made one at a time: the run is killed after its third output, well before its last
    reg, inp, out = f"{s3_bucket}/models", f"{s3_bucket}/in", f"{s3_bucket}/out"
    publish(onnx_model, reg, "obf")
    names = []
    for i in range(N):
        storage.write_bytes_atomic(f"{inp}/doc{i:02d}.txt", (f"document {i}\n" * 40).encode())
        names.append(f"doc{i:02d}.txt")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "OBF_CACHE": str(tmp_path / "cache"),
           "PREFECT_API_URL": prefect_server[0], "OMP_NUM_THREADS": "1"}
    # One worker, so outputs land one by one: Prefect's default thread pool runs all the batches at
    # once and they may all finish (and write) within a second, leaving nothing to crash between.
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from prefect.task_runners import ThreadPoolTaskRunner\n"
            "from flows.generate import batch_generate\n"
            "flow = batch_generate.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))\n"
            f"flow(input_url={inp!r}, output_url={out!r}, registry={reg!r}, max_bytes=300, batch_size=1,"
            " claim_ttl_s=2)\n")
    # its own session: the kill below takes everything the run started with it (the server, as a
    # nightly run's, lives on and keeps the killed run's record)
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(_outputs(out)) >= 3:
                break
        except storage.StorageError:
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + (tmp_path / "run.log").read_text()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the run and everything it started
    proc.wait()
    partial = _outputs(out)
    assert 3 <= len(partial) < N
    time.sleep(2.5)  # the killed run's claim on the input it was making expires
    rerun = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                           start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _outputs(out) == sorted(f"{n}.txt" for n in names)  # every input once, none missing
    man = [m for m in _manifests(out) if m["counts"]["failed"] == 0][-1]
    # the rerun made only what was missing: with one worker, at most the output written last before
    # the kill may lack its state record and be made again
    assert man["counts"]["ok"] + man["counts"]["skipped"] == N
    assert N - len(partial) <= man["counts"]["ok"] <= N - len(partial) + 1


def test_batch_generate_on_a_local_dask_cluster(harness, onnx_model, s3_bucket, tmp_path, monkeypatch):
    from prefect_dask import DaskTaskRunner

    from flows.generate import batch_generate

    monkeypatch.setenv("OBF_CACHE", str(tmp_path / "cache"))
    reg, inp, out = f"{s3_bucket}/models", f"{s3_bucket}/in", f"{s3_bucket}/out"
    publish(onnx_model, reg, "obf")
    upload(RAW, inp, MIXED[:4])
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                            "dashboard_address": None})
    res = batch_generate.with_options(task_runner=runner)(input_url=inp, output_url=out, registry=reg, max_bytes=32,
                                                          batch_size=1)
    assert res["ok"] == 4
    assert len(_outputs(out)) == 4


def test_batch_generate_on_dask_workers_that_share_nothing_with_the_flow(harness, onnx_model, s3_bucket, dask_cluster,
                                                                         tmp_path, monkeypatch):
    """Each task fetches the model itself into its worker's own verified cache; the flow process
    reads which version to use and downloads nothing. Its cache is a relative path, which names
    another place in each worker's folder: a path handed from the flow to a task finds nothing."""
    from prefect_dask import DaskTaskRunner

    from flows.generate import batch_generate

    address, workers = dask_cluster.address, dask_cluster.folders
    flow_dir = tmp_path / "flow"
    flow_dir.mkdir()
    monkeypatch.chdir(flow_dir)
    monkeypatch.setenv("OBF_CACHE", "flow-cache")  # relative: the flow's own folder, no worker's
    reg, inp, out = f"{s3_bucket}/models", f"{s3_bucket}/in", f"{s3_bucket}/out"
    publish(onnx_model, reg, "obf")
    upload(RAW, inp, MIXED)
    run = batch_generate.with_options(task_runner=DaskTaskRunner(address=address))
    res = run(input_url=inp, output_url=out, registry=reg, max_bytes=32, batch_size=2)
    assert (res["ok"], res["failed"]) == (len(MIXED), 0)
    outs = _outputs(out)
    assert len(outs) == len(MIXED)
    for key in outs:
        assert opens(storage.read_bytes(f"{out}/{key}"), key.split("/")[0]), key
    assert not (flow_dir / "flow-cache").exists()  # the flow fetched nothing
    fetched = [w for w in workers if any((w / "cache" / "obf").glob("v*/obf.json"))]
    assert fetched, "the workers fetched the model into their own caches"
    assert not any((w / "flow-cache").exists() for w in workers)
    again = run(input_url=inp, output_url=out, registry=reg, max_bytes=32, batch_size=2)
    assert (again["ok"], again["skipped"]) == (0, len(MIXED))


def test_batch_generate_on_dask_workers_under_s3_faults(harness, onnx_model, s3_bucket, faulty_s3, dask_cluster,
                                                        tmp_path, monkeypatch):
    """Workers that share nothing with the flow, and ~11% of every S3 request failing (the seeded
    fault proxy, which the workers reach too: it is their AWS_ENDPOINT_URL from the start): one
    output per input, each opening as its format, and a rerun makes nothing again."""
    from prefect_dask import DaskTaskRunner

    from flows.generate import batch_generate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBF_CACHE", "flow-cache")
    reg, inp, out = f"{s3_bucket}/models", f"{s3_bucket}/in", f"{s3_bucket}/out"
    publish(onnx_model, reg, "obf")
    upload(RAW, inp, MIXED)
    from distributed import Client

    with Client(dask_cluster.address, timeout=60) as client:  # the workers' S3 is the proxy
        assert set(client.run(lambda: os.environ["AWS_ENDPOINT_URL"]).values()) == {faulty_s3.url}
    run = batch_generate.with_options(task_runner=DaskTaskRunner(address=dask_cluster.address))
    faulty_s3.enabled = True
    res = run(input_url=inp, output_url=out, registry=reg, max_bytes=32, batch_size=2)
    again = run(input_url=inp, output_url=out, registry=reg, max_bytes=32, batch_size=2)
    faulty_s3.enabled = False
    assert sum(faulty_s3.faults.values()) >= 5, faulty_s3.faults  # the faults really happened
    assert (res["ok"], res["failed"]) == (len(MIXED), 0)
    assert (again["ok"], again["skipped"]) == (0, len(MIXED))
    outs = _outputs(out)
    assert len(outs) == len(MIXED)  # one output per input, none twice
    for key in outs:
        assert opens(storage.read_bytes(f"{out}/{key}"), key.split("/")[0]), key
    records = [json.loads(storage.read_bytes(e.url)) for e in storage.list_files(f"{out}/_state")]
    assert sorted(r["input"] for r in records) == sorted(MIXED)
    assert not (tmp_path / "flow-cache").exists()  # the flow fetched nothing; the workers did


def test_prefect_deployment_run_against_a_real_server(prefect_server, s3_bucket, tmp_path):
    api, home = prefect_server
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "OBF_CACHE": str(tmp_path / "cache"),
           "OBF_SOURCE": f"{s3_bucket}/raw", "OBF_REGISTRY": f"{s3_bucket}/models", "OBF_NAME": "served",
           "OBF_INPUT": f"{s3_bucket}/in", "OBF_OUTPUT": f"{s3_bucket}/out",
           "OBF_OVERRIDES": ";".join([*TINY, "ingest.val_fraction=0.3"]), "OBF_PARAMS": "none",
           "OMP_NUM_THREADS": "1"}
    upload(RAW, f"{s3_bucket}/raw", MIXED + ["text/heapq.py"])
    upload(RAW, f"{s3_bucket}/in", MIXED[:3])
    serve = subprocess.Popen([sys.executable, str(ROOT / "flows" / "serve.py")], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    prefect = lambda *a, **kw: subprocess.run([str(BIN / "prefect"), *a], env=env, cwd=ROOT, capture_output=True,
                                             text=True, **kw)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            ls = prefect("deployment", "ls")
            if "train-flow/default" in ls.stdout and "batch-generate/nightly" in ls.stdout:
                break
            time.sleep(1)
        assert "batch-generate/nightly" in ls.stdout, ls.stdout + ls.stderr
        r = prefect("deployment", "run", "train-flow/default", "--watch", "--watch-timeout", "400", timeout=450)
        assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        assert storage.exists(f"{s3_bucket}/models/served/latest.json")
        r = prefect("deployment", "run", "batch-generate/nightly", "--watch", "--watch-timeout", "300", timeout=350)
        assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        assert len(_outputs(f"{s3_bucket}/out")) == 3
        # the nightly deployment carries its cron schedule
        insp = prefect("deployment", "inspect", "batch-generate/nightly")
        assert "0 2 * * *" in insp.stdout
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)


def test_prefect_yaml_deploys_with_a_process_pool(prefect_server):
    api, home = prefect_server
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "OBF_HOME": str(ROOT)}
    run = lambda *a: subprocess.run([str(BIN / "prefect"), *a], env=env, cwd=ROOT, capture_output=True, text=True,
                                    timeout=180)
    r = run("work-pool", "create", "obf-process", "--type", "process", "--overwrite")
    assert r.returncode == 0, r.stderr
    r = run("--no-prompt", "deploy", "--all")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ls = run("deployment", "ls")
    assert "train-flow/default" in ls.stdout and "batch-generate/nightly" in ls.stdout


def test_dvc_push_and_pull_to_an_s3_remote(s3_bucket, tmp_path):
    repo = tmp_path / "repo"
    (repo / "data" / "raw").mkdir(parents=True)
    for rel in ["text/bisect.py", "image/horse.png"]:
        (repo / "data" / "raw" / Path(rel).name).write_bytes((RAW / rel).read_bytes())
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "dvc.yaml").write_text("stages:\n  ingest:\n    cmd: obf ingest data/raw --out data/dataset\n"
                                   "    deps: [data/raw]\n    params: [ingest]\n    outs: [data/dataset]\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run = lambda *c: subprocess.run(list(c), cwd=repo, capture_output=True, text=True, env=env, timeout=300)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "remote", "add", "-d", "store", f"{s3_bucket}/dvcstore"], ["dvc", "repro"]):
        r = run(*cmd)
        assert r.returncode == 0, (cmd, r.stdout[-1500:], r.stderr[-1500:])
    before = (repo / "data/dataset/manifest.json").read_bytes()
    r = run("dvc", "push")
    assert r.returncode == 0, r.stderr[-2000:]
    assert storage.list_files(f"{s3_bucket}/dvcstore")
    shutil.rmtree(repo / "data" / "dataset")
    shutil.rmtree(repo / ".dvc" / "cache")
    r = run("dvc", "pull")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (repo / "data/dataset/manifest.json").read_bytes() == before


def test_batch_generate_local_inputs_by_content_and_own_prefixes_refused(harness, onnx_model, s3_bucket, tmp_path,
                                                                          monkeypatch):
    """Local inputs have no ETag: a same-size edit must still be a new version. Keys under the
    flow's own _state/ and _runs/ are never inputs."""
    from flows.generate import BatchGenerateFailed, batch_generate

    monkeypatch.setenv("OBF_CACHE", str(tmp_path / "cache"))
    reg = f"{s3_bucket}/models"
    publish(onnx_model, reg, "obf")
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "a.txt").write_text("first version\n")
    (inp / "b.txt").write_text("another file\n")
    kw = dict(input_url=str(inp), output_url=str(out), registry=reg, max_bytes=16)
    assert batch_generate(**kw)["ok"] == 2
    (inp / "a.txt").write_text("FIRST VERSION\n")  # same size, new content
    res = batch_generate(**kw)
    assert (res["ok"], res["skipped"]) == (1, 1)
    assert (out / "a.txt.txt").read_text().startswith("FIRST VERSION")
    (inp / "_state").mkdir()
    (inp / "_state" / "x.txt").write_text("looks like bookkeeping\n")
    with pytest.raises(BatchGenerateFailed, match="1 of 3"):
        batch_generate(**kw)
    failed = [i for m in _manifests(str(out)) for i in m["inputs"] if i["status"] == "failed"]
    assert failed and failed[0]["input"] == "_state/x.txt" and "bookkeeping" in failed[0]["error"]
    with pytest.raises(ValueError, match="bookkeeping"):
        batch_generate(**{**kw, "input_url": str(out / "_runs")})


def test_batch_generate_refuses_bad_runs_before_any_work_and_an_empty_inbox_is_nothing_to_do(harness, onnx_model,
                                                                                            s3_bucket):
    """Bad run settings fail the run before the model is fetched or an input listed (a batch size of
    -1 used to submit nothing and end Completed); a drained S3 inbox (no object left, so no prefix)
    is a run with nothing to do, not a failure every night; an input over the size cap fails from
    its listed size, without being downloaded."""
    from flows.generate import BatchGenerateFailed, batch_generate

    reg, inp, out = f"{s3_bucket}/models", f"{s3_bucket}/in", f"{s3_bucket}/out"
    publish(onnx_model, reg, "obf")
    kw = dict(input_url=inp, output_url=out, registry=reg, max_bytes=16)
    for bad, match in (({"batch_size": 0}, "batch_size"), ({"batch_size": -1}, "batch_size"),
                       ({"max_input_bytes": 0}, "max_input_bytes"), ({"claim_ttl_s": 0}, "claim_ttl_s"),
                       ({"provider": "gpu"}, "provider"), ({"precision": "bf16"}, "precision"),
                       ({"output_url": "s3:/obf-outbox"}, "mistyped URL"),
                       ({"input_url": f"{out}/_claims/x"}, "bookkeeping")):
        with pytest.raises((ValueError, storage.StorageError), match=match):
            batch_generate(**{**kw, **bad})
    with pytest.raises(storage.NotFoundError):
        batch_generate(**{**kw, "input_url": "s3://obf-no-such-bucket-here/in"})  # no bucket: a typo, not empty
    assert not storage.exists(out)  # nothing written by the refused runs
    res = batch_generate(**kw)
    assert (res["ok"], res["skipped"], res["failed"]) == (0, 0, 0)
    storage.write_bytes_atomic(f"{inp}/a.txt", b"hello\n")
    storage.write_bytes_atomic(f"{inp}/big.bin", b"x" * 5000)
    with pytest.raises(BatchGenerateFailed, match="1 of 2"):
        batch_generate(**{**kw, "max_input_bytes": 1000})
    failed = [i for m in _manifests(out) for i in m["inputs"] if i["status"] == "failed"]
    assert [(i["input"], i["error"]) for i in failed] == [("big.bin", "input is 5000 bytes, over the cap of 1000")]
    # nothing obf did not write is written over: an output prefix holding others' files, or the
    # outputs of another input prefix (whose a.txt would share a.txt.txt with this one's)
    from flows.generate import OutputPrefixError

    with pytest.raises(OutputPrefixError, match="holds the outputs of"):
        batch_generate(**{**kw, "input_url": f"{s3_bucket}/other-in"})
    storage.write_bytes_atomic(f"{s3_bucket}/theirs/a.txt.txt", b"not obf's\n")
    with pytest.raises(OutputPrefixError, match="holds files batch-generate did not write"):
        batch_generate(**{**kw, "output_url": f"{s3_bucket}/theirs"})
    assert storage.list_files(f"{s3_bucket}/theirs")[0].key == "a.txt.txt"  # untouched, alone
    assert storage.read_bytes(f"{s3_bucket}/theirs/a.txt.txt") == b"not obf's\n"


def test_a_state_listing_that_fails_fails_the_run_instead_of_redoing_everything(onnx_model, s3_bucket, monkeypatch):
    """Only "no state yet" means nothing is done; a listing that fails otherwise (here an injected
    permission error on _state/) must not read as "nothing done"."""
    from flows.generate import list_task

    real = storage.list_files

    def failing(url):
        if "/_state/" in url:
            raise storage.StorageError(f"{url}: permission denied (injected)")
        return real(url)

    storage.write_bytes_atomic(f"{s3_bucket}/in/a.txt", b"hello\n")
    assert list_task.fn(f"{s3_bucket}/in", f"{s3_bucket}/out", "v0001")[1] == set()  # not there yet: fine
    monkeypatch.setattr(storage, "list_files", failing)
    with pytest.raises(storage.StorageError, match="permission denied"):
        list_task.fn(f"{s3_bucket}/in", f"{s3_bucket}/out", "v0001")


def test_two_runs_started_at_once_generate_each_input_once(harness, onnx_model, s3_bucket, tmp_path):
    """A scheduled run starting while a manual one goes on, on one output prefix: two processes,
    started together, walk the same inputs in the same order one at a time. Claims taken with
    conditional writes let exactly one of them make each input; every state record is its maker's."""
    from prefect.settings import PREFECT_API_URL

    reg, inp, out = f"{s3_bucket}/models", f"{s3_bucket}/in", f"{s3_bucket}/out"
    publish(onnx_model, reg, "obf")
    names = [f"doc{i:02d}.txt" for i in range(16)]
    for i, n in enumerate(names):
        storage.write_bytes_atomic(f"{inp}/{n}", f"document {i}\n".encode() * 30)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OBF_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from prefect.task_runners import ThreadPoolTaskRunner\n"
            "from flows.generate import batch_generate\n"
            "flow = batch_generate.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))\n"
            f"flow(input_url={inp!r}, output_url={out!r}, registry={reg!r}, max_bytes=400, batch_size=1)\n")
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True) for _ in range(2)]
    try:
        for r in runs:
            _, err = r.communicate(timeout=300)
            assert r.returncode == 0, err[-2000:]
    finally:
        for r in runs:
            if r.poll() is None:
                os.killpg(r.pid, signal.SIGKILL)
                r.wait()
    manifests = _manifests(out)
    made = [{i["input"] for i in m["inputs"] if i["status"] == "ok"} for m in manifests]
    assert len(made) == 2 and not made[0] & made[1] and made[0] | made[1] == set(names)  # each input once
    assert _outputs(out) == sorted(f"{n}.txt" for n in names)
    records = [json.loads(storage.read_bytes(e.url)) for e in storage.list_files(f"{out}/_state")]
    assert sorted(r["input"] for r in records) == names
    with pytest.raises(storage.StorageError):
        storage.list_files(f"{out}/_claims")  # every claim released


@pytest.fixture
def faulty_s3(s3_server, s3_bucket, monkeypatch):
    """The bucket reached through a seeded fault-injecting proxy (tests/s3_faults.py): ~11% of S3
    requests fail as 503 SlowDown, 500 after the request took effect, or a dropped connection."""
    import s3fs

    from .s3_faults import FaultProxy

    proxy = FaultProxy(s3_server, rate=0.11, seed=1234)
    proxy.enabled = False  # set-up goes through clean; the test turns faults on
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    s3fs.S3FileSystem.clear_instance_cache()
    yield proxy
    proxy.close()
    s3fs.S3FileSystem.clear_instance_cache()


def test_two_batches_racing_for_the_same_inputs_make_each_once(onnx_model, s3_bucket, tmp_path, monkeypatch):
    """The claim protocol itself, without process start-up times in the way: two generate-batch
    tasks of two runs get the same inputs at the same moment; each input is made by exactly one
    (without claims both would pass the "no state yet" check and make every input)."""
    import threading

    from flows.generate import generate_batch

    monkeypatch.setenv("OBF_CACHE", str(tmp_path / "cache"))
    reg, inp, out = f"{s3_bucket}/models", f"{s3_bucket}/in", f"{s3_bucket}/out"
    publish(onnx_model, reg, "obf")
    _, version = resolve(reg, "obf", cache_dir=tmp_path / "cache")
    for i in range(12):
        storage.write_bytes_atomic(f"{inp}/doc{i:02d}.txt", f"document {i}\n".encode() * 30)
    entries = storage.list_files(inp)
    start, results = threading.Barrier(2), {}

    def run(run_id):
        start.wait()
        results[run_id] = generate_batch.fn(entries, (reg, "obf"), version, out, GenerateSettings(max_bytes=64),
                                            max_input_bytes=1 << 20, provider="cpu", run_id=run_id)

    threads = [threading.Thread(target=run, args=(r,)) for r in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    made = {r: {s["input"] for s in res if s["status"] == "ok"} for r, res in results.items()}
    assert len(made) == 2 and not made["run-a"] & made["run-b"]
    assert made["run-a"] | made["run-b"] == {e.key for e in entries}
    records = [json.loads(storage.read_bytes(e.url)) for e in storage.list_files(f"{out}/_state")]
    assert sorted(r["input"] for r in records) == sorted(e.key for e in entries)


def test_flows_complete_under_s3_faults_with_every_output_once(harness, faulty_s3, s3_bucket, tmp_path, monkeypatch):
    from flows.generate import batch_generate
    from flows.train import train_flow

    monkeypatch.setenv("OBF_CACHE", str(tmp_path / "cache"))
    upload(RAW, f"{s3_bucket}/raw", MIXED)
    names = [f"doc{i:02d}.txt" for i in range(12)]
    for i, n in enumerate(names):
        storage.write_bytes_atomic(f"{s3_bucket}/in/{n}", f"line {i}\n".encode() * 20)
    faulty_s3.enabled = True
    trained = train_flow(source=f"{s3_bucket}/raw", registry=f"{s3_bucket}/models", name="f", params=None,
                         overrides=[*TINY, "ingest.val_fraction=0.3"], workdir=str(tmp_path / "work"))
    res = batch_generate(input_url=f"{s3_bucket}/in", output_url=f"{s3_bucket}/out", registry=f"{s3_bucket}/models",
                         name="f", max_bytes=24, batch_size=3)
    again = batch_generate(input_url=f"{s3_bucket}/in", output_url=f"{s3_bucket}/out", registry=f"{s3_bucket}/models",
                           name="f", max_bytes=24, batch_size=3)
    faulty_s3.enabled = False
    assert sum(faulty_s3.faults.values()) >= 10, faulty_s3.faults  # the faults really happened
    assert trained["version"] == "v0001"
    assert (res["ok"], res["failed"]) == (len(names), 0) and (again["ok"], again["skipped"]) == (0, len(names))
    assert _outputs(f"{s3_bucket}/out") == sorted(f"{n}.txt" for n in names)  # every output exactly once
    records = [json.loads(storage.read_bytes(e.url)) for e in storage.list_files(f"{s3_bucket}/out/_state")]
    assert sorted(r["input"] for r in records) == names
    assert [v for v in storage.list_files(f"{s3_bucket}/models/f") if v.key.endswith("manifest.json")][0].key == \
        "v0001/manifest.json"
    path, _ = resolve(f"{s3_bucket}/models", "f", cache_dir=tmp_path / "cache2")  # whole and verified
