"""The copy expert of `paired` targets (`obf/mixer/input_copy.py`), measured: each conversion with
the model's mixer as it is, and with its copy expert taken out (the same network, match model and
stride hint), on one split's pairs.

    python benchmarks/copy_expert.py MODEL DATA [--split val] [--pairs 40]

MODEL is a trained model dir or an ONNX export whose mixer has a copy expert (`obf train` fits
one when the dataset has pairs). Prints exact files, bytes right (generated, teacher forced), bpb
with the input and, for `gray`, pixels exact and the mean error, side by side; saves
results/copy_expert[_SPLIT].json. Choose on `val`; `test` is read for the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a trained model dir (obf train) or an ONNX export (obf export)")
    ap.add_argument("data", help="the ingested dataset, e.g. data/dataset")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--pairs", type=int, default=40, help="pairs per conversion, in key order (evaluate's default)")
    args = ap.parse_args()

    from obf.data.dataset import Dataset
    from obf.evaluate.fidelity import Case, measure
    from obf.mixer.mix import mixer_of
    from obf.runtime.backend import meta_of, open_backend

    backend = open_backend(args.model)
    mixer = mixer_of(meta_of(backend))
    if mixer is None or mixer.copy is None:
        print(f"{args.model}: its mixer has no copy expert (fitted by `obf train` on a dataset with pairs)")
        return 2
    ds = Dataset(args.data)
    cases, taken = [], defaultdict(int)
    for inp, tgt in sorted(ds.pairs(args.split), key=lambda p: p[0].key):
        case = Case(inp.key, ds.file_bytes(inp).tobytes(), inp.modality, ds.file_bytes(tgt).tobytes(), tgt.modality)
        if taken[case.conversion] < args.pairs:
            taken[case.conversion] += 1
            cases.append(case)
    arms = {}
    for name, m in (("with the copy expert", mixer), ("without it", dataclasses.replace(mixer, copy=None))):
        backend.meta = {**meta_of(backend), "mixer": m.to_dict()}
        arms[name], _ = measure(backend, cases)
    print(f"\n{args.split} pairs, {args.model}: without the copy expert -> with it\n")
    print("| conversion | pairs | exact | bytes right (generated) | bytes right (teacher forced) | bpb with input "
          "| pixels exact | pixel error |\n|---|---:|---|---|---|---|---|---|")
    on, off = arms["with the copy expert"], arms["without it"]

    def side(conv: str, get, fmt) -> str:
        """`before -> after` of one figure of one conversion, blank where it has none."""
        try:
            return f"{fmt(get(off[conv]))} -> {fmt(get(on[conv]))}"
        except KeyError:
            return ""

    pct, bpb, lv = "{:.1%}".format, "{:.3f}".format, "{:.1f}".format
    for conv in on:
        print(f"| {conv} | {on[conv]['pairs']} | {side(conv, lambda x: x['exact'], pct)} "
              f"| {side(conv, lambda x: x['byte_accuracy']['generated'], pct)} "
              f"| {side(conv, lambda x: x['byte_accuracy']['teacher_forced'], pct)} "
              f"| {side(conv, lambda x: x['bpb']['with_input'], bpb)} "
              f"| {side(conv, lambda x: x['pixels_exact'], pct)} | {side(conv, lambda x: x['pixel_mean_error'], lv)} |")
    save("copy_expert" + ("" if args.split == "val" else f"_{args.split}"),
         {"model": args.model, "data": args.data, "split": args.split, "pairs_per_conversion": args.pairs,
          "arms": arms})
    return 0


if __name__ == "__main__":
    sys.exit(main())
