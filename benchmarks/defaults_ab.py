"""Settings A/B at equal training time: validation bits per byte per modality beside the best compressor.

Each variant trains on the same ingested dataset for the same wall-clock budget
(`train.minutes`; the learning rate anneals by the deadline, so every variant ends finished),
then is evaluated on the validation split like `dvc repro` does. The question each row answers:
given the same minutes on this machine, which settings make the better model?

`--steps N` trains every variant for N steps instead: equal time for variants that cost the
same per step (data mixes, objectives), and immune to other work on the machine. `--test` also
scores the test split (printed as a second table).

    python benchmarks/defaults_ab.py data/dataset --minutes 5 \\
        --variant default --variant "p4: model.patch_size=4" --variant "no-noise: train.random_bytes_weight=0"

A variant is `name: section.key=value, ...` on top of params.yaml (`default` = params.yaml as is).
Runs one variant at a time (they would share the 2 cores otherwise). Prints a table and saves
benchmarks/results/defaults_ab.json (or `--name NAME`.json).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    return name.strip(), [s.strip() for s in sets.split(",") if s.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="an ingested dataset (obf ingest), e.g. data/dataset")
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per variant")
    ap.add_argument("--variant", action="append", default=[], help="'name: section.key=value, ...'")
    ap.add_argument("--steps", type=int, default=0, help="train N steps per variant instead of --minutes")
    ap.add_argument("--test", action="store_true", help="also score the test split")
    ap.add_argument("--name", default="defaults_ab", help="result file name in benchmarks/results (no .json)")
    args = ap.parse_args()

    from obf.core.params import load_params
    from obf.evaluate.run import evaluate
    from obf.train import train

    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="obf-ab-") as tmp:
        for name, sets in variants:
            budget = [f"train.steps={args.steps}", "train.minutes=0"] if args.steps else \
                [f"train.minutes={args.minutes}", "train.steps=1000000"]
            params = load_params(ROOT / "params.yaml", [*sets, *budget, "train.eval_every=1000000",
                                                        "train.checkpoint_every=1000000"])
            model = Path(tmp) / name / "model"
            summary = train(args.data, model, params, progress=False)
            m = evaluate(str(model), args.data, Path(tmp) / name / "eval" / "metrics.json", params, progress=False)
            row = {"variant": name, "sets": sets, "steps": summary["steps"], "seconds": summary["seconds"],
                   "target_bytes_per_s": summary["target_bytes_per_s"],
                   "bpb": {k: v["bpb"] for k, v in m["modalities"].items()},
                   "network_bpb": {k: v["network_bpb"] for k, v in m["modalities"].items()},
                   "best": {k: v["baselines"]["best"] for k, v in m["modalities"].items()},
                   "overall": m["overall"]["bpb"], "overall_network": m["overall"]["network_bpb"],
                   "overall_best": m["overall"]["baselines"]["best"],
                   "conversions_exact": {k: v["exact"] for k, v in m.get("conversions", {}).items()},
                   "conversions": m.get("conversions", {}),
                   "denoise_accuracy": {k: v.get("denoise_accuracy") for k, v in m["modalities"].items()}}
            if args.test:
                t = evaluate(str(model), args.data, Path(tmp) / name / "test" / "metrics.json",
                             load_params(ROOT / "params.yaml", [*sets, "evaluate.split=test"]), progress=False)
                row["test"] = {"bpb": {k: v["bpb"] for k, v in t["modalities"].items()},
                               "network_bpb": {k: v["network_bpb"] for k, v in t["modalities"].items()},
                               "overall_network": t["overall"]["network_bpb"],
                               "best": {k: v["baselines"]["best"] for k, v in t["modalities"].items()},
                               "overall": t["overall"]["bpb"], "overall_best": t["overall"]["baselines"]["best"]}
            rows.append(row)
            print(f"{name}: {row['steps']} steps in {row['seconds']:.0f} s, overall {row['overall']:.3f}, network "
                  f"alone {row['overall_network']:.3f} (best compressor {row['overall_best']:.3f}); conversions "
                  f"exact: {', '.join(f'{k} {v:.0%}' for k, v in row['conversions_exact'].items())}", flush=True)
    for split, get in (("val", lambda r: r), ("test", lambda r: r.get("test"))):
        if get(rows[0]) is None:
            continue
        mods = list(get(rows[0])["bpb"])
        print(f"\n{split}:\n\n| variant | steps | " + " | ".join(mods) + " | overall |")
        print("|---|---:|" + "---:|" * (len(mods) + 1))
        print("| best compressor | | " + " | ".join(f"{get(rows[0])['best'][k]:.3f}" for k in mods)
              + f" | {get(rows[0])['overall_best']:.3f} |")
        for r in rows:
            print(f"| {r['variant']} | {r['steps']} | " + " | ".join(f"{get(r)['bpb'][k]:.3f}" for k in mods)
                  + f" | {get(r)['overall']:.3f} |")
        for r in rows:
            if "network_bpb" in get(r):
                print(f"| {r['variant']}, network alone | {r['steps']} | "
                      + " | ".join(f"{get(r)['network_bpb'][k]:.3f}" for k in mods)
                      + f" | {get(r)['overall_network']:.3f} |")
    save(args.name, {"minutes": 0 if args.steps else args.minutes, "steps": args.steps, "data": args.data,
                     "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
