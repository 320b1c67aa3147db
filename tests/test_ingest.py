"""Ingest on real files: bad inputs, determinism, split stability, S3 == local, CLI errors."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from obf.core.config import IngestConfig
from obf.core.storage import write_bytes_atomic
from obf.data.dataset import DataError, Dataset
from obf.data.ingest import ingest

from .conftest import BIN, RAW, ROOT

CFG = IngestConfig(max_file_bytes=1_000_000)


def _copy_some(dst, names):
    for n in names:
        (dst / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(RAW / n, dst / n)


SOME = ["text/GPL-3.txt", "text/heapq.py", "image/coffee.jpg", "image/text.gif", "audio/numbers.wav",
        "audio/hola.mp3", "video/hubble_pan.y4m", "video/chelsea_pan.avi", "binary/true.elf", "binary/eeg.dat"]


def test_bad_inputs_are_rejected_for_the_right_reason(tmp_path):
    src = tmp_path / "src"
    _copy_some(src, ["text/heapq.py", "image/coffee.jpg"])
    (src / "empty.txt").write_bytes(b"")
    (src / "big.bin").write_bytes(os.urandom(CFG.max_file_bytes + 1))
    os.symlink(src / "does-not-exist", src / "broken-link")
    os.mkfifo(src / "a-fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "a-socket"))
    # An entry that cannot be read even by root: a write-only sysfs attribute.
    # As a normal user, a chmod 000 file does the same.
    if os.geteuid() == 0:
        os.symlink("/sys/bus/pci/rescan", src / "unreadable")
    else:
        (src / "unreadable").write_bytes(b"secret")
        os.chmod(src / "unreadable", 0)
    fd = os.open(os.fsencode(str(src)) + b"/bad-\xff\xfe-name.txt", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"hello")
    os.close(fd)
    (src / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    (src / "dup-of-heapq.py").write_bytes((RAW / "text/heapq.py").read_bytes())
    try:
        m = ingest(str(src), tmp_path / "ds", CFG, progress=False)
    finally:
        sock.close()
    reasons = {r["source"]: r["reason"] for r in m["rejected"]}
    assert reasons.pop("empty.txt") == "empty file"
    assert reasons.pop("big.bin").startswith("larger than ingest.max_file_bytes")
    assert reasons.pop("broken-link") == "broken symlink"
    assert reasons.pop("a-fifo") == "not a regular file (FIFO)"
    assert reasons.pop("a-socket") == "not a regular file (socket)"
    assert "permission denied" in reasons.pop("unreadable")
    assert reasons.pop("fake.png").startswith("image does not decode")
    bad_name = [k for k in reasons if k.startswith("bad-")]
    assert len(bad_name) == 1 and reasons.pop(bad_name[0]) == "file name is not valid UTF-8"
    assert reasons == {}
    assert m["files"] == 2 and m["duplicates"] == [{"source": "text/heapq.py", "same_as": "dup-of-heapq.py"}]


def test_manifest_contract_and_readback(tmp_path):
    src = tmp_path / "src"
    _copy_some(src, SOME)
    m = ingest(str(src), tmp_path / "ds", CFG, progress=False)
    assert set(m) >= {"files", "bytes", "by_modality", "splits", "rejected"}
    assert set(m["by_modality"]) == {"text", "image", "audio", "video", "binary"}
    assert all(v["files"] == 2 for v in m["by_modality"].values())
    assert sum(v["files"] for v in m["splits"].values()) == m["files"] == 10
    assert sum(v["bytes"] for v in m["splits"].values()) == m["bytes"]
    ds = Dataset(tmp_path / "ds")
    text = [r for r in ds.records if r.key == "text/GPL-3.txt"][0]
    assert ds.file_bytes(text).tobytes() == (RAW / "text/GPL-3.txt").read_bytes()
    assert {r.format for r in ds.select(modality="image")} == {"bmp"}
    assert ds.file_bytes(ds.select(modality="audio")[0])[:4].tobytes() == b"RIFF"
    assert isinstance(ds.file_bytes(text), np.memmap)


def test_same_source_twice_gives_identical_manifests(tmp_path):
    src = tmp_path / "src"
    _copy_some(src, SOME)
    ingest(str(src), tmp_path / "a", CFG, progress=False)
    ingest(str(src), tmp_path / "b", CFG, progress=False)
    for name in ("manifest.json", "index.jsonl", "shards/000000.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_adding_a_file_moves_no_existing_file(tmp_path):
    src = tmp_path / "src"
    _copy_some(src, SOME)
    ingest(str(src), tmp_path / "a", CFG, progress=False)
    _copy_some(src, ["text/difflib.py"])
    ingest(str(src), tmp_path / "b", CFG, progress=False)
    before = {r.key: r.split for r in Dataset(tmp_path / "a").records}
    after = {r.key: r.split for r in Dataset(tmp_path / "b").records}
    assert set(after) - set(before) == {"text/difflib.py"}
    assert all(after[k] == v for k, v in before.items())


def test_s3_ingest_equals_local(tmp_path, s3_bucket):
    src = tmp_path / "src"
    _copy_some(src, SOME)
    (src / "empty.txt").write_bytes(b"")
    for p in sorted(src.rglob("*")):
        if p.is_file():
            write_bytes_atomic(f"{s3_bucket}/raw/{p.relative_to(src).as_posix()}", p.read_bytes())
    local = ingest(str(src), tmp_path / "local", CFG, progress=False)
    remote = ingest(f"{s3_bucket}/raw", tmp_path / "remote", CFG, progress=False)
    assert local == remote
    for name in ("manifest.json", "index.jsonl", "shards/000000.bin"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "remote" / name).read_bytes()


def test_missing_or_empty_source_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        ingest(str(tmp_path / "nope"), tmp_path / "ds", CFG, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no file"):
        ingest(str(tmp_path / "empty"), tmp_path / "ds", CFG, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def _obf(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "obf.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_ingest_and_errors(tmp_path):
    src = tmp_path / "src"
    _copy_some(src, SOME[:3])
    r = _obf("ingest", str(src), "--out", str(tmp_path / "ds"), "-q", "--set", "ingest.val_fraction=0.5")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ds/manifest.json").read_text())["ingest"]["val_fraction"] == 0.5
    r = _obf("ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "ds2"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    assert not (tmp_path / "ds2").exists()
    r = _obf("ingest", str(src), "--out", str(tmp_path / "ds3"), "--set", "ingest.val_fraction=7")
    assert r.returncode == 1 and "ingest.val_fraction" in r.stderr and not (tmp_path / "ds3").exists()
    assert _obf("ingest", "--help").returncode == 0


@pytest.mark.parametrize("canonicalize", [False, True])
def test_worker_processes_and_threads_build_the_same_dataset(tmp_path, monkeypatch, canonicalize):
    """Local sources are stored by a pool of workers (threads for plain files, processes to
    canonicalise); remote ones by `_load_all`'s threads. Both paths must give byte-identical
    datasets (duplicates and rejects included)."""
    from obf.data import ingest as ingest_module

    src = tmp_path / "src"
    _copy_some(src, SOME)
    shutil.copy(RAW / "text/heapq.py", src / "dup.py")
    shutil.copy(RAW / "image/coffee.jpg", src / "audio/aaa.jpg")  # an early duplicate: most files move up
    (src / "big.bin").write_bytes(os.urandom(CFG.max_file_bytes + 1))
    cfg = IngestConfig(max_file_bytes=CFG.max_file_bytes, canonicalize=canonicalize, shard_bytes=200_000)
    if sys.platform == "linux":
        pool = ingest_module._local_pool(cfg)
        assert pool is not None
        pool.shutdown()
    ingest(str(src), tmp_path / "procs", cfg, progress=False)
    monkeypatch.setattr(ingest_module, "_local_pool", lambda _cfg: None)
    ingest(str(src), tmp_path / "threads", cfg, progress=False)
    a, b = tmp_path / "procs", tmp_path / "threads"
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert len([n for n in names if n.startswith("shards/")]) > 1  # several shards were filled
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["duplicates"] == [{"source": "image/coffee.jpg", "same_as": "audio/aaa.jpg"},
                                      {"source": "text/heapq.py", "same_as": "dup.py"}]  # the first listed is kept
    ds = Dataset(a)
    for r in ds.records:  # every file sits, whole, where the index says
        src_key = {"audio/aaa.jpg": "image/coffee.jpg", "dup.py": "text/heapq.py"}.get(r.key, r.key)
        if not canonicalize:
            assert ds.file_bytes(r).tobytes() == (RAW / src_key).read_bytes(), r.key
    assert [r["source"] for r in manifest["rejected"]] == ["big.bin"]


def _skip_without_worker_processes() -> None:
    """Canonicalising ingest runs in worker processes only where more than one core is usable and a
    fork server exists; elsewhere the tests about those processes have nothing to check."""
    from obf.data import ingest as ingest_module

    pool = ingest_module._local_pool(dataclasses.replace(CFG, canonicalize=True))
    if not isinstance(pool, ProcessPoolExecutor):
        pytest.skip("no worker processes here (one usable core, or no fork server)")
    pool.shutdown()


def test_worker_processes_inherit_nothing_from_the_callers_memory(tmp_path, monkeypatch):
    """Canonicalising workers come from a fork server, not from forking the caller, so no lock that
    one of the caller's threads holds (torch's, libav's, a test server's) reaches them held forever.
    A function replaced in the caller's memory stands in for such state: a fork would carry it."""
    from obf.data import ingest as ingest_module

    cfg = dataclasses.replace(CFG, canonicalize=True)
    _skip_without_worker_processes()

    def poisoned(*_args, **_kwargs):
        raise RuntimeError("a worker ran in a copy of the caller's memory")

    monkeypatch.setattr(ingest_module, "load_file", poisoned)
    _copy_some(tmp_path / "src", SOME[:3])
    ingest(str(tmp_path / "src"), tmp_path / "ds", cfg, progress=False)
    assert len(Dataset(tmp_path / "ds").records) == 3


