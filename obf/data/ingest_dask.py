"""Ingest on a Dask cluster: workers read, canonicalise, hash and write shard parts straight to
the destination; the driver decides duplicates, writes `index.jsonl` and `manifest.json`.

The listing is cut into parts of consecutive files of even work (`_parts`: about four per worker
thread, up to a shard of input, a quarter of that for media to canonicalise; at most 16 MiB
where a shard is held in memory until its PUT). Each part is one Dask task: it reads its files
as a local ingest does (text and binary streamed through one buffer, media loaded whole and
canonicalised), puts the stored bytes of each new content in one shard and writes that shard
whole or not at all (one PUT; locally a temp file renamed into place), so a task that a dead
worker leaves unfinished is simply run again and writes the same object. The driver takes the
parts' results in listing order, so the first file of each content is kept and later ones are
duplicates, as in a local ingest: for the same files the records (key, split, modality, length,
sha256), the bytes of each, the duplicates and the rejections are the same; only shard
boundaries differ (a duplicate of an earlier part's file leaves its bytes unused in its shard).

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
import pickle
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from obf.core import storage
from obf.core.config import IngestConfig
from obf.data.dataset import Record, split_of
from obf.data.loading import BLOCK, HEAD, load_file
from obf.data.shards import reserve_blocks
from obf.formats.canonical import REWRITTEN
from obf.formats.sniff import FORMAT_EXTENSIONS, sniff

log = logging.getLogger(__name__)

PART_BYTES = 16 << 20  # input per task at most where its shard is held in memory until one PUT
MIN_PART_BYTES = 1 << 20  # and at least: a task's own overhead stays small beside its work
TASKS_PER_THREAD = 4  # parts per worker thread, where they are not smaller than MIN_PART_BYTES
MEDIA_COST = 4  # a byte that canonicalising decodes counts as this many copied: a 64 MiB shard, 16 MiB of media
# Names that canonicalising most likely decodes: the suffixes of the media formats `sniff` knows, and their
# aliases. Only a guess at a part's cost, for cutting the listing into parts of even work; what a file is,
# is still decided from its bytes (`sniff`).
MEDIA_SUFFIXES = frozenset(
    {ext for fmt, ext in FORMAT_EXTENSIONS.items() if fmt not in ("utf8", "binary")}
    | set(".jpeg .tiff .pgm .pbm .pnm .oga .opus .aac .m4v .mov .webm".split())
)


def part_cap(shard_bytes: int, *, in_memory: bool) -> int:
    """Input per part at most (within half a file): a shard, and PART_BYTES where the shard is
    held in a worker's memory until its one PUT."""
    return min(shard_bytes, PART_BYTES) if in_memory else shard_bytes


def _cost(e: storage.Entry, canonicalize: bool) -> int:
    """A guess at the work `e` makes a task: its size, MEDIA_COST times over for a medium that
    canonicalising decodes (by its name's suffix)."""
    media = canonicalize and os.path.splitext(e.key)[1].lower() in MEDIA_SUFFIXES
    return e.size * (MEDIA_COST if media else 1)


