"""Shard files: where ingest puts each file's bytes, and the kernel-side copies that put them there.

A dataset's bytes live in `shards/NNNNNN.bin`, many files back to back. `ShardWriter` hands out
ranges (in listing order, before a file is read, so worker processes can write in parallel),
`Copier` has worker processes copy unchanged local files into their ranges with
`copy_file_range` (falling back to read/write where the kernel refuses), and `compact` closes
the gaps that duplicates leave once the set of stored files is known.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from obf.core import storage
from obf.data.dataset import DataError, Record

_T = TypeVar("_T")


def pwrite_all(fd: int, data: bytes | memoryview, at: int) -> None:
    """Write all of `data` to `fd` at offset `at` (a single pwrite may write less)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def reserve_blocks(fd: int, size: int) -> None:
    """Reserve `size` bytes of disk for the new file `fd` before writing it (the file's length
    becomes `size`; the writer trims what it did not use). Writing into reserved blocks spares
    the filesystem a block reservation per page written: a quarter of the write time on ext4.
    Linux only; elsewhere, or where the filesystem refuses, the file grows as it is written."""
    if size > 0 and sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)


class MediaLayout:
    """Where each file of a dataset goes: next-fit over numbered shards. A file goes at the end of
    the current shard unless it would take that shard past `limit` while it holds something
    already; then it starts the next shard. Ingest and compaction share this one rule."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []  # bytes placed in each shard so far

    def place(self, size: int) -> tuple[int, int]:
        """The (shard, offset) of the next `size` bytes."""
        if not self.sizes or (self.sizes[-1] > 0 and self.sizes[-1] + size > self.limit):
            self.sizes.append(0)
        offset = self.sizes[-1]
        self.sizes[-1] += size
        return len(self.sizes) - 1, offset


class ShardWriter:
    """Places file bytes in numbered shard files, starting a new shard past `shard_bytes`.

    `reserve` hands out (shard, offset) ranges in call order, so the layout depends only on the
    order of the files; the bytes of a range may be written later and by another process, since
    every write names its offset.
    """

    def __init__(self, root: Path, shard_bytes: int, expected_bytes: int = 0) -> None:
        self.root = root / "shards"
        self.root.mkdir(parents=True)
        self.layout = MediaLayout(shard_bytes)
        self.expected = expected_bytes  # a hint for preallocation (the sum of the source sizes)
        self.placed = 0
        self.shard = -1  # the shard file open for writing
        self.fd: int | None = None

    def path(self, shard: int) -> str:
        return f"{self.root}{os.sep}{shard:06d}.bin"

    def reserve(self, size: int) -> tuple[int, int]:
        """The (shard, offset) where the next `size` bytes go; opens a new shard file as needed."""
        shard, offset = self.layout.place(size)
        if shard != self.shard:
            self._open(shard)
        self.placed += size
        return shard, offset

    def write(self, data: bytes) -> tuple[int, int]:
        shard, offset = self.reserve(len(data))
        assert self.fd is not None
        pwrite_all(self.fd, data, offset)
        return shard, offset

    def _open(self, shard: int) -> None:
        self.close()
        self.shard = shard
        self.fd = os.open(self.path(shard), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        reserve_blocks(self.fd, min(self.layout.limit, self.expected - self.placed))  # close() trims the rest

    def close(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, self.layout.sizes[self.shard])
            os.close(self.fd)
            self.fd = None


def _copy_into(src_path: str, dst: int, offset: int, size: int) -> bool:
    """Copy the file at `src_path` into the open shard `dst` at `offset`; False when it no
    longer has `size` bytes (it changed after it was hashed).

    The kernel copies page cache to page cache (`copy_file_range`), so the bytes never enter
    Python; where that is not supported, a pread/pwrite loop does the same.
    """
    src = os.open(src_path, os.O_RDONLY)
    try:
        done = _copy_range(src, dst, size, offset)
        return done == size and os.fstat(src).st_size == size
    finally:
        os.close(src)


def _copy_range(src: int, dst: int, size: int, offset: int) -> int:
    """Copy up to `size` bytes from the start of `src` to `dst` at `offset`; returns the count."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, done, offset + done)
            if n == 0:
                return done
            done += n
        return done
    except (AttributeError, OSError) as e:  # no copy_file_range here (macOS, old kernels, cross-device)
        if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while done < size:
        chunk = os.pread(src, min(1 << 20, size - done), done)
        if not chunk:
            break
        pwrite_all(dst, chunk, offset + done)
        done += len(chunk)
    return done


