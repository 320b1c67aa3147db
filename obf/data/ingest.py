"""Ingest: raw files (a folder or any fsspec URL) -> a byte dataset (`obf.data.dataset` layout).

Ingest holds at most a few files in memory, never the dataset. Local folders: without
canonicalisation, threads read each file once, hashing every block and writing it to the file's
shard range (handed out in listing order before it is read; the gaps that duplicates leave are
closed at the end); with it, worker processes hash and canonicalise, and files stored unchanged
are copied into place by the kernel. Remote sources are worked by threads that read each file
once. All paths give byte-identical datasets. Dedupe and splits go by the sha256 of the stored
(canonical) bytes, the bytes the model sees, so adding files never moves existing ones and one
picture in two formats is one file.

Paired examples (for the `paired` task) are files under an `inputs/` folder whose relative name
also exists under a sibling `targets/` folder (or, else, whose name there differs only in its
extension, when one file alone matches), or the `{input, target}` lines of a `pairs.jsonl`
(keys relative to the source). Both files of a pair are stored as ordinary files too; files joined
by pairs share one split (`_link_pairs`), so a pair is never cut across splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from obf.core import storage
from obf.core.config import IngestConfig
from obf.core.system import usable_cpus
from obf.data.dataset import DataError, Record, build_manifest, split_of
from obf.data.ingest_dask import run as run_on_dask
from obf.data.ingest_remote import check_remote_output, remove_unused_shards, upload, write_index_and_manifest
from obf.data.loading import BLOCK, HEAD, Loaded, load_file
from obf.data.shards import Copier, ShardWriter, compact, existing_shards, on_shards, pwrite_all
from obf.formats.sniff import Sniffed, sniff

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def _store_file(
    path: str, dst: int, offset: int, size: int, buf: bytearray
) -> tuple[int, str | None, Sniffed | None, str | None]:
    """Read the file at `path` once, hashing each block and writing it to the open shard `dst` at
    `offset`; returns (bytes read, sha256, sniffed, reject reason).

    One pass over each byte: the block is hashed and written while it is still in cache (this
    beat hashing first and copying later with `copy_file_range`; benchmarks/ingest.py). At
    most `size` bytes are written; a file that turns out longer or shorter than listed reports
    the count it saw, and the caller refuses it.
    """
    view = memoryview(buf)
    h = hashlib.sha256()
    head = b""
    done = 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        return 0, None, None, f"unreadable ({err.strerror or err})"
    try:
        while done <= size and (n := os.readv(fd, [buf])):
            block = view[:n]
            h.update(block)
            if len(head) < HEAD:
                head += block[: HEAD - len(head)]
            pwrite_all(dst, block[: max(0, size - done)], offset + done)
            done += n
    except OSError as err:
        return done, None, None, f"unreadable ({err.strerror or err})"
    finally:
        os.close(fd)
    if not done:
        return 0, None, None, "empty file"
    return done, h.hexdigest(), sniff(head), None


def _store_chunk(jobs: list[tuple[str, str, int, int]]) -> list[tuple[int, str | None, Sniffed | None, str | None]]:
    """`_store_file` a run of (source path, shard path, offset, size) jobs, with one block buffer."""
    buf = bytearray(BLOCK)
    return on_shards(jobs, lambda src, fd, offset, size: _store_file(src, fd, offset, size, buf))


def _load_chunk(chunk: list[storage.Entry], cfg: IngestConfig) -> list[tuple]:
    """Hash and canonicalise a run of local files in a worker process.

    Returns compact tuples, not `Loaded` objects: the parent holds the entries already."""
    loaded = [load_file(e, cfg, hold_plain=False) for e in chunk]
    return [(r.entry.size, r.sha256, r.stored, r.sniffed, r.error, r.copy_from) for r in loaded]


def _chunks(
    entries: list[storage.Entry], max_files: int = 32, max_bytes: int = 8 << 20
) -> Iterator[list[storage.Entry]]:
    """Runs of consecutive entries, small enough that a few in flight bound memory."""
    chunk: list[storage.Entry] = []
    size = 0
    for e in entries:
        chunk.append(e)
        size += e.size
        if len(chunk) >= max_files or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _workers() -> int:
    return min(usable_cpus(), 8)


def _local_pool(cfg: IngestConfig) -> Executor | None:
    """The workers of a local ingest, or None where `_load_all`'s threads do all the work.

    Plain files (no canonicalisation) go to threads, each file read once and written to its shard
    range (`_store_local`): hashlib, reads and writes release the GIL, so threads keep every core
    busy about as well as processes do, and start at once. Canonicalising is CPU work in Python
    and the decoders, for worker processes (`_worker_pool`) where more than one core is usable.
    """
    if os.name != "posix":  # os.readv and os.pwrite
        return None
    if not cfg.canonicalize:
        return ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="obf-ingest")
    if "forkserver" in multiprocessing.get_all_start_methods() and usable_cpus() > 1:
        return _worker_pool()
    return None


def _worker_pool() -> ProcessPoolExecutor:
    """Worker processes forked from a fork server (a clean process started once), never from the caller.

    A forked child inherits every lock that another thread of its parent held at that moment, and
    a child that needs one waits forever. Python cannot list, let alone join, the native threads of
    torch or libav, nor stop the daemon threads of Prefect or a test server, and forking the caller
    hung ingest workers twice in CI runs. The server imports this module once, so each worker starts
    ready. As with any start method but `fork`, a script that calls `ingest` keeps its top-level
    work under `if __name__ == "__main__":`, since each worker imports the main module again.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # ~0.3 s once per process on a 2-core host (benchmarks/README)
    return ProcessPoolExecutor(max_workers=_workers(), mp_context=ctx)


