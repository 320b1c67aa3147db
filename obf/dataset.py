"""Byte datasets on disk: the layout, its index records and manifest, and reading them back.

Layout of an ingested dataset dir (written by `obf.ingest`)::

    manifest.json      counts per modality and split, rejected inputs (the contract other code relies on)
    index.jsonl        one record per stored file: key, sha256, modality, format, split,
                       shard, offset, length
    shards/000000.bin  raw uint8 bytes of many files back to back (np.memmap-able)

`Dataset` reads a dir back without loading it: each file is a view into a memory-mapped shard.
A file's split is a function of the sha256 of its stored bytes (`split_of`), so adding files
never moves existing ones.
"""

from __future__ import annotations


import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from obf.config import IngestConfig
from obf.errors import ObfError
from obf.vocab import (MODALITIES)

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
INDEX = "index.jsonl"


class DataError(ObfError):
    """A dataset is missing, empty or malformed, or a source holds nothing to ingest."""


@dataclass(frozen=True)
class Record:
    """One stored file of a dataset."""

    key: str  # relative key in the source
    sha256: str  # of the stored (canonical) bytes (dedupe + split)
    modality: str
    format: str  # format of the stored bytes (after canonicalisation)
    split: str
    shard: int
    offset: int
    length: int
    pair: str | None = None  # for the input of a pair: the key of its target file

    def to_json(self) -> str:
        """One `index.jsonl` line (sorted keys). Cheaper than `dataclasses.asdict`, which
        deep-copies every field and was a sixth of ingest time on many small files."""
        return json.dumps({f: getattr(self, f) for f in _RECORD_FIELDS}, sort_keys=True)


_RECORD_FIELDS = tuple(f.name for f in fields(Record))


def split_of(sha256_hex: str, val_fraction: float, test_fraction: float) -> str:
    """Split from the content hash alone: stable when files are added or renamed."""
    u = int(sha256_hex[:16], 16) / float(1 << 64)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"



def build_manifest(records: list[Record], rejected: list[dict], duplicates: list[dict], cfg: IngestConfig) -> dict:
    by_modality = {m: {"files": 0, "bytes": 0} for m in MODALITIES}
    splits = {s: {"files": 0, "bytes": 0} for s in SPLITS}
    n_pairs = {s: 0 for s in SPLITS}
    for r in records:
        if r.pair:
            n_pairs[r.split] += 1
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
        "pairs": n_pairs,
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

