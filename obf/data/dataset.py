"""Byte datasets on disk: the layout, its index records and manifest, and reading them back.

Layout of an ingested dataset dir (written by `obf.data.ingest`)::

    manifest.json      counts per modality and split, rejected inputs (the contract other code relies on)
    index.jsonl        one record per stored file: key, sha256, modality, format, split,
                       shard, offset, length
    shards/000000.bin  raw uint8 bytes of many files back to back (np.memmap-able)

`Dataset` reads a dir back without loading it: each file is a view into a memory-mapped shard.
A file's split is a function of the sha256 of its stored bytes (`split_of`), so adding files
never moves existing ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from obf.core import storage
from obf.core.config import IngestConfig
from obf.core.errors import ObfError
from obf.core.vocab import MODALITIES

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
INDEX = "index.jsonl"
_VERIFIED = ".verified"  # in a cached copy of a remote dataset: every file's sha256 was checked


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


def data_cache() -> Path:
    """Where datasets read from URLs are kept: $OBF_DATA_CACHE, else ~/.cache/obf/datasets."""
    return Path(os.environ.get("OBF_DATA_CACHE", Path.home() / ".cache" / "obf" / "datasets"))


def local_dataset(url: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local dir holding the ingested dataset at `url`: the dir itself when it is local; for any
    other fsspec URL (`s3://bucket/ds`), a copy in the cache, named by the sha256 of the dataset's
    manifest.json and index.jsonl (which names every file's sha256), downloaded once and verified
    before use: every stored file's bytes must hash to the sha256 its index record names (else a
    DataError, and nothing is kept)."""

    if storage.is_local(str(url)):
        return storage.local_path(str(url))
    url = str(url)
    try:
        manifest = storage.read_bytes(storage.join(url, MANIFEST))
        index = storage.read_bytes(storage.join(url, INDEX))
    except storage.NotFoundError:
        raise DataError(f"{url}: not an ingested dataset (no {MANIFEST} / {INDEX}); run `obf ingest` first") from None
    _check_agree(url, manifest, index)
    dest = Path(cache_dir or data_cache()) / content_sha256(manifest, index)[:32]
    if (dest / _VERIFIED).is_file():
        return dest
    with storage.cache_lock(dest):  # torchrun ranks sharing this cache download it once
        if not (dest / _VERIFIED).is_file():  # else another process verified it while this one waited
            _download_verified(url, dest, manifest, index)
    return dest


def _check_agree(url: str, manifest: bytes, index: bytes) -> None:
    """A dataset at a URL is written index first, manifest last (two PUTs: object stores commit
    one object at a time). An ingest that died between them leaves a new index beside the old
    manifest; refuse that pair, by their counts, rather than read a mix."""
    try:
        m = json.loads(manifest)
        lengths = [json.loads(line)["length"] for line in index.splitlines() if line.strip()]
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(f"{url}: corrupt dataset index or manifest ({e})") from None
    if (m.get("files"), m.get("bytes")) != (len(lengths), sum(lengths)):
        raise DataError(f"{url}: {INDEX} ({len(lengths)} files) does not match {MANIFEST} ({m.get('files')} files): "
                        "an ingest into it was interrupted; run `obf ingest` again")


def content_sha256(manifest: bytes, index: bytes) -> str:
    """What a dataset is, as one sha256: its manifest.json and its index.jsonl (which names every
    file's key, split and sha256), so two datasets with the same counts but other bytes differ."""
    return hashlib.sha256(manifest + b"\0" + index).hexdigest()


def dataset_sha256(root: str | Path) -> str:
    """`content_sha256` of the dataset dir at `root`."""
    return content_sha256((Path(root) / MANIFEST).read_bytes(), (Path(root) / INDEX).read_bytes())


def _download_verified(url: str, dest: Path, manifest: bytes, index: bytes) -> None:
    """Download the dataset at `url` beside `dest`, check every file's sha256, and move it in."""

    tmp = storage.temp_dir_beside(dest)
    try:
        (tmp / MANIFEST).write_bytes(manifest)
        (tmp / INDEX).write_bytes(index)
        (tmp / "shards").mkdir()
        ds = Dataset(tmp)
        for shard in sorted({r.shard for r in ds.records}):
            name = f"shards/{shard:06d}.bin"
            storage.download(storage.join(url, name), tmp / name)
        for r in ds.records:
            if hashlib.sha256(ds.file_bytes(r)).hexdigest() != r.sha256:
                raise DataError(f"{url}: {r.key} does not match its sha256 in {INDEX}; the dataset is corrupt")
        del ds
        (tmp / _VERIFIED).write_text("ok\n")
        storage.replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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

    def select(self, *, split: str | None = None, modality: str | None = None, paired: bool | None = None
               ) -> list[Record]:
        """Records of a split and modality; `paired` False leaves out the files of pairs (inputs and
        targets: they serve the `paired` objective, not `continue`), True keeps only them."""
        members = self.paired_keys() if paired is not None else set()
        return [r for r in self.records
                if (split is None or r.split == split) and (modality is None or r.modality == modality)
                and (paired is None or (r.key in members) == paired)]

    def paired_keys(self) -> set[str]:
        """Keys of every file that belongs to a pair, as its input or its target."""
        return {k for r in self.records if r.pair for k in (r.key, r.pair)}

    def pairs(self, split: str) -> list[tuple[Record, Record]]:
        """(input, target) of every pair of `split`; both files lie in it (ingest keeps pairs whole)."""
        by_key = {r.key: r for r in self.records if r.split == split}
        return [(r, by_key[r.pair]) for r in by_key.values() if r.pair and r.pair in by_key]

