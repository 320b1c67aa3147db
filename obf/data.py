"""Byte datasets: ingest files into memmap shards + an index, and read them back.

Layout of an ingested dataset dir::

    manifest.json      counts per modality and split, rejected inputs (the DESIGN.md contract)
    index.jsonl        one record per stored file: key, sha256, modality, format, split,
                       shard, offset, length
    shards/000000.bin  raw uint8 bytes of many files back to back (np.memmap-able)

Ingest reads each file once and holds at most a few files in memory, never the dataset.
Splits come from the sha256 of the content, so adding files never moves existing ones.

Paired examples (for the `paired` task) are files under an `inputs/` folder whose relative name
also exists under a sibling `targets/` folder, or the `{input, target}` lines of a `pairs.jsonl`
(keys relative to the source). Both files of a pair are stored as ordinary files too; the target
takes the split of its input so that a pair is never cut across splits.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from obf import storage
from obf.config import IngestConfig
from obf.errors import ObfError
from obf.formats import FormatError, canonicalize, sniff
from obf.vocab import (BOS, EOS, MODALITIES, N_SENTINELS, PAD, encoder_input, modality_id, paired_input,
                       sentinel_id, task_id)

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
    pair: str | None = None  # for the input of a pair: the key of its target file


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
        view = memoryview(data)
        while view:  # an unbuffered write may be partial
            view = view[self.f.write(view):]
        self.pos += len(data)
        return self.shard, offset

    def _next(self) -> None:
        self.close()
        self.shard += 1
        self.pos = 0
        self.f = open(self.root / f"{self.shard:06d}.bin", "wb", buffering=0)  # files are large: no extra copy

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


Loaded = tuple[storage.Entry, bytes | None, str | None, str | None]  # entry, data, sha256, error


def _read_entries(entries: list[storage.Entry], remote: bool) -> Iterator[Loaded]:
    """Yield (entry, bytes, sha256, error) in order.

    Reading and hashing run in a small thread pool (hashlib and file I/O release the GIL), so
    they overlap with the shard writes of the caller; the window bounds memory to a few files.
    """

    def load(e: storage.Entry) -> Loaded:
        try:
            data = storage.read_bytes(e.url)
        except storage.StorageError as err:
            return e, None, None, str(err).split(": ", 1)[-1]
        except OSError as err:
            return e, None, None, f"unreadable ({err.strerror or err})"
        return e, data, hashlib.sha256(data).hexdigest(), None

    window = 8 if remote else 3
    with ThreadPoolExecutor(max_workers=window) as pool:
        pending = []
        for e in entries:
            pending.append(pool.submit(load, e))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


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
    failure leaves any previous dataset untouched and no half-written dir behind.
    """
    out = Path(out_dir)
    entries = storage.list_files(source)
    if not entries:
        raise DataError(f"{source}: holds no file to ingest")
    pairs_file = [e for e in entries if e.key == "pairs.jsonl" and not e.error]
    pairs = find_pairs(entries, storage.read_bytes(pairs_file[0].url) if pairs_file else None)
    entries = [e for e in entries if e.key != "pairs.jsonl"]
    tmp = storage.temp_dir_beside(out)
    try:
        manifest = _ingest_into(entries, pairs, tmp, cfg, remote=not storage.is_local(source), progress=progress)
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
        for e, data, digest, err in _read_entries(readable, remote):
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
            assert digest is not None
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
    records = _link_pairs(records, pairs, {d["source"]: d["same_as"] for d in duplicates})
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
                 mean_span: float = 3.0, seed: int = 0) -> None:
        self.ds = ds
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
        start = 0 if rng.random() < 0.1 else int(rng.integers(0, len(data) + 1))
        return continue_example(data, start, r.modality, self.max_src_len, self.max_tgt_len, index)

    def _denoise(self, r: Record, data: np.ndarray, rng: np.random.Generator, index: int) -> Example:
        n = min(len(data), self.max_src_len - 2, self.denoise_len)
        if n < 2:
            return continue_example(data, 0, r.modality, self.max_src_len, self.max_tgt_len, index)
        start = int(rng.integers(0, len(data) - n + 1))
        payload, tgt = span_corrupt(np.asarray(data[start:start + n]), rng, self.noise_density, self.mean_span)
        return Example([modality_id(r.modality), task_id("denoise"), *payload], tgt, "denoise", r.modality, index)

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