def _in_flight(
    pool: Executor, fn: Callable[..., _T], jobs: Iterable[tuple[Any, tuple]], window: int = 0
) -> Iterator[tuple[Any, _T]]:
    """`fn(*args)` in `pool` for each (key, args) job, at most `window` in flight (default: four per
    worker process; memory stays bounded by those), yielding (key, result) in submission order.
    The one bounded submit loop of ingest: worker processes and the thread pool both use it."""
    window = window or 4 * _workers()
    pending: deque[tuple[Any, Future[_T]]] = deque()
    for key, args in jobs:
        pending.append((key, pool.submit(fn, *args)))
        if len(pending) >= window:
            key, fut = pending.popleft()
            yield key, fut.result()
    while pending:
        key, fut = pending.popleft()
        yield key, fut.result()


def _load_local(entries: list[storage.Entry], cfg: IngestConfig, pool: ProcessPoolExecutor) -> Iterator[Loaded]:
    """`load_file` local files in worker processes, yielding results in order.

    Hashing and canonicalising are CPU work under the GIL's thumb; processes run them on every
    core, and the same workers copy unchanged files into the shards (`Copier`).
    """
    for chunk, results in _in_flight(pool, _load_chunk, ((c, (c, cfg)) for c in _chunks(entries))):
        for e, (size, digest, stored, sn, error, copy_from) in zip(chunk, results):
            yield Loaded(e if size == e.size else replace(e, size=size), digest, stored, sn, error, copy_from)


def _store_local(entries: list[storage.Entry], writer: ShardWriter, pool: Executor) -> Iterator[Loaded]:
    """Store plain local files in `pool`'s workers, each read once; yields results in order.

    Every file gets its shard range before it is read, in listing order (`writer.reserve`), so a
    worker writes the bytes it hashes straight to their place. A file that turns out to be a
    duplicate or unreadable leaves its range unused; `compact` closes such gaps at the end. A
    file whose size changed since it was listed is an error: its range no longer fits it.
    """
    places = [writer.reserve(e.size) for e in entries]  # creates every shard file up front

    def jobs() -> Iterator[tuple[list[tuple[storage.Entry, tuple[int, int]]], tuple]]:
        first = 0
        for chunk in _chunks(entries):
            placed = list(zip(chunk, places[first : first + len(chunk)]))
            first += len(chunk)
            yield (
                placed,
                ([(storage.local_str(e.url), writer.path(shard), offset, e.size) for e, (shard, offset) in placed],),
            )

    for placed, results in _in_flight(pool, _store_chunk, jobs()):
        for (e, place), (size, digest, sn, error) in zip(placed, results):
            if error is None and size != e.size:
                raise DataError(f"{e.key}: changed while being ingested; run ingest again")
            yield Loaded(e, digest, None, sn, error, place=place)


