"""ONNX export of a trained model: `encoder.onnx` + `decoder.onnx` + `obf.json`, with a parity check.

* encoder.onnx: src_ids (B, S) -> cross_k, cross_v (L, B, H, Sp, D), memory_mask (B, Sp)
* decoder.onnx: dec_ids (B, T), cross_k, cross_v, memory_mask, past_k, past_v (L, B, H, Tp, D)
  -> logits (B, T, V), present_k, present_v (L, B, H, Tp + T, D)

Batch, source, target and cache lengths are dynamic (Tp may be 0 at run time). The export is
written to a temp dir and renamed into place only when the ONNX Runtime logits match the torch
model within `export.max_abs_diff` (1e-3) on real and random inputs, so a failed export leaves
nothing behind. `export.int8` adds `decoder.int8.onnx` / `encoder.int8.onnx` (dynamic
quantisation for CPU) with their parity reported, not enforced.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from obf import storage
from obf.backends.onnx import DECODER, ENCODER, META, sha256_file
from obf.checkpoint import load_model, read_config
from obf.config import ExportConfig
from obf.errors import ObfError
from obf.model import KVCache, Memory, OmniByteFormer
from obf.vocab import Vocab



class ExportError(ObfError):
    """The export failed or its parity with the torch model is out of tolerance."""


class EncoderGraph(nn.Module):
    def __init__(self, model: OmniByteFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mem = self.model.encode(src_ids)
        return mem.k, mem.v, mem.mask


class DecoderGraph(nn.Module):
    def __init__(self, model: OmniByteFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, dec_ids: Tensor, cross_k: Tensor, cross_v: Tensor, memory_mask: Tensor,
                past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, cache = self.model.decode_step(dec_ids, Memory(cross_k, cross_v, memory_mask), KVCache(past_k, past_v))
        return logits, cache.k, cache.v


def _export(module: nn.Module, args: tuple, names_in: list[str], names_out: list[str], dynamic: dict, path: Path,
            opset: int) -> None:
    # The exporter logs a warning for every torchvision op it cannot register; we use none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic, input_names=names_in,
                                 output_names=names_out, opset_version=opset, external_data=False, verbose=False,
                                 optimize=True)
    prog.save(str(path))


def export_graphs(model: OmniByteFormer, out: Path, opset: int) -> None:
    """Write encoder.onnx and decoder.onnx for `model` (fp32, eval mode) into `out`."""
    from torch.export import Dim

    cfg = model.cfg
    model = model.eval().float()
    batch, src, tgt, past, sp = Dim("batch", min=1, max=4096), Dim("src", min=1, max=cfg.max_src_len), \
        Dim("tgt", min=1, max=cfg.max_tgt_len), Dim("past", min=0, max=cfg.max_tgt_len), \
        Dim("patches", min=1, max=cfg.max_src_len // cfg.patch_size + 1)
    src_ids = torch.randint(0, 256, (3, 4 * cfg.patch_size + 3))
    _export(EncoderGraph(model), (src_ids,), ["src_ids"], ["cross_k", "cross_v", "memory_mask"],
            {"src_ids": {0: batch, 1: src}}, out / ENCODER, opset)
    with torch.no_grad():
        mem = model.encode(src_ids)
        _, cache = model.decode_step(torch.randint(0, 256, (3, 3)), mem, model.empty_cache(3))
    dec_ids = torch.randint(0, 256, (3, 2))
    static = Dim.STATIC
    kv = {0: static, 1: batch, 2: static, 3: past, 4: static}
    mk = {0: static, 1: batch, 2: static, 3: sp, 4: static}
    _export(DecoderGraph(model), (dec_ids, mem.k, mem.v, mem.mask, cache.k, cache.v),
            ["dec_ids", "cross_k", "cross_v", "memory_mask", "past_k", "past_v"], ["logits", "present_k", "present_v"],
            {"dec_ids": {0: batch, 1: tgt}, "cross_k": mk, "cross_v": mk, "memory_mask": {0: batch, 1: sp},
             "past_k": kv, "past_v": kv}, out / DECODER, opset)


def parity(model: OmniByteFormer, onnx_dir: Path, real: list[bytes], *, encoder: str = ENCODER,
           decoder: str = DECODER) -> dict[str, float]:
    """Max abs difference of logits, torch vs ONNX Runtime (CPU), full-window and cached-step paths."""
    from obf.backends.onnx import OnnxBackend
    from obf.data import collate, continue_example

    cfg = model.cfg
    ort = OnnxBackend(onnx_dir, provider="cpu", encoder=encoder, decoder=decoder, verify=False, config=cfg.to_dict())
    rng = np.random.default_rng(0)
    examples = []
    for i, data in enumerate(real or [rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()]):
        arr = np.frombuffer(data, dtype=np.uint8)
        start = min(len(arr), cfg.max_src_len // 2 + i)
        examples.append(continue_example(arr, start, "text", cfg.max_src_len, cfg.max_tgt_len))
        examples.append(continue_example(arr, 0, "binary", cfg.max_src_len, cfg.max_tgt_len))
    rand = rng.integers(0, 256, 2 * cfg.max_src_len, dtype=np.uint8)
    examples.append(continue_example(rand, cfg.max_src_len, "binary", cfg.max_src_len, cfg.max_tgt_len))
    b = collate(examples, multiple=max(8, cfg.patch_size))
    with torch.no_grad():
        ref = model(torch.from_numpy(b.src), torch.from_numpy(b.dec)).numpy()
    full = float(np.abs(ort.logits(b.src, b.dec) - ref).max())
    # cached steps: the first 8 decoder positions one by one
    mem = ort.encode(b.src)
    cache = ort.init_cache(mem)
    step = 0.0
    for t in range(min(8, b.dec.shape[1])):
        logits, cache = ort.step(b.dec[:, t], mem, cache)
        step = max(step, float(np.abs(logits - ref[:, t]).max()))
    return {"full": full, "step": step, "max": max(full, step)}


def export(model_dir: str | Path, out_dir: str | Path, cfg: ExportConfig, *, real: list[bytes] | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Export MODEL_DIR to ONNX_DIR atomically; fail (leaving nothing) when parity is out of tolerance."""
    model_cfg, meta = read_config(model_dir)
    model = load_model(model_dir, device="cpu").eval()
    out = Path(out_dir)
    tmp = storage.temp_dir_beside(out)
    try:
        try:
            export_graphs(model, tmp, cfg.opset)
        except Exception as e:  # the exporter raises many error types
            raise ExportError(f"ONNX export failed: {str(e).strip().splitlines()[0][:300]}") from None
        par = parity(model, tmp, real or [])
        if not par["max"] <= cfg.max_abs_diff:
            raise ExportError(f"parity check failed: max abs logit difference {par['max']:.2e} > {cfg.max_abs_diff:g}")
        files = {ENCODER: sha256_file(tmp / ENCODER), DECODER: sha256_file(tmp / DECODER)}
        int8 = None
        if cfg.int8:
            int8 = quantize_int8(model, tmp, real or [])
            files.update({f: sha256_file(tmp / f) for f in (Q_ENCODER, Q_DECODER)})
        info = {"format": "obf-onnx", "version": 1, "config": model_cfg.to_dict(), "vocab": Vocab().to_dict(),
                "opset": cfg.opset, "sha256": files, "parity": {"max_abs_diff": par["max"], "full": par["full"],
                                                                "step": par["step"], "tolerance": cfg.max_abs_diff},
                "int8": int8, "source": {"step": meta.get("step")},
                "ingest": meta.get("ingest")}  # the canonical forms the model was trained on
        (tmp / META).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        storage.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"export: {out} (opset {cfg.opset}), parity max abs diff {par['max']:.2e}", file=sys.stderr)
    return info


Q_ENCODER, Q_DECODER = "encoder.int8.onnx", "decoder.int8.onnx"


def quantize_int8(model: OmniByteFormer, out: Path, real: list[bytes]) -> dict[str, Any]:
    """Dynamic int8 quantisation of MatMul weights for CPU; parity reported (not enforced)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for src, dst in ((ENCODER, Q_ENCODER), (DECODER, Q_DECODER)):
        quantize_dynamic(str(out / src), str(out / dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    par = parity(model, out, real, encoder=Q_ENCODER, decoder=Q_DECODER)
    return {"encoder": Q_ENCODER, "decoder": Q_DECODER, "max_abs_diff": par["max"]}
