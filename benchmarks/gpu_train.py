"""A short bf16 training run of a preset on the sample corpus: throughput and model FLOP utilisation.

    python benchmarks/gpu_train.py DATASET_DIR [--preset base] [--minutes 3] [--batch 32]
        [--src 2048] [--tgt 512] [--compile]

Runs the real `obf.train.train` loop (objectives, AdamW, bf16 autocast, validation) for a time
budget, then reports target bytes/s and achieved FLOP/s against a measured bf16 matrix-product
peak of the same device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save, train_flops_per_step  # noqa: E402
from obf.core.params import load_params
from obf.train import train  # noqa: E402


def peak(device: str, dtype=torch.bfloat16, n: int = 8192, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize() if device == "cuda" else None
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize() if device == "cuda" else None
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--src", type=int, default=2048)
    ap.add_argument("--tgt", type=int, default=512)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    params = load_params(None, [f"model.preset={args.preset}", f"model.max_src_len={args.src}",
                                f"model.max_tgt_len={args.tgt}", f"model.patch_size={args.patch}",
                                f"train.batch_size={args.batch}", "train.steps=100000", f"train.minutes={args.minutes}",
                                "train.eval_every=500", "train.checkpoint_every=100000", "train.lr=6.0e-4",
                                "train.warmup_steps=100", "train.task_weights={continue: 0.9, denoise: 0.1}",
                                f"train.compile={'true' if args.compile else 'false'}"])
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(args.dataset, Path(tmp) / "model", params, progress=True, live_dir=Path(tmp) / "live")
    flops_step = train_flops_per_step(params.model, args.batch, args.src, args.tgt)
    # every step's targets are the full window except where files end: use the measured bytes/s
    steps_per_s = summary["steps"] / summary["seconds"]
    achieved = flops_step * steps_per_s
    pk = peak(dev)
    res = {
        "preset": args.preset,
        "params": summary["params"],
        "device": dev,
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None,
        "batch": args.batch,
        "src_bytes": args.src,
        "tgt_bytes": args.tgt,
        "patch_size": args.patch,
        "compile": args.compile,
        "steps": summary["steps"],
        "seconds": summary["seconds"],
        "target_bytes_per_s": summary["target_bytes_per_s"],
        "steps_per_s": steps_per_s,
        "achieved_flops": achieved,
        "bf16_matmul_peak": pk,
        "mfu": achieved / pk,
        "final_loss_bpb": summary["final_loss_bpb"],
        "val_bpb": summary["val_bpb"],
        "precision": summary["precision"],
    }
    print(
        f"{args.preset}: {summary['params'] / 1e6:.1f} M params, {summary['steps']} steps "
        f"in {summary['seconds']:.0f}s, "
        f"{summary['target_bytes_per_s']:,.0f} target bytes/s, {achieved / 1e12:.1f} TFLOP/s achieved vs "
        f"{pk / 1e12:.0f} TFLOP/s bf16 matmul peak (MFU {res['mfu']:.1%}); val bpb {summary['val_bpb']}"
    )
    save(f"gpu_train_{args.preset}", res)


if __name__ == "__main__":
    main()
