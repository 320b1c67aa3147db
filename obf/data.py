"""Byte datasets: ingest files into memmap shards + an index, and read them back.

Layout of an ingested dataset dir::

    manifest.json      counts per modality and split, rejected inputs (the DESIGN.md contract)
    index.jsonl        one record per stored file: key, sha256, modality, format, split,
                       shard, offset, length
    shards/000000.bin  raw uint8 bytes of many files back to back (np.memmap-able)

Ingest reads each file once and holds at most a few files in memory, never the dataset.
Splits come from the sha256 of the content, so adding files never moves existing ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from obf import storage
from obf.config import IngestConfig
from obf.errors import ObfError
from obf.formats import FormatError, canonicalize, sniff
from obf.vocab import MODALITIES

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
INDEX = "index.jsonl"


class DataError(ObfError):
    """A dataset is missing, empty or malformed, or a source holds nothing to ingest."""


@dataclass(frozen=True)
class Record:
    """One stored file of a dataset."""

    key: str  # relative key in the source
    sha256: str  # of the original bytes (dedupe + split)
    modality: str
    format: str  # format of the stored bytes (after canonicalisation)
    split: str
    shard: int
    offset: int
    length: int


def split_of(sha256_hex: str, val_fraction: float, test_fraction: float) -> str:
    """Split from the content hash alone: stable when files are added or renamed."""
    u = int(sha256_hex[:16], 16) / float(1 << 64)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


class _ShardWriter:
    """Appends file bytes to numbered shard files, starting a new shard past `shard_bytes`."""

    def __init__(self, root: Path, shard_bytes: int) -> None:
        self.root = root / "shards"
        self.root.mkdir(parents=True)
        self.limit = shard_bytes
        self.shard = -1
        self.pos = 0
        self.f: IO[bytes] | None = None

    def write(self, data: bytes) -> tuple[int, int]:
        if self.f is None or (self.pos > 0 and self.pos + len(data) > self.limit):
            self._next()
        assert self.f is not None
        offset = self.pos
        self.f.write(data)
        self.pos += len(data)
        return self.shard, offset

    def _next(self) -> None:
        self.close()
        self.shard += 1
        self.pos = 0
        self.f = open(self.root / f"{self.shard:06d}.bin", "wb", buffering=1 << 20)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def _read_entries(entries: list[storage.Entry], remote: bool) -> Iterator[tuple[storage.Entry, bytes | None, str | None]]:
    """Yield (entry, bytes, error) in order; remote reads overlap in a small thread pool."""

    def load(e: storage.Entry) -> tuple[storage.Entry, bytes | None, str | None]:
        try:
            return e, storage.read_bytes(e.url), None
        except storage.StorageError as err:
            return e, None, str(err).split(": ", 1)[-1]
        except OSError as err:
            return e, None, f"unreadable ({err.strerror or err})"

    if not remote:
        for e in entries:
            yield load(e)
        return
    window = 8
    with ThreadPoolExecutor(max_workers=window) as pool:
        pending = []
        for e in entries:
            pending.append(pool.submit(load, e))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


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


def ingest(source: str, out_dir: str | Path, cfg: IngestConfig, *, progress: bool = True) -> dict:
    """Ingest every file under `source` (folder or fsspec URL) into `out_dir`; return the manifest.

    The dataset is built in a temp dir beside `out_dir` and renamed into place at the end, so a
    failure leaves any previous dataset untouched and no half-written dir behind.
    """
    out = Path(out_dir)
    entries = storage.list_files(source)
    if not entries:
        raise DataError(f"{source}: holds no file to ingest")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        manifest = _ingest_into(entries, tmp, cfg, remote=not storage.is_local(source), progress=progress)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _replace_dir(new: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _ingest_into(entries: list[storage.Entry], root: Path, cfg: IngestConfig, *, remote: bool, progress: bool) -> dict:
    from tqdm import tqdm

    rejected: list[dict] = []
    duplicates: list[dict] = []
    seen: dict[str, str] = {}
    records: list[Record] = []
    writer = _ShardWriter(root, cfg.shard_bytes)
    readable = []
    for e in entries:
        reason = _precheck(e, cfg)
        if reason:
            rejected.append({"source": e.key, "reason": reason})
        else:
            readable.append(e)
    total = sum(e.size for e in readable)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="ingest", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for e, data, err in _read_entries(readable, remote):
            bar.update(e.size)
            if err is not None or data is None:
                rejected.append({"source": e.key, "reason": err or "unreadable"})
                continue
            if not data:
                rejected.append({"source": e.key, "reason": "empty file"})
                continue
            if len(data) > cfg.max_file_bytes:
                rejected.append({"source": e.key, "reason": f"larger than ingest.max_file_bytes ({len(data)} > {cfg.max_file_bytes})"})
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                duplicates.append({"source": e.key, "same_as": seen[digest]})
                continue
            if cfg.canonicalize:
                try:
                    stored, sn = canonicalize(data, cfg)
                except FormatError as fe:
                    rejected.append({"source": e.key, "reason": str(fe)})
                    continue
            else:
                stored, sn = data, sniff(data)
            seen[digest] = e.key
            shard, offset = writer.write(stored)
            records.append(Record(key=e.key, sha256=digest, modality=sn.modality, format=sn.format,
                                  split=split_of(digest, cfg.val_fraction, cfg.test_fraction),
                                  shard=shard, offset=offset, length=len(stored)))
            bar.set_postfix(files=len(records), refresh=False)
    finally:
        bar.close()
        writer.close()
    elapsed = time.perf_counter() - start
    with open(root / INDEX, "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r), sort_keys=True) + "\n")
    manifest = build_manifest(records, rejected, duplicates, cfg)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if progress:
        mb = total / 1e6
        print(f"ingest: {len(records)} files stored, {len(duplicates)} duplicates, {len(rejected)} rejected, "
              f"{mb:.1f} MB read in {elapsed:.1f}s ({mb / max(elapsed, 1e-9):.1f} MB/s)", file=sys.stderr)
    return manifest


def build_manifest(records: list[Record], rejected: list[dict], duplicates: list[dict], cfg: IngestConfig) -> dict:
    by_modality = {m: {"files": 0, "bytes": 0} for m in MODALITIES}
    splits = {s: {"files": 0, "bytes": 0} for s in SPLITS}
    for r in records:
        by_modality[r.modality]["files"] += 1
        by_modality[r.modality]["bytes"] += r.length
        splits[r.split]["files"] += 1
        splits[r.split]["bytes"] += r.length
    return {
        "version": 1,
        "files": len(records),
        "bytes": sum(r.length for r in records),
        "by_modality": by_modality,
        "splits": splits,
        "rejected": sorted(rejected, key=lambda d: d["source"]),
        "duplicates": sorted(duplicates, key=lambda d: d["source"]),
        "ingest": asdict(cfg),
    }


class Dataset:
    """Read side of an ingested dataset: records + zero-copy byte views into the shards."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file() or not (self.root / INDEX).is_file():
            raise DataError(f"{self.root}: not an ingested dataset (no {MANIFEST} / {INDEX}); run `obf ingest` first")
        try:
            self.manifest = json.loads(manifest_path.read_text())
            with open(self.root / INDEX) as f:
                self.records = [Record(**json.loads(line)) for line in f if line.strip()]
        except (ValueError, TypeError) as e:
            raise DataError(f"{self.root}: corrupt dataset index ({e})") from None
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def shard(self, i: int) -> np.ndarray:
        if i not in self._shards:
            path = self.root / "shards" / f"{i:06d}.bin"
            if not path.is_file():
                raise DataError(f"{self.root}: missing shard {path.name}")
            self._shards[i] = np.memmap(path, dtype=np.uint8, mode="r")
        return self._shards[i]

    def file_bytes(self, r: Record) -> np.ndarray:
        """uint8 view (length,) of one stored file; no copy."""
        return self.shard(r.shard)[r.offset:r.offset + r.length]

    def select(self, *, split: str | None = None, modality: str | None = None) -> list[Record]:
        return [r for r in self.records
                if (split is None or r.split == split) and (modality is None or r.modality == modality)]
