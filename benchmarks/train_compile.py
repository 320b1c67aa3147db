"""`torch.compile` for training on this host: what a step gains, and what compiling costs.

    python benchmarks/train_compile.py [--params params.yaml] [--data data/dataset] [--steps 20]

The default model and its own training batches (the sampler of `obf train`: every objective,
paired inputs of several lengths, so the shapes vary from step to step), bf16 autocast where
`obf train` would use it, AdamW. Eager and `torch.compile(dynamic=True)` each train the same
`--steps` batches twice from the same init: the first pass of the compiled model includes its
compilation, the second is its steady pace. Why: `train.compile` is off by default, and a 15-minute
`dvc repro` can only afford it if the steps it speeds up pay for the compile. Saves
results/train_compile.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402
from obf.core.bits import LN2  # noqa: E402
from obf.core.params import load_params  # noqa: E402
from obf.data.dataset import Dataset  # noqa: E402
from obf.model.devices import use_bf16  # noqa: E402
from obf.model.network import OmniByteFormer  # noqa: E402
from obf.train import _to_device, init_distributed, loss_bits, make_optimizer, step_batch, training_samplers  # noqa: E402


def train_pass(net: torch.nn.Module, model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list,
               bf16: bool) -> float:
    """Seconds to train on `batches` once, as `obf.train` steps (loss in nats, clip, AdamW)."""
    t = time.perf_counter()
    for src, dec, tgt, rows, visible, align, shift, places in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(src, dec, rows, visible, align, shift, places)  # (N, T, V)
        bits, n = loss_bits(logits, tgt)
        opt.zero_grad(set_to_none=True)
        (bits / n.clamp(min=1) * LN2).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/dataset")
    ap.add_argument("--steps", type=int, default=20, help="batches per pass")
    args = ap.parse_args()
    params = load_params(args.params)
    short, long = training_samplers(Dataset(args.data), params)
    d, cpu = init_distributed("cpu"), torch.device("cpu")
    batches = [_to_device(step_batch(s, d, params.train, short, long), cpu) for s in range(args.steps)]
    shapes = sorted({(tuple(b[0].shape), tuple(b[1].shape)) for b in batches})
    bf16 = use_bf16(cpu, params.train.precision)
    rows = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(params.train.seed)
        model = OmniByteFormer(params.model)
        opt = make_optimizer(model, params.train, cpu)
        net = model if mode == "eager" else torch.compile(model, dynamic=True)
        first, second = (train_pass(net, model, opt, batches, bf16) for _ in range(2))
        rows[mode] = {"first_pass_s": first, "second_pass_s": second, "step_s": second / args.steps}
        print(f"{mode}: first pass {first:.1f} s, then {second / args.steps:.3f} s a step")
    gain = rows["eager"]["step_s"] / rows["compiled"]["step_s"]
    compile_s = rows["compiled"]["first_pass_s"] - rows["compiled"]["second_pass_s"]
    print(f"compiled steps x{gain:.3f} the eager pace; compiling cost {compile_s:.0f} s, "
          f"{compile_s / max(rows['eager']['step_s'] - rows['compiled']['step_s'], 1e-9):.0f} steps to pay back")
    save("train_compile", {"steps": args.steps, "bf16": bf16, "shapes": [list(map(list, s)) for s in shapes],
                           "threads": torch.get_num_threads(), "runs": rows, "step_gain": gain,
                           "compile_s": compile_s})


if __name__ == "__main__":
    main()
