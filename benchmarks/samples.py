"""Generated continuations beside the real parts they replace: do they look like the data?

    python benchmarks/samples.py MODEL                       # files from outside the corpus (report)
    python benchmarks/samples.py MODEL --data DATASET        # the validation split (to choose on)
    python benchmarks/samples.py MODEL --data DATASET --grid # every decoding setting of GRID
    python benchmarks/samples.py MODEL --data DATASET --grid --seeds 0 1 2 3 --settings NAME...

Each file (canonicalised as the model's training data, `obf ingest`) keeps its start (half of
it, more when the rest is over `--bytes`; media keep whole rows / sample frames) and the model
makes the rest, as `obf generate --prefix-fraction` does. The generated part is compared with
the real part it replaces (`obf.evaluate.likeness`): the raw-LZMA2 size ratio (near 1: as predictable as
the real data; near 0: a loop), the commonest byte's share beside the real part's, and how much
new information it adds to the kept part beside what the real part adds (near 0: a copy). With
`--bpb`, also the bits per byte the model gives each part (as generation serves it).

Without `--data` the files are those of benchmarks/unseen.py (from the installed packages, audio
and video made here): read to report, never to choose. Choices are made with `--data` on the
validation split. Prints per modality the median LZMA ratio, the worst top-share gap (generated
minus real), the median novelty ratio, and which of the issue's targets hold; with --grid, the
setting that holds the most over all --seeds (then the nearest 1). Saves
results/samples[_val][_grid][_BYTES][_Nseeds].json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402

# (name, temperature, top_p, learn_from_output, match_surprise, min_p, share_guard): what --grid compares
GRID = [("greedy", 0.0, 1.0, False, False, 0.0, 0.0),
        ("greedy, mixer learns from output", 0.0, 1.0, True, False, 0.0, 0.0),
        ("t=0.8 p=0.95", 0.8, 0.95, False, False, 0.0, 0.0),
        ("t=0.8 p=0.95, mixer learns from output", 0.8, 0.95, True, False, 0.0, 0.0),
        ("t=0.9", 0.9, 1.0, False, False, 0.0, 0.0), ("t=1.0", 1.0, 1.0, False, False, 0.0, 0.0),
        ("t=1.0 p=0.95", 1.0, 0.95, False, False, 0.0, 0.0),
        ("t=1.0, mixer learns from output", 1.0, 1.0, True, False, 0.0, 0.0),
        ("t=1.1", 1.1, 1.0, False, False, 0.0, 0.0),
        ("surprise matched (t=1.0 x thermostat)", 1.0, 1.0, False, True, 0.0, 0.0),
        *((f"thermostat, min_p={q:g}", 1.0, 1.0, False, True, q, 0.0) for q in (0.01, 0.02, 0.03, 0.05, 0.1)),
        *((f"thermostat, min_p={q:g}, share_guard={g:g}", 1.0, 1.0, False, True, q, g)
          for q in (0.0, 0.03) for g in (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0))]
TARGETS = {"lzma_ratio": (0.6, 1.6), "top_gap": 0.2, "novelty_ratio": (0.5, 2.0)}


def files_of(model: str, data: str | None, split: str, per_modality: int) -> list[tuple[str, str, bytes]]:
    """(name, modality, canonical bytes) of the files to continue."""
    from obf.data.dataset import Dataset
    from obf.data.ingest import ingest
    from obf.generate.files import ingest_config_of
    from obf.runtime.backend import open_backend

    with tempfile.TemporaryDirectory(prefix="obf-samples-") as tmp:
        if data is None:
            from benchmarks.unseen import gather

            raw = Path(tmp) / "raw"
            raw.mkdir()
            gather(raw)
            ingest(str(raw), Path(tmp) / "ds", ingest_config_of(open_backend(model)), progress=False)
            ds, records = Dataset(Path(tmp) / "ds"), None
        else:
            ds = Dataset(data)
            records = ds.select(split=split, paired=False)
        records = records if records is not None else ds.records
        out = []
        for m in ("text", "image", "audio", "video", "binary"):
            mine = sorted((r for r in records if r.modality == m and r.length >= 1024), key=lambda r: -r.length)
            out += [(r.key, m, ds.file_bytes(r).tobytes()) for r in mine[:per_modality]]
        return out


def picture(real: bytes, made: bytes) -> bytes:
    """A PNG of an image file (left) beside the same file completed by the model (right)."""
    import io

    from PIL import Image

    from obf.evaluate.previews import image_png

    left, right = (Image.open(io.BytesIO(image_png(x))).convert("RGB") for x in (real, made))
    out = Image.new("RGB", (left.width + right.width + 8, max(left.height, right.height)), "white")
    out.paste(left, (0, 0))
    out.paste(right, (left.width + 8, 0))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def run(backend: Any, files: list[tuple[str, str, bytes]], *, max_new: int, temperature: float, top_p: float,
        learn: bool, surprise: bool, seed: int, bpb: bool,
        min_p: float = 0.0, share_guard: float = 0.0, pictures: Path | None = None) -> list[dict[str, Any]]:
    """Generate every file's rest with one setting; one row of measures per file. With `pictures`,
    each image is also drawn there beside its completion (`picture`)."""
    from obf.evaluate.likeness import compare
    from obf.generate.planning import plan
    from obf.generate.sampling import SamplingOptions, generate
    from obf.runtime.scoring import served_log_probs

    plans = [plan(d, m, max_bytes=max_new, prefix_bytes=max(len(d) // 2, len(d) - max_new)) for _, m, d in files]
    opts = SamplingOptions(max_bytes=max_new, temperature=temperature, top_p=top_p, seed=seed,
                           learn_from_output=learn, match_surprise=surprise, min_p=min_p, share_guard=share_guard)
    made = generate(backend, [p.keep for p in plans], [m for _, m, _ in files], opts=opts,
                    specs=[p.spec for p in plans])
    rows = []
    for (name, m, data), p, g in zip(files, plans, made):
        real = data[len(p.keep):len(p.keep) + len(g)]
        rows.append({"file": name, "modality": m, "kept": len(p.keep), "generated": len(g), **compare(p.keep, g, real)})
        if pictures is not None and m == "image":
            pictures.mkdir(parents=True, exist_ok=True)
            (pictures / f"{Path(name).stem}.seed{seed}.png").write_bytes(picture(data, p.keep + g))
    if bpb:
        scored = [(np.frombuffer(p.keep + part[:r["compared_bytes"]], np.uint8), m)
                  for (_, m, data), p, g, r in zip(files, plans, made, rows)
                  for part in (g, data[len(p.keep):])]
        served, _ = served_log_probs(backend, scored, 32, learn_until=[len(p.keep) for p in plans for _ in range(2)])
        for j, (r, p) in enumerate(zip(rows, plans)):
            k, n = len(p.keep), r["compared_bytes"]
            r["generated_bpb"], r["real_bpb"] = (-float(served[2 * j + i][k:k + n].sum()) / np.log(2) / max(n, 1)
                                                 for i in (0, 1))
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per modality: medians, the worst top-share gap, and whether each target holds."""
    out = {}
    for m in sorted({r["modality"] for r in rows}):
        mine = [r for r in rows if r["modality"] == m and r.get("compared_bytes")]
        if not mine:
            continue
        lz = statistics.median(r["lzma_ratio"] for r in mine)
        gap = max(r["top_share"] - r["real_top_share"] for r in mine)
        nov = statistics.median(r["novelty_ratio"] for r in mine)
        out[m] = {"files": len(mine), "lzma_ratio": lz, "top_gap": gap, "novelty_ratio": nov,
                  "ok": {"lzma_ratio": TARGETS["lzma_ratio"][0] <= lz <= TARGETS["lzma_ratio"][1],
                         "top_gap": gap <= TARGETS["top_gap"],
                         "novelty_ratio": TARGETS["novelty_ratio"][0] <= nov <= TARGETS["novelty_ratio"][1]}}
        if "generated_bpb" in mine[0]:
            out[m]["generated_bpb"] = statistics.median(r["generated_bpb"] for r in mine)
            out[m]["real_bpb"] = statistics.median(r["real_bpb"] for r in mine)
    return out


