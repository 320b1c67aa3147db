"""The n-gram expert's settings, compared on the validation split: how each changes the model's
bits per byte per modality, from one scoring pass.

The split is scored once by MODEL with its mixer minus the n-gram expert (the log p the expert
mixes with); every variant then runs the expert's own code (`obf.mixer.ngram.file_log_probs`,
its module settings set for the run) over those log-probabilities, which is exactly what
`Mixer.serve` adds. Variants: the sparse model (the default's, without it, each of its two
chains alone), the longest context (ORDER), the discount and escape, the window of the weights'
evidence, and, for comparison, the column expert's way of mixing (a two-expert switch with a
prior of 0.7%) applied to the same n-gram model (all but the first three without the sparse
model).

    python benchmarks/ngram.py data/model data/dataset [--split val]

Prints a table (bits per byte per modality and overall) and saves benchmarks/results/ngram.json.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402

LN2 = float(np.log(2))


def variants() -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """name -> f(data, lp) giving the (n+1,) log p' of a file; each sets the module's settings."""
    from obf.mixer import columns as col
    from obf.mixer import ngram as ng

    default = {k: getattr(ng, k) for k in ("ORDER", "CHAIN", "SPARSE", "DISCOUNT", "ESCAPE", "WINDOW")}

    def expert(sparse: bool = False, **settings: object) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def run(data: np.ndarray, lp: np.ndarray) -> np.ndarray:
            for k, v in {**default, **settings}.items():
                setattr(ng, k, v)
            if "ORDER" in settings:
                ng.CHAIN = tuple(tuple(range(k, 0, -1)) for k in range(1, ng.ORDER + 1))
            try:
                return ng.file_log_probs(data, lp, sparse=sparse)
            finally:
                for k, v in default.items():
                    setattr(ng, k, v)
        return run

    def switch(data: np.ndarray, lp: np.ndarray) -> np.ndarray:
        lq = ng.ngram_log_probs(data)
        return col.mix_log_probs(lp, np.concatenate([lq, [-np.inf]]), col.evidence_logits(lq, lp[: len(data)]))

    out: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"without the n-gram expert": lambda d, lp: lp}
    out["default (with the sparse model)"] = expert(sparse=True)
    for chain in ng.SPARSE:
        out[f"sparse model of {', '.join(str(c) for c in chain)} alone"] = expert(sparse=True, SPARSE=(chain,))
    out["without the sparse model"] = expert()
    for order in (2, 3, 5, 6):
        out[f"order {order}"] = expert(ORDER=order)
    for d, a in ((0.5, 1.0), (0.9, 0.3)):
        out[f"discount {d}, escape {a}"] = expert(DISCOUNT=d, ESCAPE=a)
    for w in (128, 512, 2048):
        out[f"window {w}"] = expert(WINDOW=w)
    out["two-expert switch (the column expert's mixing)"] = switch
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a trained model dir (obf train) whose mixer has the n-gram expert")
    ap.add_argument("data", help="the ingested dataset, e.g. data/dataset")
    ap.add_argument("--split", default="val", help="choose on val; test is read for the report only")
    args = ap.parse_args()

    from dataclasses import replace

    from obf.data.dataset import Dataset
    from obf.mixer import mixer_of
    from obf.runtime.backend import meta_of, open_backend
    from obf.runtime.scoring import position_log_probs

    backend = open_backend(args.model)
    mixer = mixer_of(meta_of(backend))
    if mixer is None:
        raise SystemExit(f"ngram: {args.model} has no mixer")
    before = replace(mixer, ngram=False)
    ds = Dataset(args.data)
    records = ds.select(split=args.split, paired=False)
    files = [(ds.file_bytes(r), r.modality) for r in records]
    lp = position_log_probs(backend, files, 32, progress=True)
    served = [before.serve(d, h, x, hl) for (d, _), h, x, hl in zip(files, lp.hints, lp.hinted, lp.hint)]
    mods = sorted({m for _, m in files})
    rows = {}
    for name, run in variants().items():
        bits = {m: 0.0 for m in mods}
        for (data, m), s in zip(files, served):
            bits[m] -= float(run(data, s).sum()) / LN2
        size = {m: sum(len(d) for d, mm in files if mm == m) for m in mods}
        rows[name] = {**{m: bits[m] / size[m] for m in mods}, "overall": sum(bits.values()) / sum(size.values())}
    cols = [*mods, "overall"]
    print(f"\n{args.split} split, {len(files)} files, bits per byte:\n")
    print("| variant | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    save("ngram", {"model": args.model, "data": args.data, "split": args.split, "files": len(files), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
