"""Byte datasets: ingest files into memmap shards + an index, and read them back.

Layout of an ingested dataset dir::

    manifest.json      counts per modality and split, rejected inputs (the contract other code relies on)
    index.jsonl        one record per stored file: key, sha256, modality, format, split,
                       shard, offset, length
    shards/000000.bin  raw uint8 bytes of many files back to back (np.memmap-able)

Ingest holds at most a few files in memory, never the dataset. Local folders are worked by
forked worker processes: without canonicalisation each file is read once, and every block is
hashed and written to the file's shard range (handed out in listing order before it is read;
the gaps that duplicates leave are closed at the end); with it, workers hash and canonicalise,
and files stored unchanged are copied into place by the kernel. Remote sources, and any ingest
run inside a multi-threaded host such as a Prefect task runner, are worked by threads that read
each file once. All paths give byte-identical datasets. Dedupe and splits go by the sha256 of
the stored (canonical) bytes, the bytes the model sees, so adding files never moves existing
ones and one picture in two formats is one file.

Paired examples (for the `paired` task) are files under an `inputs/` folder whose relative name
also exists under a sibling `targets/` folder, or the `{input, target}` lines of a `pairs.jsonl`
(keys relative to the source). Both files of a pair are stored as ordinary files too; the target
takes the split of its input so that a pair is never cut across splits.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from obf import storage
from obf.config import IngestConfig
from obf.errors import ObfError
from obf.formats import FormatError, Sniffed, canonicalize, sniff
from obf.system import usable_cpus
from obf.vocab import (BOS, EOS, MODALITIES, N_SENTINELS, PAD, encoder_input, modality_id, paired_input,
                       sentinel_id, task_id)

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
INDEX = "index.jsonl"


_T = TypeVar("_T")


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


def _pwrite_all(fd: int, data: bytes | memoryview, at: int) -> None:
    """Write all of `data` to `fd` at offset `at` (a single pwrite may write less)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


class _Layout:
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


