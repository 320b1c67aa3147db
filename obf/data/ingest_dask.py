"""Ingest on a Dask cluster: workers read, canonicalise, hash and write shard parts straight to
the destination; the driver decides duplicates, writes `index.jsonl` and `manifest.json`.

The listing is cut into parts of consecutive files (at most 16 MiB, or `ingest.shard_bytes`, of
input each). Each part is one Dask task: it `load_file`s its files exactly as a local ingest does,
appends the
stored bytes of each new file to one shard and writes that shard with one PUT
(`storage.write_bytes_atomic`), so a task that a dead worker leaves unfinished is simply run again
and writes the same object. The driver takes the parts' results in listing order, so the first
file of each content is kept and later ones are duplicates, as in a local ingest: for the same
files the records (key, split, modality, length, sha256), the bytes of each, the duplicates and
the rejections are the same; only shard boundaries differ (a duplicate of an earlier part's file
leaves its bytes unused in its shard).

Where the parts go (`obf.data.ingest.ingest` picks; `DEST` must be reachable by every worker):
- a local `DEST` (a shared filesystem, or a LocalCluster): a temp dir beside it, renamed into
  place at the end, as a local ingest does;
- a URL (`s3://...`): `DEST` itself, under shard numbers after those of any dataset already
  there, which stays readable until the new `manifest.json` (written last) replaces it; shards
  no record names are removed after that. A run that dies leaves the old dataset whole.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from obf.core import storage
from obf.core.config import IngestConfig
from obf.data.dataset import Record, split_of
from obf.data.loading import load_file

log = logging.getLogger(__name__)

PART_BYTES = 16 << 20  # input per task: enough tasks to keep every worker busy, a bounded part in memory


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


def ingest_part(entries: list[storage.Entry], cfg: IngestConfig, shard_url: str) -> list[tuple]:
    """The task a worker runs: load every file of the part (`obf.data.ingest.load_file`), append the stored
    bytes of each content new to the part to one shard, write it with one PUT, and return per file
    (sha256, modality, format, offset, length, reject reason); offset is None for a file whose
    content came earlier in the part (the driver records it as a duplicate)."""

    shard = bytearray()
    at: dict[str, int] = {}
    out = []
    for e in entries:
        item = load_file(e, cfg)
        if item.error is not None or item.sha256 is None or item.stored is None or item.sniffed is None:
            out.append((None, None, None, None, 0, item.error or "unreadable"))
            continue
        offset = None
        if item.sha256 not in at:
            offset = at[item.sha256] = len(shard)
            shard += item.stored
        out.append((item.sha256, item.sniffed.modality, item.sniffed.format, offset, len(item.stored), None))
    if shard:
        storage.write_bytes_atomic(shard_url, bytes(shard))
    return out


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

    parts = list(_parts(entries, min(cfg.shard_bytes, PART_BYTES)))
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
        futures = [client.submit(ingest_part, part, cfg, storage.join(root, f"shards/{first_shard + i:06d}.bin"),
                                 key=f"obf-ingest-part-{first_shard + i}-{time.time_ns()}", retries=2, pure=False)
                   for i, part in enumerate(parts)]
        for i, (part, fut) in enumerate(zip(parts, futures)):
            results: list[Any] = fut.result()
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
