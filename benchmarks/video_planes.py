"""Generated video, plane by plane: does a continued Y4M clip keep its frames' structure?

    python benchmarks/video_planes.py MODEL DATA [--splits val train] [--clips 6] [--no-thermostat]

Each clip of the splits (canonical 4:2:0 Y4M, as ingested) keeps its first half, as
`benchmarks/samples.py` does, and the model writes up to 4 KB after it with `obf generate`'s
default decoding (or temperature 1.0 without the thermostat and min-p). For every generated
frame and plane (Y, U, V) it prints the generated plane's mean beside the real one's and their mean absolute
difference per byte. Then, per plane over all frames, the mean absolute error and the mean gap
between the generated and the real plane means. A plane whose mean drifts away from the real one
(a grey clip's U plane, 128 throughout, written at 100) is what a person sees as a colour cast.
Read the validation and training clips to choose; files outside the corpus only to report.
Saves results/video_planes.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402

PLANES = ("Y", "U", "V")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an ONNX export (obf export) or a checkpoint dir")
    ap.add_argument("data", help="an ingested dataset, e.g. data/dataset")
    ap.add_argument("--splits", nargs="+", default=["val", "train"], choices=["val", "train", "test"])
    ap.add_argument("--clips", type=int, default=6, help="clips at most, in the order of the splits")
    ap.add_argument("--bytes", type=int, default=4096, help="bytes generated per clip at most")
    ap.add_argument("--no-thermostat", action="store_true", help="temperature 1.0 without the thermostat")
    args = ap.parse_args()

    from obf.data.dataset import Dataset
    from obf.generate.planning import plan
    from obf.generate.sampling import DECODING, SamplingOptions, generate
    from obf.mixer.stride_hint import predictor_of
    from obf.runtime.backend import open_backend

    ds = Dataset(args.data)
    clips = [(r.key, ds.file_bytes(r).tobytes()) for s in args.splits for r in ds.select(split=s, paired=False)
             if r.modality == "video"][:args.clips]
    if not clips:
        print(f"{args.data}: no video in {', '.join(args.splits)}")
        return 2
    d = DECODING["continue"]
    surprise = not args.no_thermostat and bool(d["match_surprise"])
    opts = SamplingOptions(max_bytes=args.bytes, temperature=1.0 if args.no_thermostat else d["temperature"],
                           top_p=d["top_p"], min_p=0.0 if args.no_thermostat else d["min_p"],
                           share_guard=0.0 if args.no_thermostat else d["share_guard"], seed=0,
                           match_surprise=surprise)
    plans = [plan(x, "video", max_bytes=args.bytes, prefix_bytes=max(len(x) // 2, len(x) - args.bytes))
             for _, x in clips]
    made = generate(open_backend(args.model), [p.keep for p in plans], ["video"] * len(clips), opts=opts,
                    specs=[p.spec for p in plans])
    rows = []
    for (key, real), p, g in zip(clips, plans, made):
        pred = predictor_of(real, "video")
        assert pred is not None, f"{key}: not a Y4M obf can read"
        start = len(p.keep)
        ours = np.frombuffer(p.keep + g, np.uint8).astype(np.int64)
        theirs = np.frombuffer(real[:len(ours)], np.uint8).astype(np.int64)
        line = []
        for f in range((start - pred.header) // pred.unit, (len(ours) - pred.header) // pred.unit):
            base = pred.header + f * pred.unit
            cells = []
            for name, (lo, hi, _) in zip(PLANES, pred.planes):
                a, b = max(base + lo, start), base + hi  # the generated part of the plane
                if b <= a:
                    continue
                gen, ref = ours[a:b], theirs[a:b]
                row = {"clip": key, "frame": f, "plane": name, "generated_mean": float(gen.mean()),
                       "real_mean": float(ref.mean()), "mean_abs_error": float(np.abs(gen - ref).mean())}
                rows.append(row)
                cells.append(f"{name} {row['generated_mean']:.0f}/{row['real_mean']:.0f} ±{row['mean_abs_error']:.0f}")
            line.append(", ".join(cells))
        print(f"{key}: " + " | ".join(line))
    summary = {}
    print("\n| plane | frames | mean abs error | mean gap of plane means |\n|---|---:|---:|---:|")
    for name in PLANES:
        mine = [r for r in rows if r["plane"] == name]
        summary[name] = {"frames": len(mine), "mean_abs_error": float(np.mean([r["mean_abs_error"] for r in mine])),
                         "mean_gap": float(np.mean([abs(r["generated_mean"] - r["real_mean"]) for r in mine]))}
        print(f"| {name} | {len(mine)} | {summary[name]['mean_abs_error']:.1f} | {summary[name]['mean_gap']:.1f} |")
    save("video_planes" + ("_no_thermostat" if args.no_thermostat else ""),
         {"model": args.model, "data": args.data, "splits": args.splits, "bytes": args.bytes,
          "temperature": opts.temperature, "match_surprise": opts.match_surprise, "planes": summary, "frames": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