def _load_all(entries: list[storage.Entry], cfg: IngestConfig, remote: bool) -> Iterator[Loaded]:
    """`load_file` every entry in a small thread pool, yielding results in order.

    hashlib, file I/O and the media decoders release the GIL, so the workers run beside the
    caller's shard writes; the window bounds memory to a few files. Canonicalising a file that
    later turns out to be a duplicate is wasted work, but duplicates are rare and the decoders are
    what parallelises best.
    """
    window = 8 if remote else 4
    with ThreadPoolExecutor(max_workers=window) as pool:
        for _, item in _in_flight(pool, load_file, ((e.key, (e, cfg, True)) for e in entries), window):
            yield item


def _stem(key: str) -> str:
    """A key without its file name's extension ('a/b.png' -> 'a/b')."""
    head, _, name = key.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{base}" if head else base


def find_pairs(entries: list[storage.Entry], pairs_jsonl: bytes | None) -> dict[str, str]:
    """{input key: target key} from inputs/ + targets/ folders and an optional pairs.jsonl.

    A file under `inputs/` pairs with the file of the same relative name under the sibling
    `targets/`, or else with the one file there whose name differs only in its extension (a
    conversion keeps the name: inputs/a.png -> targets/a.bmp)."""
    keys = {e.key for e in entries}
    by_stem: dict[str, list[str]] = {}
    for k in keys:
        by_stem.setdefault(_stem(k), []).append(k)
    pairs: dict[str, str] = {}
    for k in sorted(keys):
        parts = k.split("/")
        for i, part in enumerate(parts[:-1]):
            if part == "inputs":
                target = "/".join([*parts[:i], "targets", *parts[i + 1 :]])
                same_stem = by_stem.get(_stem(target), [])
                if target in keys:
                    pairs[k] = target
                elif len(same_stem) == 1:
                    pairs[k] = same_stem[0]
                break
    if pairs_jsonl is not None:
        for n, line in enumerate(pairs_jsonl.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                inp, tgt = storage.safe_key(item["input"]), storage.safe_key(item["target"])
            except (ValueError, KeyError, TypeError, storage.StorageError) as e:
                raise DataError(f'pairs.jsonl line {n}: expected {{"input": KEY, "target": KEY}} ({e})') from None
            missing = [k for k in (inp, tgt) if k not in keys]
            if missing:
                raise DataError(f"pairs.jsonl line {n}: {missing[0]} is not a file of the source")
            pairs[inp] = tgt
    return pairs


def _precheck(e: storage.Entry, cfg: IngestConfig) -> str | None:
    if e.error:
        return e.error
    try:
        storage.safe_key(e.key)
    except storage.StorageError as err:
        return str(err)
    if e.size == 0:
        return "empty file"
    if e.size > cfg.max_file_bytes:
        return f"larger than ingest.max_file_bytes ({e.size} > {cfg.max_file_bytes})"
    return None


def ingest(
    source: str, out_dir: str | Path, cfg: IngestConfig, *, progress: bool = True, dask: str | None = None
) -> dict:
    """Ingest every file under `source` (folder or fsspec URL) into `out_dir`; return the manifest.

    `out_dir` is a local dir or any fsspec URL (`s3://bucket/ds`). A local dataset is built in a
    temp dir beside `out_dir` and renamed into place at the end, so a failure leaves any previous
    dataset untouched and no half-written dir behind. On a URL, the shards go under numbers after
    those of any dataset there, `index.jsonl` and then `manifest.json` are written last, and only
    then are the old dataset's shards removed: a failure leaves the old dataset whole. `out_dir`
    may only be new, empty or an earlier `obf ingest` output, never the source or around it.

    `dask`: the address of a Dask scheduler (`tcp://host:8786`): the cluster's workers read,
    canonicalise, hash and write the shards (`obf.data.ingest_dask`; `source` and `out_dir` must be
    reachable from every worker); the dataset is the one a local ingest makes, but for shard
    boundaries.
    """
    out = str(out_dir)
    remote_out = not storage.is_local(out)
    if remote_out:
        check_remote_output(out, source)
    else:
        storage.check_output_dir(Path(out), "ingest", [source])
    entries = storage.list_files(source)
    if not entries:
        raise DataError(f"{source}: holds no file to ingest")
    pairs_file = [e for e in entries if e.key == "pairs.jsonl" and not e.error]
    pairs = find_pairs(entries, storage.read_bytes(pairs_file[0].url) if pairs_file else None)
    entries = [e for e in entries if e.key != "pairs.jsonl"]
    remote_in = not storage.is_local(source)
    if remote_out:
        first = max(existing_shards(storage.join(out, "shards")), default=-1) + 1
        if dask:
            manifest = _ingest_into(
                entries, pairs, out, cfg, remote=remote_in, progress=progress, dask=dask, first_shard=first
            )
        else:
            with tempfile.TemporaryDirectory(prefix="obf-ingest-") as tmp:
                _ingest_into(entries, pairs, tmp, cfg, remote=remote_in, progress=progress)
                manifest = upload(Path(tmp), out, first)
        remove_unused_shards(out)
        return manifest
    tmp = storage.temp_dir_beside(Path(out))
    try:
        manifest = _ingest_into(entries, pairs, str(tmp), cfg, remote=remote_in, progress=progress, dask=dask)
        storage.mark_output_dir(tmp, "ingest")
        storage.replace_dir(tmp, Path(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _ingest_into(
    entries: list[storage.Entry],
    pairs: dict[str, str],
    root: str,
    cfg: IngestConfig,
    *,
    remote: bool,
    progress: bool,
    dask: str | None = None,
    first_shard: int = 0,
) -> dict:
    """Ingest `entries` into the dataset at `root` (local, or a URL with `dask`); returns the manifest."""
    rejected: list[dict] = []
    readable = []
    for e in entries:
        reason = _precheck(e, cfg)
        if reason:
            rejected.append({"source": e.key, "reason": reason})
        else:
            readable.append(e)
    start = time.perf_counter()
    if dask:
        records, more, duplicates = run_on_dask(readable, cfg, root, dask, first_shard=first_shard, progress=progress)
        rejected += more
    else:
        records, more, duplicates = _store_all(readable, Path(root), cfg, remote=remote, progress=progress)
        rejected += more
    elapsed = time.perf_counter() - start
    records = _link_pairs(records, pairs, {d["source"]: d["same_as"] for d in duplicates})
    manifest = build_manifest(records, rejected, duplicates, cfg)
    write_index_and_manifest(root, records, manifest)
    mb = sum(e.size for e in readable) / 1e6
    log.info("ingest: %d files stored, %d duplicates, %d rejected, %.1f MB read in %.1fs (%.1f MB/s)", len(records),
             len(duplicates), len(rejected), mb, elapsed, mb / max(elapsed, 1e-9))
    return manifest


def _store_all(
    readable: list[storage.Entry], root: Path, cfg: IngestConfig, *, remote: bool, progress: bool
) -> tuple[list[Record], list[dict], list[dict]]:
    """Read, hash, canonicalise and store every file on this machine: worker processes for a
    local folder, threads for URLs. Returns (records, rejected, duplicates) in listing order."""
    from tqdm import tqdm

    rejected: list[dict] = []
    duplicates: list[dict] = []
    seen: dict[str, str] = {}
    records: list[Record] = []
    total = sum(e.size for e in readable)
    writer = ShardWriter(root, cfg.shard_bytes, total)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="ingest",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    pool = None if remote else _local_pool(cfg)
    one_pass = pool is not None and not cfg.canonicalize  # workers write what they hash
    copier = Copier(pool) if isinstance(pool, ProcessPoolExecutor) else None  # canonicalising workers
    try:
        if pool is None:
            items = _load_all(readable, cfg, remote)
        else:
            items = _store_local(readable, writer, pool) if one_pass else _load_local(readable, cfg, pool)
        for item in items:
            e = item.entry
            bar.update(e.size)
            if item.error is not None or item.sha256 is None:
                rejected.append({"source": e.key, "reason": item.error or "unreadable"})
                continue
            digest = item.sha256
            if digest in seen:
                duplicates.append({"source": e.key, "same_as": seen[digest]})
                continue
            sn = item.sniffed
            assert sn is not None
            if item.place is not None:  # written by a worker already
                (shard, offset), length = item.place, e.size
            elif item.stored is not None:
                (shard, offset), length = writer.write(item.stored), len(item.stored)
            else:  # a plain local file: the kernel copies it into place, in a worker
                assert item.copy_from is not None and copier is not None
                (shard, offset), length = writer.reserve(e.size), e.size
                copier.add(e.key, (item.copy_from, writer.path(shard), offset, length))
            seen[digest] = e.key
            records.append(
                Record(
                    key=e.key,
                    sha256=digest,
                    modality=sn.modality,
                    format=sn.format,
                    split=split_of(digest, cfg.val_fraction, cfg.test_fraction),
                    shard=shard,
                    offset=offset,
                    length=length,
                )
            )
            if len(records) % 64 == 0:  # a postfix per file costs more than reading a small one
                bar.set_postfix(files=len(records), refresh=False)
        if copier is not None:
            copier.finish()
    except BrokenProcessPool:
        raise DataError(
            "a worker process of ingest died: killed, out of memory, or unable to start (a script that "
            'calls ingest() keeps its own work under `if __name__ == "__main__":`)'
        ) from None
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
        writer.close()
    if one_pass and len(records) < len(readable):
        records = compact(writer, records)
    return records, rejected, duplicates


def _link_pairs(records: list[Record], pairs: dict[str, str], dup_of: dict[str, str]) -> list[Record]:
    """Set `pair` on pair inputs and keep every pair inside one split.

    Files joined by pairs (an input and its target; two inputs that share a target, and so on)
    form a group that takes one split: its input's own, and where inputs share a target, the
    most held-out of theirs (test, then val, then train). So a target shared by a training input
    and a test input is never trained on, and training never reads a validation or test file
    through a pair."""
    by_key = {r.key: r for r in records}
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        while parent.get(k, k) != k:
            parent[k] = parent.get(parent[k], parent[k])
            k = parent[k]
        return k

    linked: dict[str, str] = {}
    for inp, tgt in pairs.items():
        inp, tgt = dup_of.get(inp, inp), dup_of.get(tgt, tgt)
        if inp in by_key and tgt in by_key:  # inp == tgt: a target equal to its input (a gray picture made gray)
            linked[inp] = tgt
            parent.setdefault(inp, inp)
            parent.setdefault(tgt, tgt)
            parent[root(inp)] = root(tgt)
    rank = {"test": 0, "val": 1, "train": 2}
    group_split: dict[str, str] = {}
    for k in linked:  # the inputs decide
        g = root(k)
        s = by_key[k].split
        if g not in group_split or rank[s] < rank[group_split[g]]:
            group_split[g] = s
    out = []
    for r in records:
        if r.key in linked:
            r = replace(r, pair=linked[r.key])
        if r.key in parent:
            r = replace(r, split=group_split[root(r.key)])
        out.append(r)
    return out