def score(s: dict[str, dict[str, Any]]) -> tuple[int, float]:
    """How a setting is chosen: most targets held over the modalities, then the smallest distance
    from 1 of the LZMA and novelty ratios (|log|, summed)."""
    held = sum(v for m in s.values() for v in m["ok"].values())
    dist = sum(abs(np.log(m["lzma_ratio"])) + abs(np.log(max(m["novelty_ratio"], 1e-3))) for m in s.values())
    return held, -dist


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an ONNX export (obf export) or a checkpoint dir")
    ap.add_argument("--data", help="an ingested dataset: continue files of --split instead of files from outside it")
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-modality", type=int, default=4, help="files per modality, the largest first")
    ap.add_argument("--bytes", type=int, default=4096, help="bytes generated per file at most")
    ap.add_argument("--grid", action="store_true", help="compare the decoding settings of GRID")
    ap.add_argument("--settings", nargs="+", metavar="NAME", help="with --grid: only these settings of GRID")
    ap.add_argument("--bpb", action="store_true", help="also the bits per byte of both parts under the model")
    ap.add_argument("--pictures", type=Path, help="draw each image beside its completion into this folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="sampling seeds; with --grid the choice sums targets held and distances over them")
    args = ap.parse_args()

    from obf.generate.sampling import DECODING
    from obf.runtime.backend import open_backend

    backend = open_backend(args.model)
    files = files_of(args.model, args.data, args.split, args.per_modality)
    d = DECODING["continue"]
    settings = ([g for g in GRID if not args.settings or g[0] in args.settings] if args.grid
                else [("default", d["temperature"], d["top_p"], False, bool(d["match_surprise"]), d["min_p"],
                       d["share_guard"])])
    results = []
    for name, t, p, learn, surprise, min_p, guard in settings:
        for seed in args.seeds:
            rows = run(backend, files, max_new=args.bytes, temperature=t, top_p=p, learn=learn, surprise=surprise,
                       min_p=min_p, share_guard=guard, seed=seed, bpb=args.bpb,
                       pictures=args.pictures if not args.grid else None)
            s = summary(rows)
            results.append({"setting": name, "seed": seed, "temperature": t, "top_p": p, "learn_from_output": learn,
                            "match_surprise": surprise, "min_p": min_p, "share_guard": guard, "files": rows,
                            "modalities": s, "targets_held": score(s)[0]})
            print(f"\n{name} (seed {seed}; temperature {t:g}, top_p {p:g}, min_p {min_p:g}, share_guard {guard:g}, "
                  f"mixer learns from output: {learn}, surprise matched: {surprise})")
            print("| modality | files | LZMA ratio (median) | top-share gap (worst) | novelty (median) |"
                  + (" bpb generated / real |" if args.bpb else "") + "\n|---|---:|---:|---:|---:|"
                  + ("---:|" if args.bpb else ""))
            for m, v in s.items():
                mark = {k: "" if ok else " ✗" for k, ok in v["ok"].items()}
                extra = f" {v['generated_bpb']:.2f} / {v['real_bpb']:.2f} |" if "generated_bpb" in v else ""
                print(f"| {m} | {v['files']} | {v['lzma_ratio']:.2f}{mark['lzma_ratio']} | {v['top_gap']:+.2f}"
                      f"{mark['top_gap']} | {v['novelty_ratio']:.2f}{mark['novelty_ratio']} |{extra}")
    if args.grid:
        totals = {name: tuple(map(sum, zip(*(score(r["modalities"]) for r in results if r["setting"] == name))))
                  for name, *_ in settings}
        out_of = sum(3 * len(r["modalities"]) for r in results if r["setting"] == settings[0][0])
        print("\n| setting | targets held (all seeds) | distance from 1 (summed) |\n|---|---:|---:|")
        for name, (held, dist) in totals.items():
            print(f"| {name} | {held} of {out_of} | {-dist:.2f} |")
        best = max(totals, key=lambda k: totals[k])
        verdict = "chosen" if args.data else "holds the most (files outside the corpus: to report, never to choose)"
        print(f"\n{verdict}: {best} ({totals[best][0]} targets held over {len(args.seeds)} seed(s))")
    where = "unseen" if args.data is None else args.split
    save("samples" + ("" if where == "unseen" else f"_{where}") + ("_grid" if args.grid else "")
         + ("" if args.bytes == 1024 or not args.grid else f"_{args.bytes}")
         + ("" if len(args.seeds) == 1 else f"_{len(args.seeds)}seeds"),
         {"model": args.model, "data": args.data or "outside the corpus (benchmarks/unseen.py)", "split": where,
          "max_new_bytes": args.bytes, "seeds": args.seeds, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
