"""Ingest on a Dask cluster: workers read, canonicalise, hash and write shard parts straight to
the destination; the driver decides duplicates, writes `index.jsonl` and `manifest.json`.

The listing is cut into parts of consecutive files (`part_bytes`: 1-16 MiB of input, about four
per worker thread on a small listing). Each part is one Dask task: it reads its files as a local
ingest does (text and binary streamed through one buffer, media loaded whole and canonicalised),
puts the stored bytes of each new content in one shard and writes that shard whole or not at all
(one PUT; locally a temp file renamed into place), so a task that a dead worker leaves unfinished
is simply run again and writes the same object. The driver takes the parts' results in listing
order, so the first file of each content is kept and later ones are duplicates, as in a local
ingest: for the same files the records (key, split, modality, length, sha256), the bytes of each,
the duplicates and the rejections are the same; only shard boundaries differ (a duplicate of an
earlier part's file leaves its bytes unused in its shard).

Where the parts go (`obf.data.ingest.ingest` picks; `DEST` must be reachable by every worker):
- a local `DEST` (a shared filesystem, or a LocalCluster): a temp dir beside it, renamed into
  place at the end, as a local ingest does;
- a URL (`s3://...`): `DEST` itself, under shard numbers after those of any dataset already
  there, which stays readable until the new `manifest.json` (written last) replaces it; shards
  no record names are removed after that. A run that dies leaves the old dataset whole.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from obf.core import storage
from obf.core.config import IngestConfig
from obf.data.dataset import Record, split_of
from obf.data.loading import BLOCK, HEAD, load_file
from obf.data.shards import reserve_blocks
from obf.formats.canonical import REWRITTEN
from obf.formats.sniff import sniff

log = logging.getLogger(__name__)

PART_BYTES = 16 << 20  # input per task at most: a bounded part in memory, few tasks on a big listing
MIN_PART_BYTES = 1 << 20  # and at least: a task's own overhead stays small beside its work
TASKS_PER_THREAD = 4  # on a small listing, parts shrink until every worker thread gets about this many


def part_bytes(total: int, threads: int, shard_bytes: int) -> int:
    """Input per task: at most a shard and PART_BYTES, and small enough that a listing of `total`
    bytes makes TASKS_PER_THREAD tasks per worker thread, so that CPU-bound canonicalising keeps
    every thread busy to the end (16 MiB parts would give a 2-worker cluster 3 tasks for 50 MB)."""
    return max(MIN_PART_BYTES, min(shard_bytes, PART_BYTES, -(-total // (TASKS_PER_THREAD * max(threads, 1)))))


def _parts(entries: list[storage.Entry], max_bytes: int) -> Iterator[list[storage.Entry]]:
    """Runs of consecutive entries of at most `max_bytes` of input (one file alone may be more)."""
    part: list[storage.Entry] = []
    size = 0
    for e in entries:
        if part and size + e.size > max_bytes:
            yield part
            part, size = [], 0
        part.append(e)
        size += e.size
    if part:
        yield part


def _stream_file(path: str, sink: BinaryIO, cfg: IngestConfig, buf: bytearray) -> tuple | None:
    """Append a local file that is stored as it is (text and binary; every file when canonicalise
    is off) to `sink`, block by block through `buf`, hashing each block while it is in cache, as a
    local ingest's workers do: no copy of the whole file is ever held. Returns None, having
    written nothing, for a file `load_file` must take whole (a medium to canonicalise, or one
    that does not open: it words the reason as a local ingest does); else (sha256, sniffed,
    length, reject reason). A source that fails to read is a reject; a failing write to the sink
    (a full disk) is the task's error."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        view = memoryview(buf)
        try:
            n = os.readv(fd, [buf])  # the first block holds sniff's head (BLOCK > HEAD)
            while 0 < n < HEAD and (more := os.readv(fd, [view[n:]])):
                n += more
            head = bytes(view[: min(n, HEAD)])
        except OSError as err:
            return None, None, 0, f"unreadable ({err.strerror or err})"
        if not head:
            return None, None, 0, "empty file"
        sn = sniff(head)
        if cfg.canonicalize and sn.modality in REWRITTEN:
            return None
        h = hashlib.sha256()
        done = 0
        while n:
            h.update(view[:n])
            sink.write(view[:n])
            done += n
            try:
                n = os.readv(fd, [buf])
            except OSError as err:
                return None, None, 0, f"unreadable ({err.strerror or err})"
    finally:
        os.close(fd)
    if done > cfg.max_file_bytes:
        return None, None, 0, f"larger than ingest.max_file_bytes ({done} > {cfg.max_file_bytes})"
    return h.hexdigest(), sn, done, None