def test_a_script_without_a_main_guard_gets_a_one_line_reason(tmp_path):
    """Workers import the main module again (as with every start method but `fork`): a script
    that calls ingest at top level breaks them, and hears why instead of a pool's traceback."""
    _skip_without_worker_processes()
    _copy_some(tmp_path / "src", SOME[:3])
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from obf.core.config import IngestConfig\n"
        "from obf.data.ingest import ingest\n"
        f"ingest({str(tmp_path / 'src')!r}, {str(tmp_path / 'ds')!r}, IngestConfig(canonicalize=True),"
        " progress=False)\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert 'DataError: a worker process of ingest died' in run.stderr
    assert 'if __name__ == "__main__":' in run.stderr.splitlines()[-1]
    assert not (tmp_path / "ds").exists()


def test_a_file_that_changes_after_hashing_is_an_error(tmp_path):
    from obf.data.ingest import _worker_pool
    from obf.data.shards import Copier, _copy_batch

    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 1000)
    shard = tmp_path / "shard.bin"
    shard.write_bytes(b"")
    assert _copy_batch([(str(f), str(shard), 0, 1000)]) == [True]
    assert shard.read_bytes() == b"x" * 1000
    assert _copy_batch([(str(f), str(shard), 1000, 999)]) == [False]  # it "grew" after it was hashed
    with _worker_pool() as pool, pytest.raises(DataError, match="f.bin: changed while being ingested"):
        copier = Copier(pool)
        copier.add("f.bin", (str(f), str(shard), 0, 1200))
        copier.finish()


