"""One source file read, hashed, and sniffed or canonicalised: the unit of work every ingest
path shares (local processes, URL threads, Dask workers). Any failure becomes a reject reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from obf.core import storage
from obf.core.config import IngestConfig
from obf.formats.canonical import canonicalize
from obf.formats.sniff import FormatError, Sniffed, sniff

HEAD = (1 << 16) + 1  # sniff() decides from the first 64 KiB; one byte more tells it the file goes on
BLOCK = 1 << 18  # read, hash and write unit of a streamed file: small enough to stay in cache from read to write


@dataclass
class Loaded:
    """One source file after the worker stage: the sha256 of the bytes to store, and those bytes."""

    entry: storage.Entry
    sha256: str | None = None
    stored: bytes | None = None  # after canonicalisation when it is on
    sniffed: Sniffed | None = None
    error: str | None = None  # a reason to reject the file
    copy_from: str | None = None  # stored = the unchanged local file: copied by the kernel, not held
    place: tuple[int, int] | None = None  # (shard, offset): written there already by a worker


def load_file(e: storage.Entry, cfg: IngestConfig, hold_plain: bool = True) -> Loaded:
    """Read, hash, then sniff or canonicalise one file; any failure becomes a reject reason.

    With `hold_plain` False (local files in worker processes), bytes that are stored unchanged
    are not returned: the caller copies them from the file, so they never cross a process pipe.
    """
    try:
        data = storage.read_bytes(e.url)
    except storage.StorageError as err:
        return Loaded(e, error=str(err).split(": ", 1)[-1])
    except OSError as err:
        return Loaded(e, error=f"unreadable ({err.strerror or err})")
    if not data:
        return Loaded(e, error="empty file")
    if len(data) > cfg.max_file_bytes:
        return Loaded(e, error=f"larger than ingest.max_file_bytes ({len(data)} > {cfg.max_file_bytes})")
    if cfg.canonicalize:
        try:
            stored, sn = canonicalize(data, cfg)
        except FormatError as fe:
            return Loaded(e, error=str(fe))
    else:
        stored, sn = data, sniff(data)
    # dedupe and split by the bytes the model sees: a PNG and a JPEG of one picture that become
    # the same BMP are one file, and never one in train and the other in validation
    digest = hashlib.sha256(stored).hexdigest()
    if stored is data and not hold_plain:
        e = e if len(data) == e.size else replace(e, size=len(data))
        return Loaded(e, digest, None, sn, copy_from=str(storage.local_path(e.url)))
    return Loaded(e, digest, stored, sn)
