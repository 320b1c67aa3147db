"""A/B at equal time: where the byte memory places a conversion's queries (issue #27).

    python benchmarks/paired_alignment.py [--data data/dataset] [--minutes 6] [--conversion hex|gray|hex-end]

The query of target byte t of a `paired` window was rotated to source position align + t, the
input byte at the same offset. That is exact for a conversion that keeps offsets (upper, gray) and
off by a growing distance for one that does not: hex writes three characters per input byte.
`model.query_map` (the default since) moves each query to the byte its conversion reads
(`obf.formats.conversions.input_offsets`). Two arms, trained one after the other:

- `same offset` (model.query_map=false): each query at the input byte at its own offset;
- `encoded byte` (model.query_map=true): each query at the input byte its character encodes
  (line * 16 + column // 3).

`--conversion gray` compares, with `query_map` on, each gray byte reading the input byte at its
own offset (`same offset`) against every byte of a pixel reading the pixel's first byte
(`pixel start`), so that the three bytes of a pixel, each the same L, query alike.

`--conversion hex-end` compares, all with `query_map`, today's hex placement against one where
the target's last newline and its EOS read the tag right before the input (a key that says
"the input has ended", which a query at the last byte can only infer from a missing neighbour),
and against one where the input is followed by an EOS id that they read (`end marker`: what
`model.input_end` does, the default since). The other arms have no end marker.

Every arm: the model shape and optimiser of params.yaml, the conversion's pairs of the training
split only, every window of each target as training builds them (`paired_example`, `collate`), the lr
schedule run over the same wall-clock minutes, bf16 where the CPU has it, the same seed.
Reported: bytes right (teacher-forced), their mean error in levels, bits per byte, and the share
of targets greedy generation makes exactly (the bare network, no mixer) on the validation split's
pairs of the conversion. Saves results/paired_alignment[_gray|_hex-end].json. The arms differ only
in the query positions (and `end marker` in the EOS after the input).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402
from obf.core.params import load_params  # noqa: E402
from obf.core.vocab import PAD  # noqa: E402
from obf.data.dataset import Dataset  # noqa: E402
from obf.data.objectives import Batch, collate, paired_example  # noqa: E402
from obf.formats.conversions import CONVERSIONS, convert  # noqa: E402
from obf.formats.layouts import bmp_layout  # noqa: E402
from obf.generate.sampling import SamplingOptions, generate  # noqa: E402
from obf.model.devices import use_bf16  # noqa: E402
from obf.model.network import OmniByteFormer  # noqa: E402
from obf.runtime.torch_backend import TorchBackend  # noqa: E402
from obf.train import loss_bits, lr_at, make_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pixel_start(bmp: bytes, t: np.ndarray) -> np.ndarray:
    """Arm `pixel start` of gray: a byte of a 24-bit BMP pixel reads the pixel's first byte, so
    that the three bytes of a gray pixel (each L of the same three input bytes) read alike;
    header, row padding and anything after the pixels, the same offset."""
    lay = bmp_layout(bmp)
    if lay is None or lay.bpp != 24:
        return t
    row, at = np.divmod(t - lay.offset, lay.stride)
    pixel = (t >= lay.offset) & (row < lay.rows) & (at < 3 * lay.width)
    return np.where(pixel, t - at % 3, t)


HEX_READS = CONVERSIONS["hex"].reads  # the product's placement, kept before any arm swaps it


def hex_end_at_tag(data: bytes, t: np.ndarray) -> np.ndarray:
    """Arm `end reads the tag` of hex: the target's last newline and its EOS (and anything after: a
    hex target is 3 characters per input byte) read offset -1, the target-modality tag right
    before the input."""
    return np.where(t >= 3 * len(data) - 1, -1, HEX_READS(data, t))


def conversion_pairs(ds: Dataset, split: str, name: str) -> list[tuple[bytes, bytes]]:
    """(input, target) of the split's pairs whose target is exactly conversion `name` of the input."""
    c = CONVERSIONS[name]
    out = []
    for inp, tgt in ds.pairs(split):
        a, b = ds.file_bytes(inp).tobytes(), ds.file_bytes(tgt).tobytes()
        if (inp.modality, tgt.modality) == (c.source, c.target) and _converts(name, a, b):
            out.append((a, b))
    return out


def _converts(name: str, a: bytes, b: bytes) -> bool:
    try:
        return convert(name, a)[1] == b
    except Exception:  # not an input the conversion takes
        return False


