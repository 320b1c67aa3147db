"""Files the model never saw, from outside its corpus: what it scores on real files a user has,
beside the best compressor of each.

The files come from the packages obf itself installs (so every install has them, and none is in
the embedded corpus or in the material reserved for independent evaluation): prose and code
(package descriptions, licences, a Prefect module), images (Prefect's UI icons, NetworkX's plot
baselines), and binaries (NumPy arrays and an extension module, CPython bytecode compiled here, an
SQLite database written here from the installed packages' metadata). No audio or video ships in
them, so both are made here (`media`): sounds synthesised from a seeded recipe (a bell, a melody
of plucked notes, a noise-burst effect) and two short H.264 clips panning over the icon and the
plot above. They are ingested as the model's training data was (`obf ingest`: images to 64-pixel
BMP, audio to 8 kHz WAV, video to 32x32 Y4M) and scored by `obf evaluate` on the whole split.
Nothing here is ever used to choose a design or a setting: it is the figure the README leads with.

    python benchmarks/unseen.py data/model [--keep DIR] [--tag TAG]

Prints a table per file and per modality and saves benchmarks/results/unseen.json (unseen_TAG.json
with --tag, for a model other than the default).
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


RATE = 16000


def _wav(samples, rate: int = RATE) -> bytes:
    """Mono 16-bit PCM WAV of float samples in [-1, 1]."""
    import io
    import wave

    import numpy as np

    pcm = (np.clip(samples, -1, 1) * 32000).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def sounds() -> dict[str, tuple[str, bytes]]:
    """Three sounds synthesised from seeded recipes: {name: (what it is, WAV bytes)}."""
    import numpy as np

    rng = np.random.default_rng(2026)
    t = np.arange(int(RATE * 2.0)) / RATE
    bell = sum(a * np.sin(2 * np.pi * f * t) * np.exp(-t * d)
               for f, a, d in ((523.0, 0.5, 1.5), (1318.0, 0.25, 2.5), (2093.0, 0.15, 4.0), (3140.0, 0.08, 6.0)))
    notes = []
    for f in (262, 294, 330, 349, 392, 349, 330, 294, 262, 330, 392, 523):  # a plucked melody, 0.25 s a note
        n = np.arange(int(RATE * 0.25)) / RATE
        tone = sum(np.sin(2 * np.pi * f * k * n) / k for k in range(1, 6)) * np.exp(-n * 6)
        notes.append(0.3 * tone + 0.01 * rng.standard_normal(len(n)))
    melody = np.concatenate(notes)
    bursts = np.zeros(int(RATE * 1.5))
    for start in (0.0, 0.4, 0.55, 1.0):  # noise bursts with a falling resonance: footsteps, a door
        i = int(start * RATE)
        n = np.arange(min(len(bursts) - i, int(RATE * 0.3))) / RATE
        noise = rng.standard_normal(len(n))
        tone = np.sin(2 * np.pi * (300 - 400 * n) * n)
        bursts[i:i + len(n)] += (0.5 * noise * np.exp(-n * 30) + 0.4 * tone * np.exp(-n * 8))
    return {"bell.wav": ("a bell: four decaying partials, synthesised here", _wav(0.8 * bell)),
            "melody.wav": ("twelve plucked notes with harmonics and a little noise, synthesised here", _wav(melody)),
            "effects.wav": ("noise bursts with a falling resonance, synthesised here", _wav(0.7 * bursts))}


def clip(image: bytes, frames: int = 20, size: int = 64, fps: int = 10) -> bytes:
    """An H.264 clip panning and zooming slowly over a picture (PyAV), as MP4 bytes."""
    import io

    import av
    import numpy as np
    from PIL import Image

    im = Image.open(io.BytesIO(image)).convert("RGB")
    w, h = im.size
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as c:
        # one thread and no macroblock tree: with it x264 made other bytes now and then, even on one thread
        s = c.add_stream("libx264", rate=fps, options={"threads": "1", "x264-params": "mbtree=0"})
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for k in range(frames):
            z = 0.9 - 0.35 * k / frames
            cw, ch = int(w * z), int(h * z)
            x0, y0 = int((w - cw) * k / frames), int((h - ch) * (0.5 + 0.3 * np.sin(k / 4)))
            frame = av.VideoFrame.from_image(im.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size)))
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return out.getvalue()


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
    for name, (origin, data) in sounds().items():
        picks[name] = (origin, data)
    picks["icon_pan.mp4"] = ("a pan over prefect's 192 px icon, encoded here", clip(picks["prefect_icon.png"][1]))
    picks["plot_pan.mp4"] = ("a pan over the NetworkX plot, encoded here", clip(picks["networkx_plot.png"][1]))
    for name, (_, data) in picks.items():
        (dest / name).write_bytes(data)
    return {name: origin for name, (origin, _) in picks.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a trained model dir (obf train) or an ONNX export")
    ap.add_argument("--keep", help="also keep the gathered raw files here")
    ap.add_argument("--tag", default="", help="save results/unseen_TAG.json (another model than the default's), "
                    "leaving results/unseen.json as it is")
    args = ap.parse_args()

    from obf.core.params import load_params
    from obf.data.dataset import Dataset
    from obf.data.ingest import ingest
    from obf.evaluate.baselines import compressed_sizes
    from obf.evaluate.run import evaluate
    from obf.generate.files import ingest_config_of
    from obf.runtime.backend import open_backend

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
    print("| file | modality | bytes | model bpb | network bpb | best compressor bpb (which) |\n"
          "|---|---|---:|---:|---:|---|")
    for f in sorted(m["files"], key=lambda f: (f["modality"], f["path"])):
        sizes = best[f["path"]]
        which = min((k for k in sizes if k != "best"), key=sizes.__getitem__)
        b = 8 * sizes["best"] / f["bytes"]
        files.append({**f, "origin": origins.get(f["path"], ""), "best_bpb": b, "best": which})
        mark = "**" if f["bpb"] < b else ""
        print(
            f"| {f['path']} | {f['modality']} | {f['bytes']:,} | {mark}{f['bpb']:.3f}{mark} | {f['network_bpb']:.3f} "
            f"| {b:.3f} ({which}) |"
        )
    print("\n| modality | files | model bpb | network bpb | best compressor bpb |\n|---|---:|---:|---:|---:|")
    rows = {**m["modalities"], "overall": m["overall"]}
    for k, v in rows.items():
        mark = "**" if v["bpb"] < v["baselines"]["best"] else ""
        print(
            f"| {k} | {v['files']} | {mark}{v['bpb']:.3f}{mark} | {v['network_bpb']:.3f} "
            f"| {v['baselines']['best']:.3f} |"
        )
    save(
        f"unseen_{args.tag}" if args.tag else "unseen",
        {
            "model": args.model,
            "files": files,
            "modalities": {
                k: {
                    "files": v["files"],
                    "bytes": v["bytes"],
                    "model": v["bpb"],
                    "network": v["network_bpb"],
                    "best": v["baselines"]["best"],
                }
                for k, v in rows.items()
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
