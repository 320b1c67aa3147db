"""Small helpers shared by the benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        # The host class the README's timings name: the widest CPU kernels torch picks, and bf16's.
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        from obf.model.devices import cpu_bf16_pays

        info["cpu_bf16"] = cpu_bf16_pays()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def save(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
               **results}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"saved {path}")
    return path


def train_flops_per_step(cfg, batch: int, src_len: int, tgt_len: int) -> float:
    """Forward + backward FLOPs (3 x forward) of the matrix products and attention of one step.

    `cfg` is an obf ModelConfig. Encoder positions are src_len / patch_size; decoder self-attention
    is causal (half the score matrix), cross-attention reads every patch.
    """
    d, ff = cfg.d_model, cfg.d_ff
    sp = src_len // cfg.patch_size
    enc_block = 2 * (4 * d * d + 3 * d * ff) + 4 * sp * d
    dec_block = 2 * (4 * d * d + 2 * d * d + 3 * d * ff) + 2 * tgt_len * d + 4 * sp * d
    cross_kv = 2 * 2 * d * d * cfg.decoder_layers  # K/V projections of every patch for each decoder layer
    head = 2 * d * cfg.vocab_size
    fwd = batch * sp * (cfg.encoder_layers * enc_block + cross_kv) + batch * tgt_len * (
        cfg.decoder_layers * dec_block + head
    )
    return 3.0 * fwd


def score_held_out(model: str, files: dict[str, bytes]) -> list[dict[str, Any]]:
    """Whole-file bits per byte of `model` (a model or ONNX dir) on files made by a benchmark, as
    served (`model_bpb`, with its mixer) and of the network alone, beside the best compressor of
    each: one row per file, `obf evaluate --per-file` on a temp folder with params.yaml's settings
    (samples and denoise scoring kept minimal)."""
    import tempfile

    from obf.core.params import load_params
    from obf.evaluate.baselines import compressed_sizes
    from obf.evaluate.run import evaluate

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        held = Path(tmp) / "held"
        held.mkdir()
        for name, data in files.items():
            (held / name).write_bytes(data)
        params = load_params(root / "params.yaml", ["evaluate.sample_bytes=16", "evaluate.denoise_windows=0"])
        m = evaluate(model, str(held), Path(tmp) / "eval" / "metrics.json", params, per_file=True, progress=False)
    rows = []
    for f in m["files"]:
        data = files[f["path"]]
        sizes = compressed_sizes(data)
        best = min((k for k in sizes if k != "best"), key=lambda k: sizes[k])
        rows.append(
            {
                "file": f["path"],
                "modality": f["modality"],
                "bytes": f["bytes"],
                "model_bpb": f["bpb"],
                "network_bpb": f.get("network_bpb", f["bpb"]),
                "xz_bpb": 8 * sizes["xz"] / len(data),
                "best_bpb": 8 * sizes["best"] / len(data),
                "best": best,
            }
        )
    return rows