def batch_of(pairs: list[tuple[bytes, bytes]], name: str, max_input_len: int, t: int, query_map: bool,
             input_end: bool) -> Batch:
    """Every window of each pair's target, collated as training collates them."""
    c = CONVERSIONS[name]
    return collate([paired_example(a, c.source, b, c.target, max_input_len, t, range(len(b) // t + 1),
                                   query_map=query_map, input_end=input_end) for a, b in pairs])


def forward(model: OmniByteFormer, batch: Batch, device: torch.device) -> torch.Tensor:
    """Logits (N, T, V) of every window of `batch`, as training computes them (`forward_windows`)."""

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(device)

    return model(t(batch.src), t(batch.dec), t(batch.rows), t(batch.visible), t(batch.align), t(batch.shift))


def run_arm(name: str, query_map: bool, input_end: bool, train: list, val: list, params, minutes: float,
            batch_size: int, device: torch.device, bf16: bool) -> dict:
    """Train one arm from the seed for `minutes` (random pairs, every window of each), then score
    the validation pairs teacher-forced."""
    torch.manual_seed(params.train.seed)
    model = OmniByteFormer(replace(params.model, query_map=query_map, input_end=input_end)).to(device)
    opt = make_optimizer(model, params.train, device)
    rng = np.random.default_rng(params.train.seed)
    t_len, max_in = params.model.max_tgt_len, params.model.max_input_len
    start, step, budget = time.perf_counter(), 0, minutes * 60
    while (spent := time.perf_counter() - start) < budget:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, params.train, spent / budget)
        picks = [train[i] for i in rng.integers(0, len(train), batch_size)]
        batch = batch_of(picks, name, max_in, t_len, query_map, input_end)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            bits, count = loss_bits(forward(model, batch, device), torch.from_numpy(batch.tgt).to(device))
        opt.zero_grad(set_to_none=True)
        (bits / count * float(np.log(2))).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.train.grad_clip)
        opt.step()
        step += 1
    model.eval()
    right = total = 0
    bits_sum = error = 0.0
    with torch.no_grad():
        for i in range(0, len(val), 16):
            batch = batch_of(val[i:i + 16], name, max_in, t_len, query_map, input_end)
            logits = forward(model, batch, device).float()
            tgt = torch.from_numpy(batch.tgt).to(device)
            keep = tgt != PAD
            best = logits.argmax(-1)
            right += int(((best == tgt) & keep).sum())
            error += float(((best - tgt).abs() * keep).sum())
            total += int(keep.sum())
            bits_sum += float(loss_bits(logits, tgt)[0])
    c = CONVERSIONS[name]
    made = generate(TorchBackend(model), [a for a, _ in val], [c.source] * len(val), task="paired",
                    target_modalities=[c.target] * len(val),
                    opts=SamplingOptions(temperature=0.0, max_bytes=max(len(b) for _, b in val) + 16))
    exact = sum(m == b for m, (_, b) in zip(made, val)) / len(val)
    return {"steps": step, "minutes": minutes, "val_bytes": total, "bytes_right": right / total,
            "mean_error": error / total, "bpb": bits_sum / total, "generated_exact": exact}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "dataset"))
    ap.add_argument("--minutes", type=float, default=6.0, help="training time of each arm")
    ap.add_argument("--batch-size", type=int, default=0, help="pairs per step (default: train.batch_size)")
    ap.add_argument("--conversion", choices=("hex", "gray", "hex-end"), default="hex")
    ap.add_argument("--arms", nargs="+", metavar="ARM", help="only these arms (others keep their saved results)")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    ds = Dataset(args.data)
    name = args.conversion.split("-")[0]
    train, val = (conversion_pairs(ds, s, name) for s in ("train", "val"))
    if not train or not val:
        sys.exit(f"{args.data}: no {args.conversion} pairs in the train or val split")
    device = torch.device("cpu")
    bf16 = use_bf16(device, params.train.precision)
    results = {}
    product = CONVERSIONS[name]
    # (arm, model.query_map, model.input_end, the conversion's reads or None for the product's)
    arms = {"hex": [("same offset", False, False, None), ("encoded byte", True, False, None)],
            "gray": [("same offset", True, False, None), ("pixel start", True, False, pixel_start)],
            "hex-end": [("encoded byte", True, False, None), ("end reads the tag", True, False, hex_end_at_tag),
                        ("end marker", True, True, None)]}[args.conversion]
    suffix = "" if args.conversion == "hex" else f"_{args.conversion}"
    if args.arms:
        saved = ROOT / "benchmarks" / "results" / f"paired_alignment{suffix}.json"
        results = json.loads(saved.read_text())["arms"] if saved.is_file() else {}
        arms = [a for a in arms if a[0] in args.arms]
    for arm, query_map, input_end, reads in arms:
        CONVERSIONS[name] = replace(product, reads=reads) if reads else product  # the arm's map, for this arm only
        results[arm] = run_arm(name, query_map, input_end, train, val, params, args.minutes,
                               args.batch_size or params.train.batch_size, device, bf16)
        CONVERSIONS[name] = product
        r = results[arm]
        print(f"{arm:17s} {r['steps']:5d} steps in {args.minutes:g} min: bytes right {r['bytes_right']:.1%} "
              f"(mean error {r['mean_error']:.2f}), {r['bpb']:.3f} bits per byte on {r['val_bytes']} validation "
              f"target bytes; {r['generated_exact']:.1%} of {len(val)} targets exact, generated")
    save(f"paired_alignment{suffix}", {"conversion": args.conversion, "train_pairs": len(train),
                                       "val_pairs": len(val), "precision": "bf16" if bf16 else "fp32", "arms": results})


if __name__ == "__main__":
    main()
