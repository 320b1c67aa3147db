"""Ingest on Dask: MB/s with 1, 2 and 4 workers of a LocalCluster beside the local ingest, and
the driver's peak memory, on generated folders.

    python benchmarks/ingest_dask.py [--mb 50 500] [--canonicalize] [--media] [--rounds 3]

Two corpora:
- default: the folders of benchmarks/ingest.py (copies of the sample corpus with a unique tail,
  mostly text): storing them is reading, hashing and writing, so it measures I/O and overheads;
- `--media`: distinct photos (PNG, 320x240) and recordings (WAV, 44.1 kHz stereo, 2 s), which
  canonicalisation decodes, resizes and resamples: CPU-bound, the work a cluster is for.

Each ingest runs in a fresh process (`obf.data.ingest.ingest`, as `obf ingest` runs it), so its peak
resident memory is its own: for the Dask runs that is the driver alone (listing, the records of
every file, the index and manifest), for the local ingest the parent of its worker processes.
Workers are processes with one thread each (`LocalCluster(processes=True)`), started and warmed
(obf imported) before the timed runs, as a long-lived cluster is; they write their shard parts to
a local folder. The local ingest uses one worker process per core, as it does by default. The
configurations alternate for `--rounds` rounds, each run after `sync`, and the best of each is
reported (as benchmarks/ingest.py does): on a VM disk, a run that follows another's writes is
slowed by their writeback, whichever it is. Saves results/ingest_dask[_media].json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402
from benchmarks.ingest import make_folder  # noqa: E402

RUN = """
import json, resource, sys, time
from obf.config import IngestConfig
from obf.data.ingest import ingest
src, out, dask, canon = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4] == "1"
cfg = IngestConfig(canonicalize=canon, max_file_bytes=64 * 1024 * 1024)
if dask:
    import distributed  # noqa: F401  (start-up, not ingest: the timed part is the ingest alone, as for local)
t = time.perf_counter()
m = ingest(src, out, cfg, progress=False, dask=dask)
print(json.dumps({"seconds": time.perf_counter() - t, "files": m["files"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _warm() -> None:
    import obf.data.ingest_dask  # noqa: F401  (and through it loading, canonical, the decoders)


def make_media_folder(dst: Path, total_mb: int) -> int:
    """~total_mb of distinct PNG photos and WAV recordings (seeded); returns bytes written."""
    import io
    import wave

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    t = np.arange(2 * 44100) / 44100
    written, i = 0, 0
    while written < total_mb * 1_000_000:
        sub = dst / ("image" if i % 2 == 0 else "audio") / f"{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        b = io.BytesIO()
        if i % 2 == 0:
            base = np.stack([(xx * (i % 7 + 1)) % 256, (yy * (i % 5 + 1)) % 256, (xx + yy + i) % 256], -1)
            pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(b, "PNG")
            name = f"{i:06d}.png"
        else:
            x = (np.sin(2 * np.pi * (110 + i % 880) * t) * 6000 + rng.normal(0, 600, t.size)).astype("<i2")
            with wave.open(b, "wb") as w:
                w.setnchannels(2)
                w.setsampwidth(2)
                w.setframerate(44100)
                w.writeframes(np.stack([x, x], 1).tobytes())
            name = f"{i:06d}.wav"
        (sub / name).write_bytes(b.getvalue())
        written += b.tell()
        i += 1
    return written


def run_ingest(src: Path, out: Path, dask: str | None, canonicalize: bool) -> dict:
    os.sync()
    r = subprocess.run([sys.executable, "-c", RUN, str(src), str(out), dask or "", "1" if canonicalize else "0"],
                       capture_output=True, text=True, check=True)
    # what must equal the local ingest's: every record but its shard placement, and the manifest's lists
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("shard", "offset")}
            for line in (out / "index.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    digest = hashlib.sha256(json.dumps([rows, manifest["duplicates"], manifest["rejected"]]).encode()).hexdigest()
    shutil.rmtree(out, ignore_errors=True)
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "records_sha256": digest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[50, 500])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--canonicalize", action="store_true",
                    help="canonicalise media (on for --media) instead of storing bytes")
    ap.add_argument("--media", action="store_true", help="distinct photos and recordings (CPU-bound)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is reported")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    canonicalize = args.canonicalize or args.media
    results = []
    work = Path(tempfile.mkdtemp(prefix="obf-bench-ingest-dask-"))

    def timed_run(name: str, src: Path) -> dict:
        """One ingest; a Dask one on a cluster of its own, started and warmed first and closed
        after, so no other cluster's processes share the cores while it runs."""
        if name == "local":
            return run_ingest(src, work / "ds", None, canonicalize)
        with LocalCluster(n_workers=int(name.split("_")[1]), threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:
            with Client(cluster.scheduler_address) as client:
                client.run(_warm)
            return run_ingest(src, work / "ds", cluster.scheduler_address, canonicalize)

    try:
        for mb in args.mb:
            src = work / f"src{mb}"
            total = (make_media_folder(src, mb) if args.media else make_folder(src, mb)) / 1e6
            subprocess.run(f"find {src} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)
            runs: dict[str, list[dict]] = {}
            names = ["local", *(f"dask_{n}" for n in args.workers)]
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:  # a new order each round
                    runs.setdefault(name, []).append(timed_run(name, src))
            row: dict = {"mb": total, "canonicalize": canonicalize, "media": args.media, "rounds": args.rounds}
            for name in names:
                best = min(runs[name], key=lambda d: d["seconds"])
                row[name] = {**best, "mb_s": total / best["seconds"], "seconds_all": [d["seconds"] for d in runs[name]]}
            local = row["local"]
            print(f"{total:.0f} MB: local ingest {local['mb_s']:.1f} MB/s, peak {local['peak_rss_mb']:.0f} MB")
            for n in args.workers:
                d = row[f"dask_{n}"]
                d["same_records_as_local"] = all(x["records_sha256"] == row["local"]["records_sha256"]
                                                 for x in runs[f"dask_{n}"])
                print(f"{total:.0f} MB: dask, {n} worker(s) {d['mb_s']:.1f} MB/s "
                      f"(x{d['mb_s'] / row[f'dask_{args.workers[0]}']['mb_s']:.2f} of {args.workers[0]} worker(s), "
                      f"x{d['mb_s'] / row['local']['mb_s']:.2f} of local), "
                      f"driver peak {d['peak_rss_mb']:.0f} MB, records equal local: {d['same_records_as_local']}")
            results.append(row)
            shutil.rmtree(src, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save("ingest_dask_media" if args.media else "ingest_dask", {"cores": os.cpu_count(), "runs": results})


if __name__ == "__main__":
    main()
