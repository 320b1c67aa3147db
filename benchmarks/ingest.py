"""Ingest throughput (MB/s) on a generated ~500 MB folder of mixed files, beside `cat` as the ceiling.

    python benchmarks/ingest.py [--mb 500]

Files are copies of the embedded sample corpus (text, binary, media) with a unique tail so that
none is deduplicated. Both runs read from a warm page cache; `cat` and ingest alternate three
times and the best of each is reported; dirty pages are flushed (`sync`) before every timed run.
Ingest runs without canonicalisation (the aim: at least half of the ceiling) and, for
reference, with it on a 50 MB slice, three times: the first also starts the fork server of the
worker processes, as every new process does once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402
from obf.core.config import IngestConfig
from obf.data.ingest import ingest

RAW = Path(__file__).resolve().parents[1] / "data" / "raw"


def make_folder(dst: Path, total_mb: int) -> int:
    """Fill `dst` with ~total_mb of unique files made from the sample corpus; returns bytes written."""
    seeds = [p for p in sorted(RAW.rglob("*")) if p.is_file() and p.suffix != ".md"]
    blobs = [(p, p.read_bytes()) for p in seeds]
    written, i = 0, 0
    target = total_mb * 1_000_000
    while written < target:
        p, data = blobs[i % len(blobs)]
        body = data * max(1, 200_000 // max(1, len(data)))  # ~200 KB files
        sub = dst / p.parent.name / f"{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        out = sub / f"{i:06d}{p.suffix}"
        out.write_bytes(body + f"\n#{i}\n".encode())
        written += len(body) + 10
        i += 1
    return written


def quiesce() -> None:
    """Flush dirty pages left by earlier steps (the generated folder, the last run's shards), so
    the kernel's background writeback of one run is not charged to the next."""
    os.sync()


def time_cat(folder: Path) -> float:
    quiesce()
    t = time.perf_counter()
    subprocess.run(f"find {folder} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)
    return time.perf_counter() - t


def time_ingest(folder: Path, out: Path, cfg: IngestConfig) -> float:
    quiesce()
    t = time.perf_counter()
    ingest(str(folder), out, cfg, progress=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="obf-bench-ingest-"))
    try:
        src = work / "src"
        total = make_folder(src, args.mb)
        files = sum(1 for _ in src.rglob("*") if _.is_file())
        mb = total / 1e6
        plain = IngestConfig(canonicalize=False, max_file_bytes=64 * 1024 * 1024)
        cat_s, ing_s = [], []
        time_cat(src)  # warm the page cache
        for _ in range(3):
            cat_s.append(time_cat(src))
            ing_s.append(time_ingest(src, work / "ds", plain))
            shutil.rmtree(work / "ds")
        cat_best, ing_best = min(cat_s), min(ing_s)
        # canonicalisation on a slice: decoding media costs far more than reading. The first run
        # also starts the worker processes' fork server (once per process), so it is kept apart.
        sl = work / "slice"
        slice_bytes = make_folder(sl, max(1, args.mb // 10))
        canon_s = []
        for _ in range(3):
            canon_s.append(time_ingest(sl, work / "ds2", IngestConfig(max_file_bytes=64 * 1024 * 1024)))
            shutil.rmtree(work / "ds2")
        res = {
            "files": files, "mb": mb,
            "cat_mb_s": mb / cat_best, "ingest_mb_s": mb / ing_best, "ratio_vs_cat": cat_best / ing_best,
            "cat_seconds": cat_s, "ingest_seconds": ing_s,
            "canonicalize_slice_mb": slice_bytes / 1e6, "canonicalize_mb_s": slice_bytes / 1e6 / min(canon_s),
            "canonicalize_first_mb_s": slice_bytes / 1e6 / canon_s[0], "canonicalize_seconds": canon_s,
        }
        print(f"{files} files, {mb:.0f} MB (warm page cache)")
        print(f"  cat (ceiling)           {res['cat_mb_s']:8.1f} MB/s")
        print(f"  obf ingest              {res['ingest_mb_s']:8.1f} MB/s   = {res['ratio_vs_cat']:.2f} x cat")
        print(
            f"  obf ingest, canonical   {res['canonicalize_mb_s']:8.1f} MB/s   "
            f"({res['canonicalize_slice_mb']:.0f} MB slice; the first run, which starts the fork server: "
            f"{res['canonicalize_first_mb_s']:.1f} MB/s)"
        )
        save("ingest", res)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