class _ShardWriter:
    """Places file bytes in numbered shard files, starting a new shard past `shard_bytes`.

    `reserve` hands out (shard, offset) ranges in call order, so the layout depends only on the
    order of the files; the bytes of a range may be written later and by another process, since
    every write names its offset.
    """

    def __init__(self, root: Path, shard_bytes: int, expected_bytes: int = 0) -> None:
        self.root = root / "shards"
        self.root.mkdir(parents=True)
        self.layout = _Layout(shard_bytes)
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
        _pwrite_all(self.fd, data, offset)
        return shard, offset

    def _open(self, shard: int) -> None:
        self.close()
        self.shard = shard
        self.fd = os.open(self.path(shard), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        # Reserving the blocks up front spares the filesystem a block reservation per page
        # written (a quarter of the write time on ext4); close() trims what was not used.
        ahead = min(self.layout.limit, self.expected - self.placed)
        if ahead > 0 and sys.platform == "linux":
            with contextlib.suppress(OSError):
                os.posix_fallocate(self.fd, 0, ahead)

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
        _pwrite_all(dst, chunk, offset + done)
        done += len(chunk)
    return done


def _on_shards(jobs: list[tuple[str, str, int, int]], work: Callable[[str, int, int, int], _T]) -> list[_T]:
    """`work(source path, shard fd, offset, size)` for each (source, shard path, offset, size) job,
    in a worker process; each shard is opened once per batch of jobs."""
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
    return _on_shards(jobs, _copy_into)


class _Copier:
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


@dataclass
class _Loaded:
    """One source file after the worker stage: the sha256 of the bytes to store, and those bytes."""

    entry: storage.Entry
    sha256: str | None = None
    stored: bytes | None = None  # after canonicalisation when it is on
    sniffed: Sniffed | None = None
    error: str | None = None  # a reason to reject the file
    copy_from: str | None = None  # stored = the unchanged local file: copied by the kernel, not held
    place: tuple[int, int] | None = None  # (shard, offset): written there already by a worker


def _load(e: storage.Entry, cfg: IngestConfig, hold_plain: bool = True) -> _Loaded:
    """Read, hash, then sniff or canonicalise one file; any failure becomes a reject reason.

    With `hold_plain` False (local files in worker processes), bytes that are stored unchanged
    are not returned: the caller copies them from the file, so they never cross a process pipe.
    """
    try:
        data = storage.read_bytes(e.url)
    except storage.StorageError as err:
        return _Loaded(e, error=str(err).split(": ", 1)[-1])
    except OSError as err:
        return _Loaded(e, error=f"unreadable ({err.strerror or err})")
    if not data:
        return _Loaded(e, error="empty file")
    if len(data) > cfg.max_file_bytes:
        return _Loaded(e, error=f"larger than ingest.max_file_bytes ({len(data)} > {cfg.max_file_bytes})")
    if cfg.canonicalize:
        try:
            stored, sn = canonicalize(data, cfg)
        except FormatError as fe:
            return _Loaded(e, error=str(fe))
    else:
        stored, sn = data, sniff(data)
    # dedupe and split by the bytes the model sees: a PNG and a JPEG of one picture that become
    # the same BMP are one file, and never one in train and the other in validation
    digest = hashlib.sha256(stored).hexdigest()
    if stored is data and not hold_plain:
        e = e if len(data) == e.size else replace(e, size=len(data))
        return _Loaded(e, digest, None, sn, copy_from=str(storage.local_path(e.url)))
    return _Loaded(e, digest, stored, sn)


_HEAD = (1 << 16) + 1  # sniff() decides from the first 64 KiB; one byte more tells it the file goes on
_BLOCK = 1 << 18  # read, hash and write unit: small enough to stay in cache from read to write


def _store_file(path: str, dst: int, offset: int, size: int, buf: bytearray) -> tuple[int, str | None, Sniffed | None, str | None]:
    """Read the file at `path` once, hashing each block and writing it to the open shard `dst` at
    `offset`; returns (bytes read, sha256, sniffed, reject reason).

    One pass over each byte: the block is hashed and written while it is still in cache (this
    beat hashing first and copying later with `copy_file_range` by 1.4-1.9x on two cores). At
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
            if len(head) < _HEAD:
                head += block[:_HEAD - len(head)]
            _pwrite_all(dst, block[:max(0, size - done)], offset + done)
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
    buf = bytearray(_BLOCK)
    return _on_shards(jobs, lambda src, fd, offset, size: _store_file(src, fd, offset, size, buf))


def _load_chunk(chunk: list[storage.Entry], cfg: IngestConfig) -> list[tuple]:
    """Hash and canonicalise a run of local files in a worker process.

    Returns compact tuples, not `_Loaded` objects: the parent holds the entries already."""
    loaded = [_load(e, cfg, hold_plain=False) for e in chunk]
    return [(r.entry.size, r.sha256, r.stored, r.sniffed, r.error, r.copy_from) for r in loaded]


def _chunks(entries: list[storage.Entry], max_files: int = 32, max_bytes: int = 8 << 20) -> Iterator[list[storage.Entry]]:
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


def _process_pool_usable() -> bool:
    """Worker processes pay off on Linux, where they fork cheaply. Forking is only safe while no
    other thread can hold a lock the children might need: daemon helpers (tqdm's monitor) are
    fine, a Prefect task runner's worker threads are not, so inside a flow threads do the work."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    return sys.platform == "linux" and not others and usable_cpus() > 1


def _workers() -> int:
    return min(usable_cpus(), 8)


def _fork_pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=_workers(), mp_context=multiprocessing.get_context("fork"))


def _in_flight(pool: ProcessPoolExecutor, fn: Callable[..., _T], jobs: Iterable[tuple[Any, tuple]]
               ) -> Iterator[tuple[Any, _T]]:
    """`fn(*args)` in the worker pool for each (key, args) job, a few per worker in flight at a time
    (memory stays bounded by those), yielding (key, result) in submission order."""
    window = 4 * _workers()
    pending: deque[tuple[Any, Future[_T]]] = deque()
    for key, args in jobs:
        pending.append((key, pool.submit(fn, *args)))
        if len(pending) >= window:
            key, fut = pending.popleft()
            yield key, fut.result()
    while pending:
        key, fut = pending.popleft()
        yield key, fut.result()


def _load_local(entries: list[storage.Entry], cfg: IngestConfig, pool: ProcessPoolExecutor) -> Iterator[_Loaded]:
    """`_load` local files in worker processes, yielding results in order.

    Hashing and canonicalising are CPU work under the GIL's thumb; processes run them on every
    core, and the same workers copy unchanged files into the shards (`_Copier`).
    """
    for chunk, results in _in_flight(pool, _load_chunk, ((c, (c, cfg)) for c in _chunks(entries))):
        for e, (size, digest, stored, sn, error, copy_from) in zip(chunk, results):
            yield _Loaded(e if size == e.size else replace(e, size=size), digest, stored, sn, error, copy_from)


def _store_local(entries: list[storage.Entry], writer: _ShardWriter, pool: ProcessPoolExecutor) -> Iterator[_Loaded]:
    """Store plain local files in worker processes, each read once; yields results in order.

    Every file gets its shard range before it is read, in listing order (`writer.reserve`), so a
    worker writes the bytes it hashes straight to their place. A file that turns out to be a
    duplicate or unreadable leaves its range unused; `_compact` closes such gaps at the end. A
    file whose size changed since it was listed is an error: its range no longer fits it.
    """
    places = [writer.reserve(e.size) for e in entries]  # creates every shard file up front

    def jobs() -> Iterator[tuple[list[tuple[storage.Entry, tuple[int, int]]], tuple]]:
        first = 0
        for chunk in _chunks(entries):
            placed = list(zip(chunk, places[first:first + len(chunk)]))
            first += len(chunk)
            yield placed, ([(storage.local_str(e.url), writer.path(shard), offset, e.size)
                            for e, (shard, offset) in placed],)

    for placed, results in _in_flight(pool, _store_chunk, jobs()):
        for (e, place), (size, digest, sn, error) in zip(placed, results):
            if error is None and size != e.size:
                raise DataError(f"{e.key}: changed while being ingested; run ingest again")
            yield _Loaded(e, digest, None, sn, error, place=place)


def _compact(writer: _ShardWriter, records: list[Record]) -> list[Record]:
    """Close the gaps that duplicates and unreadable files left in the shards of a one-pass
    ingest: move each kept file to where the listing-order layout of the kept files alone puts
    it, which is the layout every other ingest path writes.

    Next-fit over a subsequence never places a file after its old place, so moving the files in
    order, each from front to back, never overwrites bytes that are still to be moved.
    """
    layout = _Layout(writer.layout.limit)
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
        _pwrite_all(dst, view[:n], dst_at + done)
        done += n


def _load_all(entries: list[storage.Entry], cfg: IngestConfig, remote: bool) -> Iterator[_Loaded]:
    """`_load` every entry in a small thread pool, yielding results in order.

    hashlib, file I/O and the media decoders release the GIL, so the workers run beside the
    caller's shard writes; the window bounds memory to a few files. Canonicalising a file that
    later turns out to be a duplicate is wasted work, but duplicates are rare and the decoders are
    what parallelises best.
    """
    window = 8 if remote else 4
    with ThreadPoolExecutor(max_workers=window) as pool:
        pending: deque[Future[_Loaded]] = deque()
        for e in entries:
            pending.append(pool.submit(_load, e, cfg, True))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def find_pairs(entries: list[storage.Entry], pairs_jsonl: bytes | None) -> dict[str, str]:
    """{input key: target key} from inputs/ + targets/ folders and an optional pairs.jsonl."""
    keys = {e.key for e in entries}
    pairs: dict[str, str] = {}
    for k in sorted(keys):
        parts = k.split("/")
        for i, part in enumerate(parts[:-1]):
            if part == "inputs":
                target = "/".join([*parts[:i], "targets", *parts[i + 1:]])
                if target in keys:
                    pairs[k] = target
                break
    if pairs_jsonl is not None:
        for n, line in enumerate(pairs_jsonl.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                inp, tgt = storage.safe_key(item["input"]), storage.safe_key(item["target"])
            except (ValueError, KeyError, TypeError, storage.StorageError) as e:
                raise DataError(f"pairs.jsonl line {n}: expected {{\"input\": KEY, \"target\": KEY}} ({e})") from None
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


def ingest(source: str, out_dir: str | Path, cfg: IngestConfig, *, progress: bool = True) -> dict:
    """Ingest every file under `source` (folder or fsspec URL) into `out_dir`; return the manifest.

    The dataset is built in a temp dir beside `out_dir` and renamed into place at the end, so a
    failure leaves any previous dataset untouched and no half-written dir behind. `out_dir` may
    only be new, empty or an earlier `obf ingest` output, never the source or around it.
    """
    out = Path(out_dir)
    storage.check_output_dir(out, "ingest", [source])
    entries = storage.list_files(source)
    if not entries:
        raise DataError(f"{source}: holds no file to ingest")
    pairs_file = [e for e in entries if e.key == "pairs.jsonl" and not e.error]
    pairs = find_pairs(entries, storage.read_bytes(pairs_file[0].url) if pairs_file else None)
    entries = [e for e in entries if e.key != "pairs.jsonl"]
    tmp = storage.temp_dir_beside(out)
    try:
        manifest = _ingest_into(entries, pairs, tmp, cfg, remote=not storage.is_local(source), progress=progress)
        storage.mark_output_dir(tmp, "ingest")
        storage.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _ingest_into(entries: list[storage.Entry], pairs: dict[str, str], root: Path, cfg: IngestConfig, *, remote: bool, progress: bool) -> dict:
    from tqdm import tqdm

    rejected: list[dict] = []
    duplicates: list[dict] = []
    seen: dict[str, str] = {}
    records: list[Record] = []
    readable = []
    for e in entries:
        reason = _precheck(e, cfg)
        if reason:
            rejected.append({"source": e.key, "reason": reason})
        else:
            readable.append(e)
    total = sum(e.size for e in readable)
    writer = _ShardWriter(root, cfg.shard_bytes, total)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="ingest", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    pool = _fork_pool() if not remote and _process_pool_usable() else None
    one_pass = pool is not None and not cfg.canonicalize  # workers write what they hash
    copier = _Copier(pool) if pool is not None and not one_pass else None
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
            records.append(Record(key=e.key, sha256=digest, modality=sn.modality, format=sn.format,
                                  split=split_of(digest, cfg.val_fraction, cfg.test_fraction),
                                  shard=shard, offset=offset, length=length))
            if len(records) % 64 == 0:  # a postfix per file costs more than reading a small one
                bar.set_postfix(files=len(records), refresh=False)
        if copier is not None:
            copier.finish()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
        writer.close()
    if one_pass and len(records) < len(readable):
        records = _compact(writer, records)
    elapsed = time.perf_counter() - start
    records = _link_pairs(records, pairs, {d["source"]: d["same_as"] for d in duplicates})
    with open(root / INDEX, "w") as f:
        for r in records:
            f.write(r.to_json() + "\n")
    manifest = build_manifest(records, rejected, duplicates, cfg)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if progress:
        mb = total / 1e6
        print(f"ingest: {len(records)} files stored, {len(duplicates)} duplicates, {len(rejected)} rejected, "
              f"{mb:.1f} MB read in {elapsed:.1f}s ({mb / max(elapsed, 1e-9):.1f} MB/s)", file=sys.stderr)
    return manifest


def _link_pairs(records: list[Record], pairs: dict[str, str], dup_of: dict[str, str]) -> list[Record]:
    """Set `pair` on pair inputs and give each target its input's split."""
    by_key = {r.key: r for r in records}
    target_split: dict[str, str] = {}
    linked: dict[str, str] = {}
    for inp, tgt in pairs.items():
        inp, tgt = dup_of.get(inp, inp), dup_of.get(tgt, tgt)
        if inp in by_key and tgt in by_key and inp != tgt:
            linked[inp] = tgt
            target_split[tgt] = by_key[inp].split
    out = []
    for r in records:
        if r.key in linked:
            r = replace(r, pair=linked[r.key])
        if r.key in target_split:
            r = replace(r, split=target_split[r.key])
        out.append(r)
    return out


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


# --------------------------------------------------------------------------- objectives -> batches


@dataclass(frozen=True)
class Example:
    """One training example: encoder ids and decoder targets (EOS included when the file ends)."""

    src: list[int]
    tgt: list[int]
    task: str
    modality: str
    index: int  # global sample index it was drawn for


@dataclass
class Batch:
    src: np.ndarray  # (B, S) int64, right-padded with PAD
    dec: np.ndarray  # (B, T) int64: [BOS] + tgt[:-1], PAD after the end
    tgt: np.ndarray  # (B, T) int64, PAD where there is no target (ignored by the loss)
    modalities: list[str]
    tasks: list[str]
    indices: list[int]


def _random_segmentation(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """`parts` positive ints summing to `total` (total >= parts), uniformly at random."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def span_corrupt(window: np.ndarray, rng: np.random.Generator, density: float, mean_span: float
                 ) -> tuple[list[int], list[int]]:
    """T5-style span corruption of a byte window -> (encoder payload ids, target ids incl. EOS)."""
    n = len(window)
    noise = min(max(1, round(n * density)), n - 1)
    spans = max(1, min(N_SENTINELS, round(noise / mean_span), n - noise))
    noise_lens = _random_segmentation(rng, noise, spans)
    keep_lens = _random_segmentation(rng, n - noise, spans)
    src: list[int] = []
    tgt: list[int] = []
    pos = 0
    for i in range(spans):
        src.extend(window[pos:pos + keep_lens[i]].tolist())
        pos += keep_lens[i]
        src.append(sentinel_id(i))
        tgt.append(sentinel_id(i))
        tgt.extend(window[pos:pos + noise_lens[i]].tolist())
        pos += noise_lens[i]
    tgt.append(EOS)
    return src, tgt


def denoise_window_len(tgt_len: int, density: float, mean_span: float) -> int:
    """Largest window whose corrupted spans + sentinels + EOS fit in `tgt_len` targets."""
    n = int((tgt_len - 2) / (density * (1 + 1 / mean_span)))
    while n > 2 and min(max(1, round(n * density)), n - 1) + max(1, round(round(n * density) / mean_span)) + 1 > tgt_len:
        n -= 1
    return max(2, n)


class ExampleSampler:
    """Draws examples of the `continue`, `denoise` and `paired` objectives from one split.

    Sample `i` is a pure function of (seed, i): resuming at a sample index reproduces the data
    exactly, and DDP ranks that take distinct indices see disjoint samples.
    """

    def __init__(self, ds: Dataset, split: str, *, max_src_len: int, max_tgt_len: int,
                 task_weights: dict[str, float], balance_modalities: bool = True,
                 modality_weights: dict[str, float] | None = None, noise_density: float = 0.15,
                 mean_span: float = 3.0, seed: int = 0, random_bytes_weight: float = 0.0) -> None:
        self.ds = ds
        self.random_bytes_weight = random_bytes_weight
        self.split = split
        self.max_src_len, self.max_tgt_len = max_src_len, max_tgt_len
        self.noise_density, self.mean_span = noise_density, mean_span
        self.seed = seed
        records = ds.select(split=split)
        if not records:
            raise DataError(f"{ds.root}: no file in split {split!r}")
        self.by_modality = {m: [r for r in records if r.modality == m] for m in MODALITIES}
        self.by_modality = {m: rs for m, rs in self.by_modality.items() if rs}
        by_key = {r.key: r for r in ds.records}
        self.pairs = [(r, by_key[r.pair]) for r in records if r.pair and r.pair in by_key]

        if modality_weights:
            for m, w in modality_weights.items():
                if w > 0 and m not in self.by_modality:
                    raise DataError(f"train.modality_weights.{m} > 0 but split {split!r} has no {m} file")
            mw = {m: float(modality_weights.get(m, 0.0)) for m in self.by_modality}
        elif balance_modalities:
            mw = {m: 1.0 for m in self.by_modality}
        else:
            mw = {m: float(sum(r.length for r in rs)) for m, rs in self.by_modality.items()}
        if sum(mw.values()) <= 0:
            raise DataError("train.modality_weights: no positive weight for a modality present in the data")
        self.modalities = list(mw)
        self.modality_p = np.array([mw[m] for m in self.modalities]) / sum(mw.values())
        # Within a modality, files are drawn by length so that every byte is equally likely.
        self.file_p = {m: np.array([r.length for r in rs], float) / sum(r.length for r in rs)
                       for m, rs in self.by_modality.items()}

        tw = {t: float(w) for t, w in task_weights.items() if w > 0}
        if "paired" in tw and not self.pairs:
            raise DataError(f"train.task_weights.paired > 0 but split {split!r} has no paired files "
                            "(inputs/ + targets/ folders or pairs.jsonl)")
        self.tasks = list(tw)
        self.task_p = np.array([tw[t] for t in self.tasks]) / sum(tw.values())
        self.denoise_len = denoise_window_len(max_tgt_len, noise_density, mean_span)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def example(self, index: int, task: str | None = None) -> Example:
        rng = self.rng(index)
        task = task or self.tasks[rng.choice(len(self.tasks), p=self.task_p)]
        if task == "paired":
            inp, tgt = self.pairs[rng.integers(len(self.pairs))]
            return self._paired(inp, tgt, index)
        m = self.modalities[rng.choice(len(self.modalities), p=self.modality_p)]
        rs = self.by_modality[m]
        r = rs[rng.choice(len(rs), p=self.file_p[m])]
        data = self.ds.file_bytes(r)
        if task == "denoise":
            return self._denoise(r, data, rng, index)
        if self.random_bytes_weight and rng.random() < self.random_bytes_weight:
            return self._random_bytes(data, rng, index)
        start = 0 if rng.random() < 0.1 else int(rng.integers(0, len(data) + 1))
        return continue_example(data, start, r.modality, self.max_src_len, self.max_tgt_len, index)

    def _denoise(self, r: Record, data: np.ndarray, rng: np.random.Generator, index: int) -> Example:
        n = min(len(data), self.max_src_len - 2, self.denoise_len)
        if n < 2:
            return continue_example(data, 0, r.modality, self.max_src_len, self.max_tgt_len, index)
        start = int(rng.integers(0, len(data) - n + 1))
        payload, tgt = span_corrupt(np.asarray(data[start:start + n]), rng, self.noise_density, self.mean_span)
        return Example([modality_id(r.modality), task_id("denoise"), *payload], tgt, "denoise", r.modality, index)

    def _random_bytes(self, data: np.ndarray, rng: np.random.Generator, index: int) -> Example:
        """A `continue` example over uniform random bytes behind the real start (up to 64 bytes) of a
        file: what a compressed or encrypted payload looks like to a byte model. The context always
        holds some of the random bytes, so the lesson is "after bytes that look random, expect any
        byte" (about 8 bits each), not "after this header". This is what keeps the model calibrated
        on payloads it cannot predict instead of confidently wrong (worse than storing them)."""
        head = bytes(data[:int(rng.integers(0, 65))])
        noise = rng.integers(0, 256, self.max_src_len + self.max_tgt_len, dtype=np.uint8).tobytes()
        start = len(head) + int(rng.integers(16, self.max_src_len))
        return continue_example(np.frombuffer(head + noise, np.uint8), start, "binary", self.max_src_len,
                                self.max_tgt_len, index)

    def _paired(self, inp: Record, tgt: Record, index: int) -> Example:
        src = paired_input(bytes(self.ds.file_bytes(inp)), inp.modality, tgt.modality, self.max_src_len)
        return Example(src, window_targets(self.ds.file_bytes(tgt), 0, self.max_tgt_len), "paired", tgt.modality, index)

    def batch(self, indices: list[int]) -> Batch:
        return collate([self.example(i) for i in indices])


def window_targets(data: np.ndarray | bytes, start: int, max_tgt_len: int) -> list[int]:
    """Targets of the decoder window at `start`: up to max_tgt_len bytes, EOS if the file ends."""
    chunk = list(bytes(data[start:start + max_tgt_len]))
    if start + max_tgt_len > len(data):
        chunk.append(EOS)
    return chunk


def continue_example(data: np.ndarray, start: int, modality: str, max_src_len: int, max_tgt_len: int,
                     index: int = 0) -> Example:
    """The `continue` objective: encoder sees the bytes before `start`, decoder predicts from `start`."""
    ctx = bytes(data[max(0, start - (max_src_len - 2)):start])
    return Example(encoder_input(modality, "continue", ctx, max_src_len),
                   window_targets(data, start, max_tgt_len), "continue", modality, index)


def collate(examples: list[Example], multiple: int = 8) -> Batch:
    """Pad a list of examples into arrays; lengths rounded up to `multiple` for kernel-friendly shapes."""
    s = max(len(e.src) for e in examples)
    s += (-s) % multiple
    t = max(len(e.tgt) for e in examples)
    src = np.full((len(examples), s), PAD, dtype=np.int64)
    dec = np.full((len(examples), t), PAD, dtype=np.int64)
    tgt = np.full((len(examples), t), PAD, dtype=np.int64)
    for i, e in enumerate(examples):
        src[i, :len(e.src)] = e.src
        tgt[i, :len(e.tgt)] = e.tgt
        dec[i, 0] = BOS
        dec[i, 1:len(e.tgt)] = e.tgt[:-1]
    return Batch(src, dec, tgt, [e.modality for e in examples], [e.task for e in examples],
                 [e.index for e in examples])
