"""Ingest on Dask: MB/s with 1, 2 and 4 workers of a LocalCluster beside the local ingest, and
the driver's peak memory, on generated folders of mixed files.

    python benchmarks/ingest_dask.py [--mb 50 500] [--canonicalize]

The folders are those of benchmarks/ingest.py (copies of the sample corpus with a unique tail).
Each ingest runs in a fresh process (`obf.data.ingest.ingest`, as `obf ingest` runs it), so its peak
resident memory is its own: for the Dask runs that is the driver alone (listing, the records of
every file, the index and manifest), for the local ingest the parent of its worker processes.
Workers are processes with one thread each (`LocalCluster(processes=True)`), writing their shard
parts to a local folder; the local ingest uses one worker process per core, as it does by default.
Saves results/ingest_dask.json.
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
import time
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
t = time.perf_counter()
m = ingest(src, out, cfg, progress=False, dask=dask)
print(json.dumps({"seconds": time.perf_counter() - t, "files": m["files"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


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
                    help="canonicalise media (CPU-bound) instead of storing bytes")
    args = ap.parse_args()
    from distributed import LocalCluster

    results = []
    work = Path(tempfile.mkdtemp(prefix="obf-bench-ingest-dask-"))
    try:
        for mb in args.mb:
            src = work / f"src{mb}"
            total = make_folder(src, mb) / 1e6
            row = {"mb": total, "canonicalize": args.canonicalize}
            subprocess.run(f"find {src} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)
            local = run_ingest(src, work / "ds", None, args.canonicalize)
            row["local"] = {**local, "mb_s": total / local["seconds"]}
            print(f"{total:.0f} MB: local ingest {row['local']['mb_s']:.1f} MB/s, peak {local['peak_rss_mb']:.0f} MB")
            for n in args.workers:
                with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as c:
                    t = time.perf_counter()
                    d = run_ingest(src, work / "ds", c.scheduler_address, args.canonicalize)
                    d["wall_with_driver_start"] = time.perf_counter() - t
                row[f"dask_{n}"] = {**d, "mb_s": total / d["seconds"],
                                    "same_records_as_local": d["records_sha256"] == local["records_sha256"]}
                print(f"{total:.0f} MB: dask, {n} worker(s) {row[f'dask_{n}']['mb_s']:.1f} MB/s "
                      f"(x{row[f'dask_{n}']['mb_s'] / row['dask_1']['mb_s']:.2f} of one worker, "
                      f"x{row[f'dask_{n}']['mb_s'] / row['local']['mb_s']:.2f} of local), "
                      f"driver peak {d['peak_rss_mb']:.0f} MB, records equal local: "
                      f"{row[f'dask_{n}']['same_records_as_local']}")
            results.append(row)
            shutil.rmtree(src, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save("ingest_dask", {"cores": os.cpu_count(), "runs": results})


if __name__ == "__main__":
    main()
