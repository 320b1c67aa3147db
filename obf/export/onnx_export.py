"""ONNX export of a trained model: `encoder.onnx` + `decoder.onnx` + `obf.json`, with a parity check.

Graph layout (obf.json `version` 3; L decoder layers, i = 0..L-1):

* encoder.onnx: src_ids (B, S) -> memory_mask (B, Sp), cross_k_i, cross_v_i (B, H, Sp, D)
* decoder.onnx: dec_ids (B, T), past_len (), memory_mask, cross_k_i, cross_v_i, past_k_i, past_v_i
  (B, H, T_max, D), align (B, T) (each new id's cross position, less past_len + t: a `paired`
  query placed by `model.query_map`; (B,) in exports made before it, which obf still runs),
  places (B, T, 3) for a model with `model.layout_input` (`obf.formats.places`)
  -> logits (B, T, V), present_k_i, present_v_i (B, H, T_max, D)

The encoder is exported from the torch model (`torch.onnx.export`, dynamo). The decoder is written
node by node from the weights (obf/export/decoder_graph.py) around ONNX Runtime's fused attention and
normalisation kernels, with a fixed-size cache it updates in place: version 2 (the exported decoder,
whose cache grew by a copy every step) ran a batch-8 CPU step slower (benchmarks/generate.py).

Batch, source and target lengths are dynamic; T_max is the decoder window + 1. The export is
written to a temp dir and renamed into place only when the ONNX Runtime logits match the torch
model within `export.max_abs_diff` (1e-3) on real and random inputs, so a failed export leaves
nothing behind. `export.int8` adds `decoder.int8.onnx` / `encoder.int8.onnx` (dynamic
quantisation for CPU) and `export.fp16` adds `decoder.fp16.onnx` / `encoder.fp16.onnx` (for the
CUDA provider: an fp16 decoder, fed by the fp32 encoder whose cross K/V outputs are cast to fp16),
each with its parity reported, not enforced.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor, nn

from obf.core import storage
from obf.core.bits import bits_per_byte
from obf.core.config import ExportConfig
from obf.core.errors import ObfError
from obf.core.vocab import Vocab
from obf.export.decoder_graph import decoder_graph
from obf.model.checkpoint import load_model, read_config
from obf.model.network import OmniByteFormer
from obf.runtime.onnx_backend import DECODER, ENCODER, GRAPH_VERSION, META, kv_names, sha256_file

log = logging.getLogger(__name__)


class ExportError(ObfError):
    """The export failed or its parity with the torch model is out of tolerance."""


class EncoderGraph(nn.Module):
    """src_ids (B, S) -> memory_mask (B, M), then cross_k, cross_v (B, H, M, D) per decoder layer
    (M: source bytes on the patch grid, or patches; `OmniByteFormer.cross_kv`)."""

    def __init__(self, model: OmniByteFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: Tensor) -> tuple[Tensor, ...]:
        mask, kv = self.model.cross_kv(src_ids)
        return (mask, *(t for pair in kv for t in pair))


def _export(module: nn.Module, args: tuple, names_in: list[str], names_out: list[str], dynamic: dict, path: Path,
            opset: int) -> None:
    # The exporter logs a warning for every torchvision op it cannot register; we use none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic, input_names=names_in,
                                 output_names=names_out, opset_version=opset, external_data=False, verbose=False,
                                 optimize=True)
    graph = prog.model_proto
    # The exporter records each node's Python stack trace (absolute source paths and line numbers):
    # drop that per-node metadata so the graph's bytes, and its sha256, depend on the model only.
    for node in [*graph.graph.node, *(n for f in graph.functions for n in f.node)]:
        del node.metadata_props[:]
    onnx.save(graph, str(path))


def export_graphs(model: OmniByteFormer, out: Path, opset: int) -> None:
    """Write encoder.onnx and decoder.onnx for `model` (fp32, eval mode) into `out`."""
    from torch.export import Dim

    cfg = model.cfg
    model = model.eval().float()
    batch, src = Dim("batch", min=1, max=4096), Dim("src", min=1, max=cfg.input_len)
    src_ids = torch.randint(0, 256, (3, 4 * cfg.patch_size + 3))
    _export(EncoderGraph(model), (src_ids,), ["src_ids"], ["memory_mask", *kv_names("cross", cfg.decoder_layers)],
            {"src_ids": {0: batch, 1: src}}, out / ENCODER, opset)
    (out / DECODER).write_bytes(decoder_graph(model, opset).SerializeToString())  # out: a temp dir, renamed whole


Sample = tuple[bytes, str]  # a real file's bytes and its modality


def dataset_samples(data_dir: str | Path, per_modality: int = 2) -> list[Sample]:
    """Up to `per_modality` files of each modality from a dataset's validation split (its training
    split when it has no validation file of that modality), in index order."""
    from obf.data.dataset import Dataset

    ds = Dataset(data_dir)
    out: list[Sample] = []
    for modality in sorted({r.modality for r in ds.records}):
        recs = ds.select(split="val", modality=modality) or ds.select(split="train", modality=modality)
        out += [(ds.file_bytes(r).tobytes(), modality) for r in recs[:per_modality]]
    return out


def parity(model: OmniByteFormer, onnx_dir: Path, real: list[Sample], *, encoder: str = ENCODER,
           decoder: str = DECODER) -> dict[str, float]:
    """Torch vs ONNX Runtime (CPU) on real samples and random bytes: max abs difference of logits on
    the full-window and cached-step paths, and the bits per byte of each on the same targets."""
    from obf.core.vocab import paired_room
    from obf.data.objectives import collate, continue_example, paired_example
    from obf.runtime.onnx_backend import OnnxBackend

    cfg = model.cfg
    ort = OnnxBackend(onnx_dir, provider="cpu", encoder=encoder, decoder=decoder, verify=False, config=cfg.to_dict())
    rng = np.random.default_rng(0)
    examples = []
    for i, (data, modality) in enumerate(real or [(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), "binary")]):
        arr = np.frombuffer(data, dtype=np.uint8)
        start = min(len(arr), cfg.max_src_len // 2 + i)
        examples.append(continue_example(arr, start, modality, cfg.max_src_len, cfg.max_tgt_len, 0, cfg.layout_input))
        examples.append(continue_example(arr, 0, modality, cfg.max_src_len, cfg.max_tgt_len, 0, cfg.layout_input))
    rand = rng.integers(0, 256, 2 * cfg.max_src_len, dtype=np.uint8)
    examples.append(continue_example(rand, cfg.max_src_len, "binary", cfg.max_src_len, cfg.max_tgt_len))
    # a `paired` window far into its target: the cross positions it aligns by reach past the source;
    # binary -> text is `hex`, whose queries move (`query_map`) to the byte each character encodes
    inp = rng.integers(0, 256, paired_room(cfg.input_len, cfg.input_end), dtype=np.uint8).tobytes()
    target = rng.integers(0, 256, 3 * cfg.max_tgt_len, dtype=np.uint8)
    examples.append(paired_example(inp, "binary", target, "text", cfg.input_len, cfg.max_tgt_len, range(2, 3),
                                   query_map=cfg.query_map, input_end=cfg.input_end))
    b = collate(examples, multiple=max(8, cfg.patch_size))  # one window per example
    shift = b.moved  # (B, T) or None
    places = b.places  # (B, T, 3) or None (a model without layout_input)
    with torch.no_grad():
        ref = model(*(None if a is None else torch.from_numpy(a) for a in (b.src, b.dec, b.rows, b.visible, b.align,
                                                                              shift, places))).numpy()
    got = ort.window_logits(b.src, b.dec, b.rows, b.visible, b.align, shift, places)
    full = float(np.abs(got - ref).max())
    # cached steps: the first 8 decoder positions one by one
    mem = ort.encode(b.src, b.align)
    cache = ort.init_cache(mem)
    step = 0.0
    for t in range(min(8, b.dec.shape[1])):
        logits, cache = ort.step(b.dec[:, t], mem, cache, None if shift is None else shift[:, t],
                                 None if places is None else places[:, t])
        step = max(step, float(np.abs(logits - ref[:, t]).max()))
    return {"full": full, "step": step, "max": max(full, step), "bpb_torch": bits_per_byte(ref, b.tgt),
            "bpb": bits_per_byte(got, b.tgt)}


def export(model_dir: str | Path, out_dir: str | Path, cfg: ExportConfig, *, real: list[Sample] | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Export MODEL_DIR to ONNX_DIR atomically; fail (leaving nothing) when parity is out of tolerance.

    `real`: (bytes, modality) samples the parity check (and the int8 report) run on beside random
    bytes; `obf export --data DATA` takes them from a dataset's validation split. `progress` is
    taken as by every stage; export draws no bar, and its summary goes to the `obf` logger."""
    out = Path(out_dir)
    storage.check_output_dir(out, "export", [str(model_dir)])
    model_cfg, meta = read_config(model_dir)
    model = load_model(model_dir, device="cpu").eval()
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
        int8 = fp16 = None
        if cfg.int8:
            int8 = quantize_int8(model, tmp, real or [])
            files.update({f: sha256_file(tmp / f) for f in (Q_ENCODER, Q_DECODER)})
        if cfg.fp16:
            fp16 = half_graphs(model, tmp, cfg.opset, real or [])
            files.update({f: sha256_file(tmp / f) for f in (H_ENCODER, H_DECODER)})
        info = {
            "format": "obf-onnx",
            "version": GRAPH_VERSION,
            "config": model_cfg.to_dict(),
            "vocab": Vocab().to_dict(),
            "opset": cfg.opset,
            "sha256": files,
            "parity": {
                "max_abs_diff": par["max"],
                "full": par["full"],
                "step": par["step"],
                "tolerance": cfg.max_abs_diff,
                "samples": len(real or []),
            },
            "int8": int8,
            "fp16": fp16,
            "source": {"step": meta.get("step")},
            "ingest": meta.get("ingest"),  # the canonical forms the model was trained on
            "mixer": meta.get("mixer"),
        }  # the hints mixed into the graphs' logits (obf.mixer)
        (tmp / META).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        storage.mark_output_dir(tmp, "export")
        storage.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("export: %s (opset %d), parity max abs diff %.2e", out, cfg.opset, par["max"])
    for name, q in (("int8", int8), ("fp16", fp16)):
        if q:
            log.info("export: %s graphs: bits per byte %.4f vs %.4f in fp32 (max abs logit diff %.2e)", name,
                     q["bpb_" + name], q["bpb_fp32"], q["max_abs_diff"])
    return info


