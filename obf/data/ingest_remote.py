"""Datasets at URLs: the checks and writes that put an ingested dataset on object storage.

An output URL may only hold what `obf ingest` wrote; a dataset built locally is uploaded shard by
shard under new numbers, then its index, output mark and manifest (last), and only then are the
shards no record names removed, so a failed run leaves the old dataset whole.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from obf.core import storage
from obf.data.dataset import INDEX, MANIFEST, Dataset, Record
from obf.data.shards import existing_shards


def check_remote_output(out: str, source: str) -> None:
    """Refuse, with one line, a URL output that holds what obf ingest did not write, or that is,
    holds or lies inside the source."""
    a, b = out.rstrip("/") + "/", source.rstrip("/") + "/"
    if a.startswith(b) or b.startswith(a):
        raise storage.StorageError(f"{out}: the output {'is' if a == b else 'overlaps'} the input {source}; "
                                   "choose another output")
    try:
        found = storage.list_files(out)
    except storage.NotFoundError:
        return
    if not found:
        return
    try:
        owner = json.loads(storage.read_bytes(storage.join(out, storage.OUTPUT_MARK)))["command"]
    except (storage.StorageError, ValueError, KeyError, TypeError):
        owner = None
    if owner != "ingest":
        raise storage.StorageError(f"{out}: holds files obf ingest did not write; choose another output "
                                   "(obf replaces only what it wrote)")


def upload(tmp: Path, out: str, first: int) -> dict:
    """Copy a dataset built locally in `tmp` to the URL `out` (one PUT per shard, numbered from
    `first`), then its index and manifest (last); returns the manifest."""

    records = Dataset(tmp).records
    for shard in sorted({r.shard for r in records}):
        storage.write_bytes_atomic(storage.join(out, f"shards/{first + shard:06d}.bin"),
                                   (tmp / "shards" / f"{shard:06d}.bin").read_bytes())
    records = [replace(r, shard=first + r.shard) for r in records]
    manifest = json.loads((tmp / MANIFEST).read_text())
    write_index_and_manifest(out, records, manifest)
    return manifest


def write_index_and_manifest(root: str, records: list[Record], manifest: dict) -> None:
    """The dataset's index, output mark and manifest, the manifest last: until it is written, a
    reader sees the dataset that was there before (or none)."""
    def put(name: str, text: str) -> None:
        storage.write_bytes_atomic(storage.join(root, name), text.encode())

    put(INDEX, "".join(r.to_json() + "\n" for r in records))
    put(storage.OUTPUT_MARK, json.dumps({"command": "ingest"}) + "\n")
    put(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def remove_unused_shards(out: str) -> None:
    """After a new manifest: remove the shards no record names (an older dataset's, a dead run's)."""

    used = {json.loads(line)["shard"] for line in storage.read_bytes(storage.join(out, INDEX)).splitlines() if line}
    for n in existing_shards(storage.join(out, "shards")):
        if n not in used:
            storage.remove(storage.join(out, f"shards/{n:06d}.bin"))