def on_shards(jobs: list[tuple[str, str, int, int]], work: Callable[[str, int, int, int], _T]) -> list[_T]:
    """`work(source path, shard fd, offset, size)` for each (source, shard path, offset, size) job,
    in a worker (process or thread); each shard is opened once per batch of jobs."""
    shards: dict[str, int] = {}
    try:
        out = []
        for src, shard, offset, size in jobs:
            if shard not in shards:
                shards[shard] = os.open(shard, os.O_WRONLY)
            out.append(work(src, shards[shard], offset, size))
        return out
    finally:
        for fd in shards.values():
            os.close(fd)


def _copy_batch(jobs: list[tuple[str, str, int, int]]) -> list[bool]:
    """`_copy_into` a batch of (source, shard path, offset, size) jobs."""
    return on_shards(jobs, _copy_into)


class Copier:
    """Runs the shard copies of plain local files in the worker pool, in batches, and names the
    first file that changed after it was hashed."""

    def __init__(self, pool: ProcessPoolExecutor) -> None:
        self.pool = pool
        self.jobs: list[tuple[str, str, int, int]] = []
        self.keys: list[str] = []
        self.pending: list[tuple[list[str], Future[list[bool]]]] = []
        self.bytes = 0

    def add(self, key: str, job: tuple[str, str, int, int]) -> None:
        self.jobs.append(job)
        self.keys.append(key)
        self.bytes += job[3]
        if len(self.jobs) >= 32 or self.bytes >= 8 << 20:
            self._submit()

    def _submit(self) -> None:
        if self.jobs:
            self.pending.append((self.keys, self.pool.submit(_copy_batch, self.jobs)))
        self.jobs, self.keys, self.bytes = [], [], 0

    def finish(self) -> None:
        """Wait for every copy; raise DataError naming a file that changed meanwhile."""
        self._submit()
        for keys, fut in self.pending:
            self._check(keys, fut.result())
        self.pending = []

    @staticmethod
    def _check(keys: list[str], ok: list[bool]) -> None:
        for key, good in zip(keys, ok):
            if not good:
                raise DataError(f"{key}: changed while being ingested; run ingest again")




def compact(writer: ShardWriter, records: list[Record]) -> list[Record]:
    """Close the gaps that duplicates and unreadable files left in the shards of a one-pass
    ingest: move each kept file to where the listing-order layout of the kept files alone puts
    it, which is the layout every other ingest path writes.

    Next-fit over a subsequence never places a file after its old place, so moving the files in
    order, each from front to back, never overwrites bytes that are still to be moved.
    """
    layout = MediaLayout(writer.layout.limit)
    buf = bytearray(1 << 20)
    fds: dict[int, int] = {}

    def fd(shard: int) -> int:
        if shard not in fds:
            fds[shard] = os.open(writer.path(shard), os.O_RDWR)
        return fds[shard]

    out = []
    try:
        for r in records:
            shard, offset = layout.place(r.length)
            if (shard, offset) != (r.shard, r.offset):
                _move(fd(r.shard), r.offset, fd(shard), offset, r.length, buf)
                r = replace(r, shard=shard, offset=offset)
            out.append(r)
    finally:
        for f in fds.values():
            os.close(f)
    for shard in range(len(writer.layout.sizes)):
        if shard < len(layout.sizes):
            os.truncate(writer.path(shard), layout.sizes[shard])
        else:
            os.unlink(writer.path(shard))
    return out


def _move(src: int, src_at: int, dst: int, dst_at: int, size: int, buf: bytearray) -> None:
    """Copy `size` bytes between shard files front to back (safe when the ranges overlap and the
    destination lies before the source)."""
    view = memoryview(buf)
    done = 0
    while done < size:
        n = os.preadv(src, [view[:min(len(buf), size - done)]], src_at + done)
        if n == 0:
            raise DataError("a shard ended early while ingest closed its gaps; run ingest again")
        pwrite_all(dst, view[:n], dst_at + done)
        done += n


def existing_shards(shards_url: str) -> list[int]:
    """The shard numbers already under `shards_url` (a dataset being replaced, or a dead run's)."""
    try:
        names = [e.key for e in storage.list_files(shards_url)]
    except storage.StorageError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".bin") and n[:-4].isdigit())
