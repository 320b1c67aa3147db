"""Training-step throughput of OmniByteFormer beside Hugging Face T5 in ByT5's shape.

    python benchmarks/train_step.py [--rounds 3] [--steps 3]

Same d_model, heads, d_ff, encoder/decoder layers, batch and lengths (d_model 256, 4 heads,
d_ff 1024, 6 + 2 layers, batch 8, 512 source and 256 target bytes), random init, AdamW, measured
alternately in one run. T5ForConditionalGeneration is configured like ByT5 (vocab 384,
gated-GELU, untied head). Reports target bytes/s, the ratio, our patch-size 4 gain, and our
achieved FLOP/s against a measured matrix-product peak of this machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save, train_flops_per_step  # noqa: E402
from obf.core.config import ModelConfig
from obf.core.vocab import BOS
from obf.model.devices import cpu_bf16_pays
from obf.model.network import OmniByteFormer
from obf.train import loss_bits  # noqa: E402

D, H, FF, ENC, DEC, B, S, T = 256, 4, 1024, 6, 2, 8, 512, 256


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ours(patch: int, device: str, bf16: bool):
    cfg = ModelConfig(d_model=D, n_heads=H, d_ff=FF, encoder_layers=ENC, decoder_layers=DEC, patch_size=patch,
                      max_src_len=S + 8, max_tgt_len=T)
    model = OmniByteFormer(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    src = torch.randint(0, 256, (B, S), device=device)
    tgt = torch.randint(0, 256, (B, T), device=device)
    dec = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], 1)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(src, dec)
        bits, n = loss_bits(logits, tgt)
        opt.zero_grad(set_to_none=True)
        (bits / n).backward()
        opt.step()

    return step, cfg


def t5(device: str, bf16: bool):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=384, d_model=D, d_kv=D // H, d_ff=FF, num_layers=ENC, num_decoder_layers=DEC,
                   num_heads=H, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    src = torch.randint(3, 259, (B, S), device=device)
    labels = torch.randint(3, 259, (B, T), device=device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=src, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def timed(step, n: int, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return B * T * n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = args.device
    bf16 = dev == "cuda" or cpu_bf16_pays()
    torch.manual_seed(0)
    runs = {
        "t5_fp32": t5(dev, False),
        "t5_bf16": t5(dev, True),
        "ours_p1": ours(1, dev, bf16)[0],
        "ours_p4": ours(4, dev, bf16)[0],
    }
    for step in runs.values():  # warm-up (allocations, kernels)
        step()
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, step in runs.items():
            rates[k].append(timed(step, args.steps, dev))
    best = {k: max(v) for k, v in rates.items()}
    peak_bf16 = matmul_peak(torch.bfloat16, dev)
    peak_fp32 = matmul_peak(torch.float32, dev)
    peak = peak_bf16 if bf16 else peak_fp32
    flops = {p: train_flops_per_step(ours(p, dev, bf16)[1], B, S, T) for p in (1, 4)}
    achieved = {p: flops[p] * best[f"ours_p{p}"] / (B * T) for p in (1, 4)}
    ref = max(best["t5_fp32"], best["t5_bf16"])
    res = {
        "shape": {"d_model": D, "heads": H, "d_ff": FF, "encoder_layers": ENC, "decoder_layers": DEC, "batch": B,
                  "src_bytes": S, "tgt_bytes": T},
        "device": dev, "ours_precision": "bf16" if bf16 else "fp32",
        "target_bytes_per_s": best, "all_rounds": rates,
        "ratio_p1_vs_t5_fp32": best["ours_p1"] / best["t5_fp32"],
        "ratio_p1_vs_best_t5": best["ours_p1"] / ref,
        "ratio_p4_vs_best_t5": best["ours_p4"] / ref,
        "p4_gain_over_p1": best["ours_p4"] / best["ours_p1"],
        "peak_flops": {"bf16": peak_bf16, "fp32": peak_fp32},
        "achieved_flops": {f"p{p}": achieved[p] for p in (1, 4)},
        "mfu": {f"p{p}": achieved[p] / peak for p in (1, 4)},
    }
    print(f"train step, {dev}, batch {B}, {S} src + {T} tgt bytes, d_model {D}, {ENC}+{DEC} layers")
    for k, v in best.items():
        print(f"  {k:10s} {v:12,.0f} target bytes/s")
    print(f"  ours P=1 / T5 fp32      {res['ratio_p1_vs_t5_fp32']:.2f}x")
    print(f"  ours P=1 / best T5      {res['ratio_p1_vs_best_t5']:.2f}x")
    print(f"  ours P=4 / best T5      {res['ratio_p4_vs_best_t5']:.2f}x   "
          f"(P=4 over P=1: {res['p4_gain_over_p1']:.2f}x)")
    print(
        f"  achieved {achieved[1] / 1e9:.0f} / {achieved[4] / 1e9:.0f} GFLOP/s (P=1 / P=4) vs measured "
        f"{'bf16' if bf16 else 'fp32'} matmul peak {peak / 1e9:.0f} GFLOP/s "
        f"(MFU {res['mfu']['p1']:.1%} / {res['mfu']['p4']:.1%})"
    )
    save(f"train_step_{dev}", res)


if __name__ == "__main__":
    main()