def _fill(entries: list[storage.Entry], cfg: IngestConfig, sink: BinaryIO) -> list[tuple]:
    """Append the stored bytes of each content new to the part to `sink`; returns per file
    (sha256, modality, format, offset, length, reject reason). A rejected file or a repeat of an
    earlier content is cut off the sink again, so the shard holds each kept content once."""
    buf = bytearray(BLOCK)
    at: dict[str, int] = {}
    out: list[tuple] = []
    for e in entries:
        start = sink.tell()
        got = _stream_file(storage.local_str(e.url), sink, cfg, buf) if storage.is_local(e.url) else None
        if got is None:  # a medium to canonicalise, a remote file, or one that does not open: whole
            item = load_file(e, cfg)
            if item.error is None and item.sha256 and item.stored is not None and item.sniffed is not None:
                sink.write(item.stored)
                got = item.sha256, item.sniffed, len(item.stored), None
            else:
                got = None, None, 0, item.error or "unreadable"
        digest, sn, length, error = got
        if error is not None or digest in at:
            sink.seek(start)
            sink.truncate()
        if error is not None:
            out.append((None, None, None, None, 0, error))
            continue
        offset = None
        if digest not in at:
            offset = at[digest] = start
        out.append((digest, sn.modality, sn.format, offset, length, None))
    return out


def ingest_part(entries: list[storage.Entry], cfg: IngestConfig, shard_url: str) -> list[tuple]:
    """The task a worker runs: read every file of the part as a local ingest does, put the stored
    bytes of each content new to the part in one shard, written whole or not at all, and return
    per file (sha256, modality, format, offset, length, reject reason); offset is None for a file
    whose content came earlier in the part (the driver records it as a duplicate).

    A local shard lies in the temp dir that becomes DEST by one rename at the end: it is written
    straight to a temp file whose blocks are reserved first and trimmed after, and renamed,
    without an fsync of its own (as a local ingest's shards).
    On object storage the shard is one PUT."""
    if storage.is_local(shard_url):
        path = storage.local_path(shard_url)
        out: list[tuple] = []

        def write(tmp: str) -> None:
            with open(tmp, "wb") as sink:  # buffered: each write lands whole or raises
                reserve_blocks(sink.fileno(), sum(e.size for e in entries))  # as a local ingest's shards
                out.extend(_fill(entries, cfg, sink))
                sink.truncate()  # what was reserved and not written

        tmp = storage.write_temp_beside(path, write, durable=False)
        try:
            if os.path.getsize(tmp):
                os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return out
    sink = io.BytesIO()
    out = _fill(entries, cfg, sink)
    if sink.tell():
        storage.write_bytes_atomic(shard_url, sink.getvalue())
    return out


def _no_workers_limit() -> float | None:
    """Dask's own `distributed.scheduler.no-workers-timeout` (seconds; None: wait for workers)."""
    import dask
    from dask.utils import parse_timedelta

    value = dask.config.get("distributed.scheduler.no-workers-timeout", None)
    return None if value is None else parse_timedelta(value, default="s")