Q_ENCODER, Q_DECODER = "encoder.int8.onnx", "decoder.int8.onnx"


def quantize_int8(model: OmniByteFormer, out: Path, real: list[Sample]) -> dict[str, Any]:
    """Dynamic int8 quantisation of MatMul weights for CPU; its logit difference and its bits per
    byte beside the fp32 model's on the parity samples are reported, not enforced."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser advises pre-processing on the root logger, every call
    try:
        for src, dst in ((ENCODER, Q_ENCODER), (DECODER, Q_DECODER)):
            # DefaultTensorType: ONNX shape inference cannot type the outputs of ONNX Runtime's own
            # fused ops (the decoder's attention and norms); every tensor here is float32.
            quantize_dynamic(
                str(out / src),
                str(out / dst),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                extra_options={"DefaultTensorType": TensorProto.FLOAT},
            )
    finally:
        root.setLevel(level)
    par = parity(model, out, real, encoder=Q_ENCODER, decoder=Q_DECODER)
    return {
        "encoder": Q_ENCODER,
        "decoder": Q_DECODER,
        "max_abs_diff": par["max"],
        "bpb_fp32": par["bpb_torch"],
        "bpb_int8": par["bpb"],
    }


H_ENCODER, H_DECODER = "encoder.fp16.onnx", "decoder.fp16.onnx"


def cast_outputs(model: onnx.ModelProto, names: list[str], to: int) -> onnx.ModelProto:
    """`model` with each output in `names` cast to ONNX type `to` (same names, new type)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy to edit
    graph = model.graph
    for name in names:
        inner = f"{name}_before_cast"
        for node in graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        graph.node.append(helper.make_node("Cast", [inner], [name], name=f"{name}/Cast", to=to))
        out = next(o for o in graph.output if o.name == name)
        out.type.tensor_type.elem_type = to
    return model


def half_graphs(model: OmniByteFormer, out: Path, opset: int, real: list[Sample]) -> dict[str, Any]:
    """The fp16 graph pair for the CUDA provider: the decoder written in fp16 (weights, cache and
    cross K/V; logits stay fp32) and the fp32 encoder with its cross K/V outputs cast to fp16. On
    CUDA this is what keeps the self-attention cache on the device (the fp32 decoder's attention
    runs on the CPU provider there). Parity and bits per byte are measured here on the CPU provider,
    reported, not enforced."""
    cross = kv_names("cross", model.cfg.decoder_layers)
    enc = cast_outputs(onnx.load(str(out / ENCODER)), cross, TensorProto.FLOAT16)
    (out / H_ENCODER).write_bytes(enc.SerializeToString())
    (out / H_DECODER).write_bytes(decoder_graph(model, opset, "fp16").SerializeToString())
    par = parity(model, out, real, encoder=H_ENCODER, decoder=H_DECODER)
    return {
        "encoder": H_ENCODER,
        "decoder": H_DECODER,
        "max_abs_diff": par["max"],
        "bpb_fp32": par["bpb_torch"],
        "bpb_fp16": par["bpb"],
    }