def test_one_pass_store_refuses_a_file_whose_size_changed(tmp_path):
    """Plain local ingest writes each file into a range sized from the listing: a file that grew
    or shrank since is an error, and a grown one never writes past its range."""
    from obf.core import storage
    from obf.data.ingest import _local_pool, _store_chunk, _store_local
    from obf.data.shards import ShardWriter

    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 1000)
    shard = tmp_path / "shard.bin"
    shard.write_bytes(b"\0" * 1000)
    size, digest, sniffed, error = _store_chunk([(str(f), str(shard), 0, 999)])[0]
    assert size > 999 and error is None
    assert shard.read_bytes() == b"x" * 999 + b"\0"  # nothing past the range
    entry = storage.Entry(key="f.bin", url=str(f), size=1200)  # listed before it shrank
    pool = _local_pool(dataclasses.replace(CFG, canonicalize=False))
    assert pool is not None  # the pool plain local ingest uses
    with pool, pytest.raises(DataError, match="f.bin: changed while being ingested"):
        list(_store_local([entry], ShardWriter(tmp_path / "ds", 1 << 20, 1200), pool))


def test_copy_falls_back_where_copy_file_range_is_refused(tmp_path, monkeypatch):
    """Filesystems or kernels without copy_file_range (EXDEV, ENOSYS, ...) get a pread/pwrite copy."""
    import errno

    from obf.data.shards import _copy_batch

    def refuse(*_args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    f = tmp_path / "f.bin"
    payload = os.urandom(3 << 20)  # several pread chunks
    f.write_bytes(payload)
    shard = tmp_path / "shard.bin"
    shard.write_bytes(b"head")
    assert _copy_batch([(str(f), str(shard), 4, len(payload))]) == [True]
    assert shard.read_bytes() == b"head" + payload


def test_icons_that_differ_only_in_alpha_ingest_as_two_files(tmp_path):
    """Canonical images keep transparency: same colour values, different alpha -> two files, each
    a 32-bit BMP whose alpha Pillow reads back."""
    import io

    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for name, alpha in (("solid.png", 255), ("clear.png", 0), ("half.png", 128)):
        im = Image.new("RGBA", (24, 24), (30, 120, 200, 255))
        for x in range(6, 18):
            im.putpixel((x, x), (30, 120, 200, alpha))
        im.save(src / name)
    m = ingest(str(src), tmp_path / "ds", CFG, progress=False)
    assert m["files"] == 3 and not m.get("duplicates")
    ds = Dataset(tmp_path / "ds")
    alphas = {}
    for r in ds.records:
        with Image.open(io.BytesIO(ds.file_bytes(r).tobytes())) as im:
            alphas[r.key] = im.convert("RGBA").getpixel((10, 10))[3]
    assert alphas == {"solid.png": 255, "clear.png": 0, "half.png": 128}


def test_ingest_never_replaces_what_it_did_not_write(tmp_path):
    """`obf ingest data/raw --out data` used to delete data/raw: an output dir that holds, equals or
    lies inside the source, or that another program wrote, is refused and nothing is touched."""
    src = tmp_path / "data" / "raw"
    _copy_some(src, SOME[:2])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    def run(out):
        return subprocess.run([sys.executable, "-m", "obf.cli", "ingest", str(src), "--out", str(out), "-q"],
                              capture_output=True, text=True)

    for out, why in ((tmp_path / "data", "holds the input"), (src, "is the input"), (src / "text", "lies inside")):
        r = run(out)
        assert r.returncode == 1 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = run(mine)
    assert r.returncode == 1 and "not written by obf ingest" in r.stderr
    mine_files = [mine.relative_to(tmp_path), (mine / "notes.txt").relative_to(tmp_path)]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted([*before, *mine_files])
    ds = tmp_path / "ds"
    assert run(ds).returncode == 0 and run(ds).returncode == 0  # its own output: replaced
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty").returncode == 0


def test_one_picture_in_two_formats_is_one_file(tmp_path):
    """Dedupe (and so the split) goes by the canonical bytes the model sees: a PNG and a lossless
    TIFF of the same pixels become the same BMP and are stored once."""
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    with Image.open(RAW / "image/astronaut.png") as im:
        small = im.convert("RGB").resize((40, 40))
    small.save(src / "a.png")
    small.save(src / "b.tif")
    m = ingest(str(src), tmp_path / "ds", CFG, progress=False)
    assert m["files"] == 1 and m["duplicates"] == [{"source": "b.tif", "same_as": "a.png"}]
    off = ingest(str(src), tmp_path / "raw", IngestConfig(canonicalize=False), progress=False)
    assert off["files"] == 2  # stored as they are, they are two different files


def _same_dataset(a: Dataset, b: Dataset) -> None:
    """The same records (key, split, modality, format, length, sha256, pair) and bytes; shard
    placement may differ."""

    def rows(ds):
        return [(r.key, r.split, r.modality, r.format, r.length, r.sha256, r.pair) for r in ds.records]

    assert rows(a) == rows(b)
    for ra, rb in zip(a.records, b.records):
        assert bytes(a.file_bytes(ra)) == bytes(b.file_bytes(rb))


def _mixed_source(tmp_path):
    """Files of every modality, a pair, a duplicate of an earlier file and an empty file."""
    src = tmp_path / "src"
    _copy_some(src, SOME)
    shutil.copy(RAW / "text/heapq.py", src / "zz_copy_of_heapq.py")  # a duplicate in a later part
    shutil.copy(RAW / "text/heapq.py", src / "text" / "heapq_again.py")  # and one in the same part
    (src / "empty.bin").write_bytes(b"")
    (src / "inputs").mkdir()
    (src / "targets").mkdir()
    (src / "inputs" / "a.txt").write_bytes(b"hello, pairs\n")
    (src / "targets" / "a.txt").write_bytes(b"HELLO, PAIRS\n")
    return src


def test_dask_ingest_to_s3_is_the_local_ingest_and_a_rerun_replaces_it(tmp_path, s3_bucket):
    """Workers of a real Dask cluster (two processes) read, canonicalise, hash and write shard
    parts straight to S3; the driver's dataset is the one a local ingest makes, record by record
    and byte by byte, with the same duplicates and rejections. A rerun into the same URL replaces
    it (old shards removed only after the new manifest), and a URL holding others' files is refused."""
    from distributed import LocalCluster

    from obf.core.storage import StorageError, list_files
    from obf.data.dataset import local_dataset

    src = _mixed_source(tmp_path)
    cfg = IngestConfig(max_file_bytes=1_000_000, shard_bytes=200_000)  # several parts, several shards
    local = ingest(str(src), tmp_path / "local", cfg, progress=False)
    url = f"{s3_bucket}/ds"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        first = ingest(str(src), url, cfg, progress=False, dask=cluster.scheduler_address)
        shards_before = {e.key for e in list_files(f"{url}/shards")}
        again = ingest(str(src), url, cfg, progress=False, dask=cluster.scheduler_address)
    for m in (first, again):
        assert {k: m[k] for k in ("files", "bytes", "duplicates", "rejected", "pairs", "splits")} == {
            k: local[k] for k in ("files", "bytes", "duplicates", "rejected", "pairs", "splits")
        }
    assert len(local["duplicates"]) == 2 and [r["source"] for r in local["rejected"]] == ["empty.bin"]
    shards_after = {e.key for e in list_files(f"{url}/shards")}
    assert shards_after and not shards_after & shards_before  # the first run's shards went, after the switch
    _same_dataset(Dataset(tmp_path / "local"), Dataset(local_dataset(url, tmp_path / "cache")))

    foreign = f"{s3_bucket}/theirs"
    write_bytes_atomic(f"{foreign}/notes.txt", b"not obf's")
    with pytest.raises(StorageError, match="did not write"):
        ingest(str(src), foreign, cfg, progress=False)


def test_dask_ingest_into_a_folder_its_workers_do_not_share_says_so(tmp_path, monkeypatch):
    """Workers on other machines write a local destination's shards to their own disks: the driver
    used to write the index and manifest anyway, and training found the shards missing. A worker
    here (a thread of a real cluster) writes its shards elsewhere, as one on another machine would."""
    from distributed import LocalCluster

    import obf.data.ingest_dask as on_dask
    from obf.core.storage import StorageError

    real, elsewhere = on_dask.ingest_part, tmp_path / "the-workers-disk"
    monkeypatch.setattr(on_dask, "ingest_part",
                        lambda entries, cfg, url: real(entries, cfg, str(elsewhere / os.path.basename(url))))
    src = _mixed_source(tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(StorageError, match="where this process cannot see it"):
            ingest(str(src), tmp_path / "ds", CFG, progress=False, dask=cluster.scheduler_address)
    assert any(elsewhere.iterdir()) and not (tmp_path / "ds").exists()


def test_local_ingest_to_an_s3_url_is_the_local_ingest(tmp_path, s3_bucket):
    from obf.data.dataset import local_dataset

    src = _mixed_source(tmp_path)
    ingest(str(src), tmp_path / "local", CFG, progress=False)
    ingest(str(src), f"{s3_bucket}/ds", CFG, progress=False)
    _same_dataset(Dataset(tmp_path / "local"), Dataset(local_dataset(f"{s3_bucket}/ds", tmp_path / "cache")))


def _slow_source(src, n: int = 48):
    """`_mixed_source` plus `n` distinct 2-second 44.1 kHz stereo WAVs: resampling each to the
    dataset's audio takes a worker tens of milliseconds, so a Dask ingest of it runs for seconds."""
    import wave

    t = np.arange(2 * 44100) / 44100
    noise = np.random.default_rng(7).normal(0, 400, t.size)
    (src / "music").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x = (np.sin(2 * np.pi * (220 + 7 * i) * t) * 6000 + noise).astype("<i2")
        with wave.open(str(src / "music" / f"tone{i:03d}.wav"), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(44100)
            w.writeframes(np.stack([x, x], 1).tobytes())
    return src


def _wait(check, timeout: float, what: str):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_dask_ingest_survives_a_killed_worker_and_a_killed_driver(tmp_path, s3_bucket, dask_cluster):
    """Real `dask scheduler` / `dask worker` processes, writing to moto S3.

    1. A worker is SIGKILLed while it runs an ingest task: the task runs again on the other worker
       and the dataset is the one a local ingest makes.
    2. Over that dataset, a second `obf ingest --dask` (more files) is SIGKILLed once its workers
       have written shards: the URL still holds the first dataset, whole and verified (sha256 of
       every file). A rerun completes, is the local ingest of the new source, and leaves no shard
       that its index does not name.
    3. The last worker is killed mid-task, with `distributed.scheduler.no-workers-timeout` set: the
       ingest ends with a one-line error instead of waiting, and the URL holds the last dataset."""
    import threading

    from distributed import Client

    from obf.core.params import load_params
    from obf.core.storage import StorageError, list_files
    from obf.data.dataset import local_dataset
    from obf.data.shards import existing_shards

    cfg = dataclasses.replace(load_params(ROOT / "params.yaml").ingest, shard_bytes=300_000)
    src = _slow_source(_mixed_source(tmp_path))
    url = f"{s3_bucket}/ds"
    client = Client(dask_cluster.address, timeout=60)
    try:
        # 1. a worker dies mid-task
        done: dict = {}
        driver = threading.Thread(target=lambda: done.update(
            m=ingest(str(src), url, cfg, progress=False, dask=dask_cluster.address)))
        driver.start()
        busy = _wait(lambda: [a for a, keys in client.processing().items() if keys], 60, "a busy worker")
        name = client.scheduler_info()["workers"][busy[0]]["name"]
        assert driver.is_alive()
        dask_cluster.kill(str(name))
        driver.join(timeout=300)
        assert "m" in done, "the ingest did not finish after a worker died"
        ingest(str(src), tmp_path / "local", cfg, progress=False)
        _same_dataset(Dataset(tmp_path / "local"), Dataset(local_dataset(url, tmp_path / "cache1")))

        # 2. the driver dies after its workers wrote shards
        before = {e.key for e in list_files(f"{url}/shards")}
        src2 = _slow_source(tmp_path / "src2", n=64)
        shutil.copytree(src, src2, dirs_exist_ok=True)
        cmd = [str(BIN / "obf"), "ingest", str(src2), "--out", url, "--dask", dask_cluster.address, "-q",
               "--set", "ingest.shard_bytes=300000"]
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        _wait(lambda: {e.key for e in list_files(f"{url}/shards")} - before or proc.poll() is not None, 120,
              "a new shard")
        assert proc.poll() is None, "the ingest ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait(lambda: not any(client.processing().values()), 120, "the dead run's tasks to end")
        assert {e.key for e in list_files(f"{url}/shards")} - before  # it did leave shards behind
        _same_dataset(Dataset(tmp_path / "local"), Dataset(local_dataset(url, tmp_path / "cache2")))

        assert subprocess.run(cmd, cwd=ROOT).returncode == 0
        ingest(str(src2), tmp_path / "local2", cfg, progress=False)
        _same_dataset(Dataset(tmp_path / "local2"), Dataset(local_dataset(url, tmp_path / "cache3")))
        named = {r.shard for r in Dataset(local_dataset(url, tmp_path / "cache3")).records}
        assert set(existing_shards(f"{url}/shards")) == named

        # 3. no worker left
        import dask

        errors: list[Exception] = []

        def doomed() -> None:
            try:
                ingest(str(src), url, cfg, progress=False, dask=dask_cluster.address)
            except StorageError as err:
                errors.append(err)

        with dask.config.set({"distributed.scheduler.no-workers-timeout": "2s"}):
            driver = threading.Thread(target=doomed, daemon=True)  # a hung one must not hold pytest
            driver.start()
            busy = _wait(lambda: [a for a, keys in client.processing().items() if keys], 60, "a busy worker")
            assert len(client.nthreads()) == 1
            dask_cluster.kill(str(client.scheduler_info()["workers"][busy[0]]["name"]))
            driver.join(timeout=60)
        assert not driver.is_alive() and len(errors) == 1 and "no workers for" in str(errors[0])
        assert "\n" not in str(errors[0])
        _same_dataset(Dataset(tmp_path / "local2"), Dataset(local_dataset(url, tmp_path / "cache4")))
    finally:
        client.close()


def test_dask_ingest_with_no_scheduler_says_so_in_one_line(tmp_path):
    """A scheduler that never answers ends the ingest with one line once Dask's own connect
    timeout (`distributed.comm.timeouts.connect`) has passed, and leaves no output."""
    with socket.socket() as sock:  # a port no one listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    src = tmp_path / "src"
    _copy_some(src, ["text/heapq.py"])
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    run = subprocess.run([str(BIN / "obf"), "ingest", str(src), "--out", str(tmp_path / "ds"), "--dask", address],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0 and not (tmp_path / "ds").exists()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"dask scheduler {address}: cannot connect" in lines[0], run.stderr


def test_dask_ingest_with_a_malformed_address_says_so_and_exits(tmp_path):
    """An address Dask cannot parse is named in one line before any client exists: a Client made
    from one raised a traceback and then held its process's exit forever (its `__del__` waited on
    a loop that never ran)."""
    src = tmp_path / "src"
    _copy_some(src, ["text/heapq.py"])
    for address in ("notanaddress", "tcp://host:port", "nonsense://host:1"):
        run = subprocess.run([str(BIN / "obf"), "ingest", str(src), "--out", str(tmp_path / "ds"), "--dask", address],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and not (tmp_path / "ds").exists()
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and f"dask scheduler {address!r}: not an address" in lines[0], run.stderr


def test_dask_parts_fit_the_cluster_and_a_failing_shard_write_is_the_tasks_error(tmp_path):
    """A listing is cut into about four parts of even work per worker thread, never with a crumb
    left over, each within a shard of input and half a file (16 MiB where the shard is held in memory until its
    PUT; a quarter of that for media to canonicalise, which cost more per byte); a source that
    fails to read is a reject, but a shard that cannot be written (a full disk) fails the task,
    which Dask then retries: it never turns into rejected files."""
    from obf.core.storage import Entry
    from obf.data.ingest_dask import _fill, _parts, part_cap

    mib = 1 << 20
    assert part_cap(64 * mib, in_memory=False) == 64 * mib  # a local shard streams to disk: a whole shard
    assert part_cap(64 * mib, in_memory=True) == 16 * mib  # a shard in a worker's memory stays small

    def listing(sizes: list[int], suffix: str = ".py") -> list[Entry]:
        return [Entry(key=f"f{i:05d}{suffix}", url=f"/nowhere/f{i:05d}", size=n) for i, n in enumerate(sizes)]

    def sizes_of(parts: list[list[Entry]]) -> list[int]:
        return [sum(e.size for e in p) for p in parts]

    rng = np.random.default_rng(0)
    sizes = [int(n) for n in rng.integers(1, 400_000, 2_600)]  # ~530 MB of files of up to 400 KB
    total = sum(sizes)
    for threads, want in ((1, 8), (2, 8), (4, 16), (0, 8)):  # 8: a 64 MiB shard at most; 0 threads: as 1
        parts = _parts(listing(sizes), threads, 64 * mib, True)
        assert [e.size for p in parts for e in p] == sizes  # every file once, in listing order
        assert len(parts) == want and all(abs(n - total / want) <= 400_000 for n in sizes_of(parts))
    few = sizes[:20]
    assert 2 <= len(_parts(listing(few), 2, 64 * mib, True)) == sum(few) // mib < 8  # parts of 1 MiB at least
    media = _parts(listing(sizes, ".WAV"), 2, 64 * mib, True)
    assert len(media) == -(-total // (16 * mib)) == 32 and max(sizes_of(media)) <= 16 * mib + 200_000  # a quarter
    assert len(_parts(listing(sizes, ".wav"), 2, 64 * mib, False)) == 8  # stored as they are: copies
    assert max(sizes_of(_parts(listing(sizes), 2, 16 * mib, True))) <= 16 * mib + 200_000
    assert [len(p) for p in _parts(listing([10 * mib, 1, 10 * mib]), 1, 4 * mib, True)] == [1, 1, 1]  # alone
    assert _parts([], 2, 64 * mib, True) == []

    src = tmp_path / "src"
    _copy_some(src, ["text/heapq.py", "binary/true.elf"])
    from obf.core.storage import list_files

    class Full:
        def tell(self) -> int:
            return 0

        def write(self, data) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        _fill(list_files(str(src)), CFG, Full())


def test_a_dask_part_in_a_local_folder_holds_its_kept_bytes_and_nothing_more(tmp_path):
    """A worker writing a local shard reserves its blocks up front, as a local ingest's writer does
    (`reserve_blocks`: the listed sizes), then trims what it did not use: the shard holds each kept
    content, back to back, and nothing after them, though a 16-bit 44.1 kHz recording shrinks to
    a fraction when canonicalised. A repeat in the part and an empty file leave nothing, and a part
    with nothing to keep leaves no shard."""
    import hashlib

    from obf.core.storage import list_files
    from obf.data.ingest_dask import ingest_part

    src = tmp_path / "src"
    _copy_some(src, ["audio/ciao.wav", "binary/true.elf", "text/heapq.py"])
    entries = list_files(str(src))
    shard = tmp_path / "000000.bin"
    out = ingest_part(entries, CFG, str(shard))
    assert [(e.key, offset) for e, (_, _, _, offset, _, _) in zip(entries, out)] == [
        ("audio/ciao.wav", 0), ("binary/true.elf", out[0][4]), ("text/heapq.py", out[0][4] + out[1][4])]
    data = shard.read_bytes()
    assert len(data) == sum(length for *_, length, _ in out) < sum(e.size for e in entries)
    assert [hashlib.sha256(data[at : at + n]).hexdigest() for _, _, _, at, n, _ in out] == [d for d, *_ in out]
    assert data[out[2][3] :] == (src / "text/heapq.py").read_bytes()

    text = (src / "text/heapq.py").read_bytes()
    (src / "again.py").write_bytes(text)
    (src / "empty.bin").write_bytes(b"")
    again, empty = (e for e in list_files(str(src)) if e.key in ("again.py", "empty.bin"))
    second = tmp_path / "000001.bin"
    assert [r[3:] for r in ingest_part([again, again, empty], CFG, str(second))] == [
        (0, len(text), None), (None, len(text), None), (None, 0, "empty file")]
    assert second.read_bytes() == text
    none = tmp_path / "000002.bin"
    assert ingest_part([empty], CFG, str(none)) == [(None, None, None, None, 0, "empty file")]
    assert not none.exists()


def test_a_url_dataset_whose_ingest_died_between_index_and_manifest_is_refused(tmp_path, s3_bucket):
    """On object storage the index and the manifest are two PUTs. An ingest killed between them
    leaves a new index beside the old manifest: readers refuse it with one line, and a rerun
    mends it."""
    from obf.data.dataset import local_dataset

    src = _mixed_source(tmp_path)
    url = f"{s3_bucket}/ds"
    ingest(str(src), url, CFG, progress=False)
    more = tmp_path / "more"
    shutil.copytree(src, more)
    (more / "extra.txt").write_bytes(b"one more file\n" * 40)
    ingest(str(more), tmp_path / "new", CFG, progress=False)
    write_bytes_atomic(f"{url}/index.jsonl", (tmp_path / "new" / "index.jsonl").read_bytes())  # the first PUT only
    with pytest.raises(DataError, match="interrupted; run `obf ingest` again") as err:
        local_dataset(url, tmp_path / "cache")
    assert "\n" not in str(err.value)
    ingest(str(more), url, CFG, progress=False)
    _same_dataset(Dataset(tmp_path / "new"), Dataset(local_dataset(url, tmp_path / "cache")))
