"""Files the model never saw, from outside its corpus: what it scores on real files a user has,
beside the best compressor of each.

The files come from the packages obf itself installs (so every install has them, and none is in
the embedded corpus or in the material reserved for independent evaluation): prose and code
(package descriptions, licences, a Prefect module), images (Prefect's UI icons, NetworkX's plot
baselines), and binaries (NumPy arrays and an extension module, CPython bytecode compiled here, an
SQLite database written here from the installed packages' metadata). No audio or video ships in
them. They are ingested as the model's training data was (`obf ingest`: images to 64-pixel BMP)
and scored by `obf evaluate` on the whole split.

    python benchmarks/unseen.py data/model [--keep DIR]

Prints a table per file and per modality and saves benchmarks/results/unseen.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import py_compile
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 48 * 1024  # a file is cut here: whole-file scoring runs ~10 KB/s on a 2-core CPU


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"unseen: package {name!r} is not installed (pip install -e '.[dev]')")
    return Path(list(spec.submodule_search_locations)[0])


def metadata_text(dist: str) -> bytes:
    return (importlib.metadata.distribution(dist).read_text("METADATA") or "").encode()


def sqlite_of_packages(path: Path) -> None:
    """An SQLite database of the installed distributions (name, version, summary, licence)."""
    rows = sorted({(d.metadata["Name"] or "", d.version or "", d.metadata["Summary"] or "", d.metadata["License"] or "")
                   for d in importlib.metadata.distributions()})
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE package (id INTEGER PRIMARY KEY, name TEXT, version TEXT, summary TEXT, licence TEXT)")
        db.executemany("INSERT INTO package (name, version, summary, licence) VALUES (?, ?, ?, ?)", rows)
        db.execute("CREATE INDEX package_name ON package (name)")
    db.close()


def gather(dest: Path) -> dict[str, str]:
    """Write the files to `dest`; returns {file name: where it came from}."""
    numpy, prefect, networkx = package_dir("numpy"), package_dir("prefect"), package_dir("networkx")
    picks: dict[str, tuple[str, bytes]] = {}

    def put(name: str, origin: str, data: bytes) -> None:
        picks[name] = (origin, data if name.endswith(".png") else data[:MAX_BYTES])  # a cut PNG would not open

    put("numpy_METADATA.txt", "numpy dist-info METADATA (the package description)", metadata_text("numpy"))
    put("prefect_METADATA.txt", "prefect dist-info METADATA", metadata_text("prefect"))
    put("prefect_flows.py", f"prefect/flows.py (first {MAX_BYTES // 1024} KiB)", (prefect / "flows.py").read_bytes())
    put("prefect_icon.png", "prefect/server/ui/ico/android-chrome-192x192.png",
        (prefect / "server/ui/ico/android-chrome-192x192.png").read_bytes())
    put("networkx_plot.png", "networkx/drawing/tests/baseline/test_display_complex.png",
        (networkx / "drawing/tests/baseline/test_display_complex.png").read_bytes())
    put("numpy_array.npy", "numpy/lib/tests/data/python3.npy", (numpy / "lib/tests/data/python3.npy").read_bytes())
    so = min((p for p in numpy.rglob("*.so") if p.stat().st_size > 16384), key=lambda p: p.stat().st_size)
    cut = f" (first {MAX_BYTES // 1024} KiB)" if so.stat().st_size > MAX_BYTES else ""
    put("numpy_module.so", f"numpy/{so.relative_to(numpy)}{cut}", so.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        pyc = Path(tmp) / "flows.pyc"
        py_compile.compile(str(prefect / "flows.py"), cfile=str(pyc), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        put("prefect_flows.pyc", "prefect/flows.py compiled here (hash-based .pyc)", pyc.read_bytes())
        db = Path(tmp) / "packages.sqlite"
        sqlite_of_packages(db)
        put("packages.sqlite", "SQLite database of the installed distributions, written here", db.read_bytes())
    for name, (_, data) in picks.items():
        (dest / name).write_bytes(data)
    return {name: origin for name, (origin, _) in picks.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a trained model dir (obf train) or an ONNX export")
    ap.add_argument("--keep", help="also keep the gathered raw files here")
    args = ap.parse_args()

    from obf.config import load_params
    from obf.dataset import Dataset
    from obf.evaluate import compressed_sizes, evaluate
    from obf.generation import ingest_config_of
    from obf.backends import open_backend
    from obf.ingest import ingest

    params = load_params(ROOT / "params.yaml", ["evaluate.split=all", "evaluate.sample_bytes=16",
                                                "evaluate.denoise_windows=0"])
    with tempfile.TemporaryDirectory(prefix="obf-unseen-") as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        origins = gather(raw)
        if args.keep:
            shutil.copytree(raw, args.keep, dirs_exist_ok=True)
        ingest(str(raw), Path(tmp) / "ds", ingest_config_of(open_backend(args.model)), progress=False)
        ds = Dataset(Path(tmp) / "ds")
        best = {r.key: compressed_sizes(bytes(ds.file_bytes(r))) for r in ds.records}
        m = evaluate(args.model, str(Path(tmp) / "ds"), Path(tmp) / "eval" / "metrics.json", params, per_file=True,
                     progress=False)
    files = []
    print("| file | modality | bytes | model bpb | network bpb | best compressor bpb (which) |\n|---|---|---:|---:|---:|---|")
    for f in sorted(m["files"], key=lambda f: (f["modality"], f["path"])):
        sizes = best[f["path"]]
        which = min((k for k in sizes if k != "best"), key=sizes.__getitem__)
        b = 8 * sizes["best"] / f["bytes"]
        files.append({**f, "origin": origins.get(f["path"], ""), "best_bpb": b, "best": which})
        mark = "**" if f["bpb"] < b else ""
        print(f"| {f['path']} | {f['modality']} | {f['bytes']:,} | {mark}{f['bpb']:.3f}{mark} | {f['network_bpb']:.3f} "
              f"| {b:.3f} ({which}) |")
    print("\n| modality | files | model bpb | network bpb | best compressor bpb |\n|---|---:|---:|---:|---:|")
    rows = {**m["modalities"], "overall": m["overall"]}
    for k, v in rows.items():
        mark = "**" if v["bpb"] < v["baselines"]["best"] else ""
        print(f"| {k} | {v['files']} | {mark}{v['bpb']:.3f}{mark} | {v['network_bpb']:.3f} | {v['baselines']['best']:.3f} |")
    save("unseen", {"model": args.model, "files": files,
                    "modalities": {k: {"files": v["files"], "bytes": v["bytes"], "model": v["bpb"],
                                       "network": v["network_bpb"], "best": v["baselines"]["best"]}
                                   for k, v in rows.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
