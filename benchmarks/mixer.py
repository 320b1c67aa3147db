"""The mixer, measured: bits per byte of the network alone and of the network with its mixer
(match model, stride hint; `obf.mixer`), on the validation and test splits, beside the best
compressor of each modality.

The mixer is fitted again here with the code as it is, on the trained network of MODEL (its
weights are not touched), exactly as `obf train` fits it after its last step; so a change to the
match model or the stride hint is measured in a minute, without training again.

    python benchmarks/mixer.py data/model data/dataset [--fit-bytes 65536] [--name mixer]

Prints one table per split, then the mixer's cost per decode step (`Mixer.step` and the rows'
updates, batch 1 and 8, rows learning or frozen, best of 3 rounds of 300 steps, on a 4 KB image
context), and saves
benchmarks/results/mixer.json (or `--name`.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def step_cost(mixer, ds) -> dict[str, float]:
    """Microseconds per decode step of the mixer alone: the fitted hints only, and all its parts
    (rows that learn from what they write, and rows frozen at the end of their context, as
    generation runs by default)."""
    import time

    import numpy as np

    from obf.mixer.match import modality_index
    from obf.mixer.mix import TAIL, Mixer, RowHints, Tail, file_hints

    rec = next(r for r in ds.records if r.modality == "image")
    ctx = bytes(ds.file_bytes(rec))[:4096]
    out = {}
    for b in (1, 8):
        mods = modality_index(["image"] * b)
        logits = np.random.default_rng(0).normal(size=(b, 320)).astype(np.float32)
        for name, m, learn in (("fitted hints", Mixer(mixer.match, mixer.stride), True),
                               ("all parts", mixer, True), ("all parts, frozen", mixer, False)):
            tail = Tail(np.full(TAIL, -5.0), np.full(TAIL, -1.0), file_hints(ctx, "image")) if m.needs_tail else None
            best = float("inf")
            for _ in range(3):  # fresh rows each round: a frozen row keeps what it looked up
                rows = [RowHints(ctx, "image", tail, learn_from_output=learn, sparse=m.sparse) for _ in range(b)]
                t = time.perf_counter()
                for i in range(300):
                    m.step(logits, rows, mods)
                    for r in rows:
                        r.update(ctx[i % len(ctx)])
                best = min(best, (time.perf_counter() - t) / 300 * 1e6)
            out[f"batch {b}, {name}"] = best
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a trained model dir (obf train)")
    ap.add_argument("data", help="the ingested dataset it was trained on, e.g. data/dataset")
    ap.add_argument("--fit-bytes", type=int, default=65536, help="train.mixer_fit_bytes for the fit")
    ap.add_argument("--name", default="mixer", help="result file name in benchmarks/results (no .json)")
    ap.add_argument("--splits", nargs="+", default=["val", "test"], choices=["val", "test"],
                    help="splits to score (choose on val alone; test is read for the report)")
    args = ap.parse_args()

    from obf.core.params import load_params
    from obf.data.dataset import Dataset
    from obf.evaluate.run import evaluate
    from obf.mixer.match import MIN_LEN, MIN_LEN_OF, RECOVER
    from obf.mixer.stride_hint import ACTIVITY_BUCKETS
    from obf.mixer_fit import fit_model_mixer
    from obf.model.checkpoint import load_model

    params = load_params(ROOT / "params.yaml", [f"train.mixer_fit_bytes={args.fit_bytes}"])
    mixer = fit_model_mixer(load_model(args.model), Dataset(args.data), params.train)
    splits = {}
    with tempfile.TemporaryDirectory(prefix="obf-mixer-") as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(args.model, model)
        config = json.loads((model / "config.json").read_text())
        config["mixer"] = mixer.to_dict() if mixer else None
        (model / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for split in args.splits:
            p = load_params(ROOT / "params.yaml", [f"evaluate.split={split}", "evaluate.sample_bytes=16",
                                                   "evaluate.denoise_windows=0"])
            m = evaluate(str(model), args.data, Path(tmp) / split / "metrics.json", p, progress=False)
            rows = {k: {"model": v["bpb"], "network": v["network_bpb"], "best": v["baselines"]["best"]}
                    for k, v in m["modalities"].items()}
            rows["overall"] = {"model": m["overall"]["bpb"], "network": m["overall"]["network_bpb"],
                               "best": m["overall"]["baselines"]["best"]}
            splits[split] = rows
            print(f"\n{split}:\n\n| modality | network | model (with mixer) | best compressor |\n|---|---:|---:|---:|")
            for k, r in rows.items():
                mark = "**" if r["model"] < r["best"] else ""
                print(f"| {k} | {r['network']:.3f} | {mark}{r['model']:.3f}{mark} | {r['best']:.3f} |")
    cost = step_cost(mixer, Dataset(args.data)) if mixer else {}
    for k, v in cost.items():
        print(f"mixer per decode step, {k}: {v:.0f} us")
    save(args.name, {"step_us": cost, "model": args.model, "data": args.data, "fit_bytes": args.fit_bytes,
                     "match": {"min_len": MIN_LEN, "min_len_of": MIN_LEN_OF, "recover": RECOVER},
                     "stride": {"activity_buckets": ACTIVITY_BUCKETS},
                     "splits": splits})
    return 0


if __name__ == "__main__":
    sys.exit(main())