def _parts(entries: list[storage.Entry], threads: int, cap: int, canonicalize: bool) -> list[list[storage.Entry]]:
    """Runs of consecutive entries of even cost (`_cost`): TASKS_PER_THREAD per worker thread
    (fewer where runs would be under MIN_PART_BYTES), more where runs would cost over `cap`. A run
    ends before the file whose middle lies past its share of the whole, so a run is within half a
    file of its share (a file alone may be more), and 500 MB in 8 runs is 8 runs of ~62.5 MB, not
    8 and a crumb.

    Each task costs its worker a few ms beside its work (messages on its event loop, a shard file
    of its own): on 500 MB of copies, 8 runs instead of 31 of 16 MiB took two workers from 0.47 s
    to 0.40. Where canonicalising decodes media, a byte is 10-100 times the work, so its runs stay
    at 16 MiB: the threads end closer together (benchmarks/README, "Ingest on Dask")."""
    costs = [_cost(e, canonicalize) for e in entries]
    total = sum(costs)
    count = max(1, -(-total // max(cap, 1)), min(TASKS_PER_THREAD * max(threads, 1), total // MIN_PART_BYTES))
    parts: list[list[storage.Entry]] = []
    part: list[storage.Entry] = []
    spent = done = 0  # cost of this run; of the runs before it
    for e, c in zip(entries, costs):
        if part and (done + spent + c / 2) * count > (len(parts) + 1) * total:
            parts.append(part)
            done, part, spent = done + spent, [], 0
        part.append(e)
        spent += c
    if part:
        parts.append(part)
    return parts


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


def _packed_part(packed: bytes, cfg: IngestConfig, shard_url: str) -> bytes:
    """`ingest_part` as a Dask task: its files and its result rows travel as one pickled bytes
    object each. Dask walks a bare list element by element to build and serialise a task (a part
    of ~340 files took the driver ~1.3 ms to submit, and 9 such trivial tasks took ~55 ms from
    submit to results where the same parts pickled took ~30; benchmarks/README, "Ingest on Dask");
    a bytes object passes as it is."""
    return pickle.dumps(ingest_part(pickle.loads(packed), cfg, shard_url), protocol=pickle.HIGHEST_PROTOCOL)


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


def check_address(address: str) -> None:
    """Refuse, with one line, a scheduler address Dask cannot parse (needs dask.distributed)."""
    from distributed.comm.addressing import get_address_host_port, normalize_address, parse_address

    try:
        full = normalize_address(address)
        if parse_address(full)[0] != "inproc":  # a scheduler in this process has no host and port
            get_address_host_port(full)
    except ValueError as err:
        raise storage.StorageError(f"dask scheduler {address!r}: not an address ({err}); "
                                   "expected HOST:PORT or SCHEME://HOST:PORT, e.g. tcp://10.0.0.5:8786") from None


def run(entries: list[storage.Entry], cfg: IngestConfig, root: str, address: str, *, first_shard: int = 0,
        progress: bool = True) -> tuple[list[Record], list[dict], list[dict]]:
    """Ingest `entries` (prechecked) on the Dask cluster at `address`, writing shards under
    `root/shards/` from number `first_shard`; returns (records, rejected, duplicates) in listing
    order, as a local ingest makes them (before pairs are linked). Connecting gives up after Dask's
    `distributed.comm.timeouts.connect` (30 s unless set)."""
    try:
        from distributed import Client
    except ImportError:
        raise storage.StorageError("obf ingest --dask needs dask.distributed (pip install 'dask[distributed]')"
                                   ) from None
    from tqdm import tqdm

    check_address(address)  # before a Client exists: one made from a malformed address hangs its process's exit
    start = time.perf_counter()
    try:
        client = Client(address, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise storage.StorageError(f"dask scheduler {address}: cannot connect ({err})") from None
    total = sum(e.size for e in entries)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="ingest (dask)",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    records: list[Record] = []
    rejected: list[dict] = []
    duplicates: list[dict] = []
    seen: dict[str, str] = {}
    try:
        cap = part_cap(cfg.shard_bytes, in_memory=not storage.is_local(root))
        parts = _parts(entries, sum(client.nthreads().values()), cap, cfg.canonicalize)
        futures = [client.submit(_packed_part, pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL), cfg,
                                 storage.join(root, f"shards/{first_shard + i:06d}.bin"),
                                 key=f"obf-ingest-part-{first_shard + i}-{time.time_ns()}", retries=2, pure=False)
                   for i, part in enumerate(parts)]
        for i, (part, fut) in enumerate(zip(parts, futures)):
            results: list[Any] = pickle.loads(_result(client, fut, address))
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
    if storage.is_local(root):  # workers on other machines wrote their shards to their own disks
        for shard in sorted({r.shard for r in records}):
            if not os.path.exists(storage.local_str(storage.join(root, f"shards/{shard:06d}.bin"))):
                raise storage.StorageError(
                    f"{root}: the Dask workers wrote shards/{shard:06d}.bin where this process cannot see it: a "
                    "local destination must be a filesystem the workers and the driver share (or give an s3:// URL)")
    mb, s = total / 1e6, time.perf_counter() - start
    log.info("ingest: %d parts on %s, %.1f MB in %.1fs (%.1f MB/s)", len(parts), address, mb, s, mb / max(s, 1e-9))
    return records, rejected, duplicates
