"""A/B at equal time: where the byte memory places a conversion's queries (hex, issue #27).

    python benchmarks/paired_alignment.py [--data data/dataset] [--minutes 6]

Today the query of target byte t of a `paired` window is rotated to source position align + t,
the input byte at the same offset (`OmniByteFormer.query_rotation`). That is exact for a
conversion that keeps offsets (upper, gray) and off by a growing distance for one that does not:
hex writes three characters per input byte. Two arms, trained one after the other:

- `same offset` (today): each query at the input byte at its own offset;
- `encoded byte`: each query at the input byte its character encodes (line * 16 + column // 3).

Both: the model shape and optimiser of params.yaml, the hex pairs of the training split only,
every window of each target as training builds them (`paired_example`, `collate`), the lr
schedule run over the same wall-clock minutes, bf16 where the CPU has it, the same seed.
Reported: bytes right (teacher-forced) and bits per byte on the validation split's hex pairs.
Saves results/paired_alignment.json. The arms differ only in the query positions, which is what
the proposal in #27 would change in the product (training, generation and scoring).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402
from obf.core.params import load_params  # noqa: E402
from obf.core.vocab import PAD, PAIRED_TAGS  # noqa: E402
from obf.data.dataset import Dataset  # noqa: E402
from obf.data.objectives import Batch, collate, paired_example  # noqa: E402
from obf.formats.conversions import HEX_PER_LINE, convert  # noqa: E402
from obf.model.devices import use_bf16  # noqa: E402
from obf.model.layers import rotary_at  # noqa: E402
from obf.model.network import OmniByteFormer  # noqa: E402
from obf.train import loss_bits, lr_at, make_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LINE = 3 * HEX_PER_LINE  # characters of a full hex line: "xx " x 15 + "xx\n"


def encoded_byte(c: np.ndarray, n_input: int) -> np.ndarray:
    """The input byte that hex character `c` (its offset in the target) encodes; EOS and any
    offset past the end read the last byte."""
    line, col = np.divmod(c, LINE)
    return np.minimum(line * HEX_PER_LINE + col // 3, n_input - 1)


class ByEncodedByte(OmniByteFormer):
    """Arm `encoded byte`: `offsets` (N, T), set before each forward, move each query from
    align + t to the source position of the byte its character encodes."""

    offsets: torch.Tensor

    def query_rotation(self, align: torch.Tensor, n_past: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = align[:, None] + n_past + torch.arange(t, device=align.device) + self.offsets[:, n_past:n_past + t]
        cos, sin = rotary_at(pos, self.rope_inv_freq)
        return cos[:, None], sin[:, None]


def hex_pairs(ds: Dataset, split: str) -> list[tuple[bytes, bytes]]:
    """(input, target) of the split's pairs whose target is exactly the hex of the input."""
    out = []
    for inp, tgt in ds.pairs(split):
        a, b = ds.file_bytes(inp).tobytes(), ds.file_bytes(tgt).tobytes()
        if inp.modality == "binary" and tgt.modality == "text" and _is_hex(a, b):
            out.append((a, b))
    return out


def _is_hex(a: bytes, b: bytes) -> bool:
    try:
        return convert("hex", a)[1] == b
    except Exception:  # not an input hex takes
        return False


def batch_of(pairs: list[tuple[bytes, bytes]], max_input_len: int, t: int) -> tuple[Batch, np.ndarray]:
    """Every window of each pair's target, collated, and each query's move (N, T) from align + j
    to its encoded byte."""
    examples = [paired_example(a, "binary", b, "text", max_input_len, t, range(len(b) // t + 1))
                for a, b in pairs]
    batch = collate(examples)
    offsets = np.zeros(batch.dec.shape, np.int64)
    n = 0
    for (a, _), e in zip(pairs, examples):
        for k in range(len(e.earlier) + 1):  # collate lays out each example's windows in order
            c = k * t + np.arange(batch.dec.shape[1])
            offsets[n] = encoded_byte(c, len(a)) - c
            n += 1
    return batch, offsets


def forward(model: OmniByteFormer, batch: Batch, offsets: np.ndarray, device: torch.device) -> torch.Tensor:
    """Logits (N, T, V) of every window of `batch`, as training computes them (`forward_windows`)."""
    if isinstance(model, ByEncodedByte):
        model.offsets = torch.from_numpy(offsets).to(device)

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(device)

    return model(t(batch.src), t(batch.dec), t(batch.rows), t(batch.visible), t(batch.align))


def run_arm(arm: type[OmniByteFormer], train: list, val: list, params, minutes: float, batch_size: int,
            device: torch.device, bf16: bool) -> dict:
    """Train one arm from the seed for `minutes` (random pairs, every window of each), then score
    the validation pairs teacher-forced."""
    torch.manual_seed(params.train.seed)
    model = arm(params.model).to(device)
    opt = make_optimizer(model, params.train, device)
    rng = np.random.default_rng(params.train.seed)
    t_len, max_in = params.model.max_tgt_len, params.model.max_input_len
    start, step, budget = time.perf_counter(), 0, minutes * 60
    while (spent := time.perf_counter() - start) < budget:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, params.train, spent / budget)
        picks = [train[i] for i in rng.integers(0, len(train), batch_size)]
        batch, offsets = batch_of(picks, max_in, t_len)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            bits, count = loss_bits(forward(model, batch, offsets, device), torch.from_numpy(batch.tgt).to(device))
        opt.zero_grad(set_to_none=True)
        (bits / count * float(np.log(2))).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.train.grad_clip)
        opt.step()
        step += 1
    model.eval()
    right = total = 0
    bits_sum = 0.0
    with torch.no_grad():
        for i in range(0, len(val), 16):
            batch, offsets = batch_of(val[i:i + 16], max_in, t_len)
            logits = forward(model, batch, offsets, device).float()
            tgt = torch.from_numpy(batch.tgt).to(device)
            keep = tgt != PAD
            right += int(((logits.argmax(-1) == tgt) & keep).sum())
            total += int(keep.sum())
            bits_sum += float(loss_bits(logits, tgt)[0])
    return {"steps": step, "minutes": minutes, "val_bytes": total, "bytes_right": right / total,
            "bpb": bits_sum / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "dataset"))
    ap.add_argument("--minutes", type=float, default=6.0, help="training time of each arm")
    ap.add_argument("--batch-size", type=int, default=0, help="pairs per step (default: train.batch_size)")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    ds = Dataset(args.data)
    train, val = hex_pairs(ds, "train"), hex_pairs(ds, "val")
    if not train or not val:
        sys.exit(f"{args.data}: no hex pairs in the train or val split")
    device = torch.device("cpu")
    bf16 = use_bf16(device, params.train.precision)
    assert PAIRED_TAGS == 3  # the offsets above move queries within the input, which starts after the tags
    results = {}
    for name, arm in (("same offset", OmniByteFormer), ("encoded byte", ByEncodedByte)):
        results[name] = run_arm(arm, train, val, params, args.minutes, args.batch_size or params.train.batch_size,
                                device, bf16)
        r = results[name]
        print(f"{name:13s} {r['steps']:5d} steps in {args.minutes:g} min: bytes right {r['bytes_right']:.1%}, "
              f"{r['bpb']:.3f} bits per byte on {r['val_bytes']} validation target bytes")
    save("paired_alignment", {"train_pairs": len(train), "val_pairs": len(val), "precision": "bf16" if bf16 else "fp32",
                              "arms": results})


if __name__ == "__main__":
    main()
