"""Training throughput of encoder contexts: target bytes per second on real batches, side by side.

    python benchmarks/long_context.py data/dataset [--seconds 40] [--variant "name: key=value, ..."]

Each variant is params.yaml plus `section.key=value` overrides. The batches are the training
sampler's own (the `train` split of an ingested dataset, every objective and modality weight
as configured), so short files, file ends and the objective mix cost what they cost in
`obf train`. A variant runs forward, backward and AdamW steps for `--seconds` after two warm-up
steps; the variants alternate in rounds so that a noisy host hurts all of them alike. The
first variant is the reference the ratios are taken against.

The default variants: `ctx512`, the encoder of the previous default (512 bytes, patch 8, one
window per example, bidirectional encoder, 16 examples a step); and long contexts with the
causal encoder, where one encoder pass over a chunk serves `train.windows` decoder windows.
Saves benchmarks/results/long_context.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = [
    "ctx512: model.max_src_len=512, model.patch_size=8, model.causal_encoder=false, train.windows=1, "
    "train.batch_size=16, train.src_len=0, train.long_every=0",
    "ctx16k-p16-w16-b1: model.causal_encoder=true, model.max_src_len=16384, model.patch_size=16, "
    "train.windows=16, train.batch_size=1, train.src_len=0, train.long_every=0",
    "ctx16k-p8-w16-b1: model.causal_encoder=true, model.max_src_len=16384, model.patch_size=8, "
    "train.windows=16, train.batch_size=1, train.src_len=0, train.long_every=0",
    "mixed16k-p8: model.causal_encoder=true, model.max_src_len=16384, model.patch_size=8, train.windows=2, "
    "train.batch_size=8, train.src_len=512, train.long_every=8, train.long_windows=16",
]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    return name.strip(), [s.strip() for s in sets.split(",") if s.strip()]


class Runner:
    """One variant's model, optimizer and sampler; `run(seconds)` trains and counts target bytes."""

    def __init__(self, data: str, sets: list[str]) -> None:
        import torch

        from obf.core.params import load_params
        from obf.data.dataset import Dataset
        from obf.model.devices import resolve_device, use_bf16
        from obf.model.network import OmniByteFormer
        from obf.train import make_optimizer, training_samplers

        self.params = p = load_params(ROOT / "params.yaml", sets)
        t, m = p.train, p.model
        self.device = resolve_device(t.device, "train.device")
        self.bf16 = use_bf16(self.device, t.precision)
        torch.manual_seed(0)
        self.model = OmniByteFormer(m).to(self.device).train()
        self.opt = make_optimizer(self.model, t, self.device)
        self.short, self.long = training_samplers(Dataset(data), p)
        self.bytes = 0
        self.seconds = 0.0
        self.steps = 0  # also the step index: long steps come where `obf train` has them

    def step(self) -> int:
        import torch

        from obf.core.bits import LN2
        from obf.train import Dist, _to_device, loss_bits, step_batch

        batch = step_batch(self.steps, Dist(), self.params.train, self.short, self.long)
        src, dec, tgt, rows, visible, align, shift, places = _to_device(batch, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(src, dec, rows, visible, align, shift, places)
        bits, n = loss_bits(logits, tgt)
        self.opt.zero_grad(set_to_none=True)
        (bits / n.clamp(min=1) * LN2).backward()
        self.opt.step()
        return int(n.item())

    def run(self, seconds: float) -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.bytes += self.step()
            self.steps += 1
        self.seconds += time.perf_counter() - t0

    def warm_up(self) -> None:
        """One step of each kind (allocations, first-call costs), not counted."""
        t = self.params.train
        for step in sorted({0, t.long_every - 1} if t.long_every else {0}):
            self.steps = step
            self.step()
        self.steps = 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="an ingested dataset (obf ingest), e.g. data/dataset")
    ap.add_argument("--seconds", type=float, default=40.0, help="timed seconds per variant (over all rounds)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[], help="'name: section.key=value, ...'")
    args = ap.parse_args()

    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    runners = {name: Runner(args.data, sets) for name, sets in variants}
    for r in runners.values():
        r.warm_up()
    for _ in range(args.rounds):
        for r in runners.values():
            r.run(args.seconds / args.rounds)
    ref = None
    rows = []
    print(f"{'variant':<18} {'context':>8} {'patch':>5} {'windows':>7} {'steps':>5} {'bytes/step':>10} "
          f"{'target bytes/s':>14} {'ratio':>6}")
    for (name, sets), r in zip(variants, runners.values()):
        rate = r.bytes / r.seconds
        ref = ref or rate
        m, t = r.params.model, r.params.train
        rows.append({"variant": name, "sets": sets, "max_src_len": m.max_src_len, "patch_size": m.patch_size,
                     "windows": t.windows, "batch_size": t.batch_size, "causal_encoder": m.causal_encoder,
                     "steps": r.steps, "seconds": r.seconds, "target_bytes": r.bytes,
                     "target_bytes_per_s": rate, "ratio": rate / ref})
        print(
            f"{name:<18} {m.max_src_len:>8} {m.patch_size:>5} {t.windows:>7} {r.steps:>5} {r.bytes / r.steps:>10,.0f} "
            f"{rate:>14,.0f} {rate / ref:>6.2f}"
        )
    path = save("long_context", {"data": args.data, "seconds": args.seconds, "rounds": args.rounds, "rows": rows})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
