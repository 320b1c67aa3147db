"""Files per second of the `batch-generate` flow over a moto S3 server, at 1, 2 and 4 workers.

    python benchmarks/batch_generate.py [--files 48] [--max-bytes 256] [--workers 1 2 4] [--precision fp32 int8]

A random-init `small` model (default params.yaml shapes) is exported and published to a registry
on the local S3; `--files` mixed inputs from the sample corpus are uploaded; each run writes to a
fresh output prefix, with Prefect's thread-pool task runner at N workers and batch size 4, once
per `--precision` (int8: the quantised graphs of `export.int8`).
Prefect runs against a temporary local server (prefect_test_harness).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402

RAW = Path(__file__).resolve().parents[1] / "data" / "raw"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--max-bytes", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--precision", nargs="+", choices=("fp32", "int8"), default=["fp32", "int8"])
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                       "OBF_CACHE": tempfile.mkdtemp(prefix="obf-bench-cache-")})
    import s3fs
    import torch
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness

    from flows.generate import batch_generate
    from obf.core import storage
    from obf.core.params import load_params
    from obf.export.onnx_export import export
    from obf.model.checkpoint import save_model
    from obf.model.network import OmniByteFormer
    from obf.registry import publish

    s3fs.S3FileSystem().mkdir("bench")
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    work = Path(tempfile.mkdtemp(prefix="obf-bench-batch-"))
    torch.manual_seed(0)
    save_model(work / "model", OmniByteFormer(params.model), params.model)
    export(work / "model", work / "onnx", dataclasses.replace(params.export, int8="int8" in args.precision),
           progress=False)
    publish(work / "onnx", "s3://bench/models", "obf")
    seeds = [p for p in sorted(RAW.rglob("*")) if p.is_file() and p.suffix != ".md" and p.stat().st_size < 300_000]
    for i in range(args.files):
        p = seeds[(i * 7) % len(seeds)]
        storage.write_bytes_atomic(f"s3://bench/in/{i:04d}{p.suffix}", p.read_bytes())
    rates: dict[str, dict[int, float]] = {p: {} for p in args.precision}
    with prefect_test_harness(server_startup_timeout=120):
        for n in args.workers:
            for prec in args.precision:
                flow = batch_generate.with_options(task_runner=ThreadPoolTaskRunner(max_workers=n))
                t = time.perf_counter()
                res = flow(input_url="s3://bench/in", output_url=f"s3://bench/out-{prec}-{n}",
                           registry="s3://bench/models", max_bytes=args.max_bytes, batch_size=4, precision=prec)
                el = time.perf_counter() - t
                assert res["ok"] == args.files, res
                rates[prec][n] = args.files / el
                print(f"  {prec} {n} worker(s): {args.files} files in {el:.1f}s = {rates[prec][n]:.2f} files/s")
    server.stop()
    for prec, r in rates.items():
        base = r[args.workers[0]]
        print(f"{prec} speed-up: " + ", ".join(f"{n} workers {r[n] / base:.2f}x" for n in args.workers))
    save("batch_generate", {"files": args.files, "max_bytes": args.max_bytes, "files_per_s": rates})

if __name__ == "__main__":
    main()