def _result(client: Any, fut: Any, address: str) -> Any:
    """`fut.result()`, watching the cluster while it waits. A cluster without workers is waited
    for, as Dask does (an adaptive cluster may be scaling up), with a warning each minute, unless
    `distributed.scheduler.no-workers-timeout` is set: then, once it has had no worker that long,
    the ingest ends with a one-line error (and the dataset is left as it was). A task that failed
    on every try (its error, or workers dying under it) ends it the same way."""
    limit = _no_workers_limit()
    poll = 10.0 if limit is None else min(10.0, max(limit / 4, 0.25))
    idle_since: float | None = None
    warned = 0.0
    while True:
        try:
            return fut.result(timeout=poll)
        except TimeoutError:
            pass
        except Exception as err:  # the task's own error after its retries, or KilledWorker
            first = (str(err) or type(err).__name__).strip().splitlines()[0]
            raise storage.StorageError(f"dask scheduler {address}: an ingest task failed: {first}") from None
        if client.nthreads():
            idle_since = None
            continue
        now = time.monotonic()
        idle_since = idle_since or now
        if limit is not None and now - idle_since >= limit:
            raise storage.StorageError(f"dask scheduler {address}: no workers for {now - idle_since:.0f}s "
                                       "(distributed.scheduler.no-workers-timeout); the dataset was not changed")
        if now - warned >= 60:
            warned = now
            log.warning("dask scheduler %s has no workers; waiting for some (set "
                        "distributed.scheduler.no-workers-timeout to give up instead)", address)


def run(entries: list[storage.Entry], cfg: IngestConfig, root: str, address: str, *, first_shard: int = 0,
        progress: bool = True) -> tuple[list[Record], list[dict], list[dict]]:
    """Ingest `entries` (prechecked) on the Dask cluster at `address`, writing shards under
    `root/shards/` from number `first_shard`; returns (records, rejected, duplicates) in listing
    order, as a local ingest makes them (before pairs are linked)."""
    try:
        from distributed import Client
    except ImportError:
        raise storage.StorageError("obf ingest --dask needs dask.distributed (pip install 'dask[distributed]')"
                                   ) from None
    from tqdm import tqdm

    total = sum(e.size for e in entries)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="ingest (dask)",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    records: list[Record] = []
    rejected: list[dict] = []
    duplicates: list[dict] = []
    seen: dict[str, str] = {}
    try:
        client = Client(address, timeout=60)
    except (OSError, TimeoutError) as err:
        raise storage.StorageError(f"dask scheduler {address}: cannot connect ({err})") from None
    try:
        parts = list(_parts(entries, part_bytes(total, sum(client.nthreads().values()), cfg.shard_bytes)))
        futures = [client.submit(ingest_part, part, cfg, storage.join(root, f"shards/{first_shard + i:06d}.bin"),
                                 key=f"obf-ingest-part-{first_shard + i}-{time.time_ns()}", retries=2, pure=False)
                   for i, part in enumerate(parts)]
        for i, (part, fut) in enumerate(zip(parts, futures)):
            results: list[Any] = _result(client, fut, address)
            shard = first_shard + i
            for e, (digest, modality, fmt, offset, length, error) in zip(part, results):
                bar.update(e.size)
                if error is not None:
                    rejected.append({"source": e.key, "reason": error})
                elif digest in seen:
                    duplicates.append({"source": e.key, "same_as": seen[digest]})
                else:
                    assert offset is not None  # the first of its content in the listing is the part's first
                    seen[digest] = e.key
                    records.append(Record(key=e.key, sha256=digest, modality=modality, format=fmt,
                                          split=split_of(digest, cfg.val_fraction, cfg.test_fraction),
                                          shard=shard, offset=offset, length=length))
    finally:
        client.close()
        bar.close()
    mb, s = total / 1e6, time.perf_counter() - start
    log.info("ingest: %d parts on %s, %.1f MB in %.1fs (%.1f MB/s)", len(parts), address, mb, s, mb / max(s, 1e-9))
    return records, rejected, duplicates
