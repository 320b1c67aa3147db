"""The sampling Backend over ONNX Runtime sessions. Imports no torch.

`OnnxBackend(onnx_dir, provider="auto")` verifies the sha256 of each graph against `obf.json`
(a tampered or mixed-up dir is refused), then opens the encoder and decoder sessions. Provider
`auto` asks for CUDA, then CPU, and reports what it really got (`providers`). On CUDA the
self-attention cache and cross K/V stay on the device between steps (IO binding); only the
logits of the newest position come back to the host.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from obf.errors import ObfError
from obf.system import usable_cpus
from obf.vocab import Vocab

ENCODER, DECODER, META = "encoder.onnx", "decoder.onnx", "obf.json"
GRAPH_VERSION = 2  # the graphs' input/output layout (obf/export.py); 1 = stacked cache tensors


def kv_names(prefix: str, layers: int) -> list[str]:
    """Graph input/output names of per-layer K/V tensors: `cross` -> [cross_k_0, cross_v_0, ...]."""
    return [f"{prefix}_{kv}_{i}" for i in range(layers) for kv in "kv"]


class OnnxModelError(ObfError):
    """An ONNX model dir is missing, corrupt, tampered with or cannot run on the asked provider."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_meta(onnx_dir: str | Path) -> dict[str, Any]:
    path = Path(onnx_dir) / META
    if not path.is_file():
        raise OnnxModelError(f"{onnx_dir}: not an exported model dir (no {META}); run `obf export`")
    try:
        meta = json.loads(path.read_text())
        Vocab.check(meta["vocab"])
        meta["config"]["max_src_len"], meta["sha256"]  # noqa: B018  (presence check)
    except (ValueError, KeyError, TypeError) as e:
        raise OnnxModelError(f"{path}: corrupt or incompatible ({e})") from None
    if meta.get("version") != GRAPH_VERSION:
        raise OnnxModelError(f"{path}: graph layout version {meta.get('version')}, this obf runs version "
                             f"{GRAPH_VERSION}; re-run `obf export` on the model")
    return meta


def verify_graphs(onnx_dir: str | Path, meta: dict[str, Any], names: list[str]) -> None:
    """Refuse graphs whose sha256 differs from obf.json."""
    for name in names:
        p = Path(onnx_dir) / name
        want = meta["sha256"].get(name)
        if not p.is_file():
            raise OnnxModelError(f"{onnx_dir}: missing {name}")
        if want is None or sha256_file(p) != want:
            raise OnnxModelError(f"{p}: sha256 does not match obf.json (tampered or mixed up); refusing to load")


def _session(path: Path, provider: str, threads: int | None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or usable_cpus()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if provider == "cpu" or "CUDAExecutionProvider" not in ort.get_available_providers():
        if provider == "cuda":
            raise OnnxModelError("provider cuda: this onnxruntime has no CUDAExecutionProvider")
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    # onnxruntime-gpu lists CUDA even where its libraries are missing, then logs a loud error when
    # it fails to create it; keep that quiet and check what we really got.
    ort.set_default_logger_severity(4)
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    finally:
        ort.set_default_logger_severity(2)
    if provider == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise OnnxModelError("provider cuda: CUDAExecutionProvider could not be created (CUDA 13 + cuDNN 9 needed)")
    return sess


class OnnxBackend:
    """encode / init_cache / step / logits over ONNX Runtime."""

    def __init__(self, onnx_dir: str | Path, *, provider: str = "auto", threads: int | None = None,
                 precision: str = "fp32", encoder: str = ENCODER, decoder: str = DECODER, verify: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        """`precision` int8 runs the dynamically quantised graphs of `export.int8` (made for CPU).
        `verify=False` with an explicit `config` is for the export's own parity check only."""
        if provider not in ("auto", "cpu", "cuda"):
            raise OnnxModelError(f"provider must be auto, cpu or cuda, got {provider!r}")
        if precision not in ("fp32", "int8"):
            raise OnnxModelError(f"{onnx_dir}: ONNX graphs run in fp32 or int8, not {precision} "
                                 "(bf16 is for checkpoint dirs)")
        self.dir = Path(onnx_dir)
        self.precision = precision
        if verify:
            self.meta = read_meta(self.dir)
            if precision == "int8":
                if not self.meta.get("int8"):
                    raise OnnxModelError(f"{self.dir}: exported without int8 graphs; re-export with "
                                         "`--set export.int8=true`")
                encoder, decoder = self.meta["int8"]["encoder"], self.meta["int8"]["decoder"]
            verify_graphs(self.dir, self.meta, [encoder, decoder])
            cfg = self.meta["config"]
        else:
            assert config is not None, "an unverified backend needs the model config"
            self.meta, cfg = None, config
        try:
            self.enc = _session(self.dir / encoder, provider, threads)
            self.dec = _session(self.dir / decoder, provider, threads)
        except OnnxModelError:
            raise
        except Exception as e:  # onnxruntime raises Fail / InvalidGraph / ...
            raise OnnxModelError(f"{self.dir}: cannot load graphs ({str(e).splitlines()[0][:200]})") from None
        self.providers = self.dec.get_providers()
        self.cuda = self.providers[0] == "CUDAExecutionProvider"
        self.max_src_len = int(cfg["max_src_len"])
        self.max_tgt_len = int(cfg["max_tgt_len"])
        self.vocab_size = int(cfg["vocab_size"])
        self.patch_size = int(cfg["patch_size"])
        self.layers, self.heads = int(cfg["decoder_layers"]), int(cfg["n_heads"])
        self.head_dim = int(cfg["d_model"]) // self.heads
        self.cross_names = kv_names("cross", self.layers)
        self.past_names = kv_names("past", self.layers)
        self.present_names = kv_names("present", self.layers)

    # -- protocol ---------------------------------------------------------------------------
    # memory: {"memory_mask", "cross_k_i", "cross_v_i": arrays or OrtValues on the device, "batch"}
    # cache: [past_k_0, past_v_0, past_k_1, ...], each (B, H, T, D)

    def encode(self, src_ids: np.ndarray) -> dict[str, Any]:
        src = np.ascontiguousarray(src_ids, dtype=np.int64)
        names = ["memory_mask", *self.cross_names]
        if self.cuda:
            io = self.enc.io_binding()
            io.bind_cpu_input("src_ids", src)
            for name in names:
                io.bind_output(name, "cuda")
            self.enc.run_with_iobinding(io)
            outs = io.get_outputs()
        else:
            outs = self.enc.run(names, {"src_ids": src})
        return {**dict(zip(names, outs)), "batch": src.shape[0]}

    def init_cache(self, memory: dict[str, Any]) -> list[Any]:
        b, h, d = memory["batch"], self.heads, self.head_dim
        cache = [np.zeros((b, h, 0, d), dtype=np.float32) for _ in range(2 * self.layers)]
        if self.cuda:
            return [ort.OrtValue.ortvalue_from_numpy(z, "cuda", 0) for z in cache]
        return cache

    def _run_decoder(self, dec_ids: np.ndarray, memory: dict[str, Any], cache: list[Any]
                     ) -> tuple[np.ndarray, list[Any]]:
        dec = np.ascontiguousarray(dec_ids, dtype=np.int64)
        if self.cuda:
            io = self.dec.io_binding()
            io.bind_cpu_input("dec_ids", dec)
            for name in ("memory_mask", *self.cross_names):
                io.bind_ortvalue_input(name, memory[name])
            for name, value in zip(self.past_names, cache):
                io.bind_ortvalue_input(name, value)
            io.bind_output("logits", "cpu")
            for name in self.present_names:
                io.bind_output(name, "cuda")
            self.dec.run_with_iobinding(io)
            logits, *cache = io.get_outputs()
            return logits.numpy(), cache
        feeds = {"dec_ids": dec, "memory_mask": memory["memory_mask"], **{n: memory[n] for n in self.cross_names},
                 **dict(zip(self.past_names, cache))}
        logits, *cache = self.dec.run(["logits", *self.present_names], feeds)
        return logits, cache

    def step(self, tokens: np.ndarray, memory: dict[str, Any], cache: list[Any]) -> tuple[np.ndarray, list[Any]]:
        logits, cache = self._run_decoder(np.asarray(tokens, dtype=np.int64)[:, None], memory, cache)
        return logits[:, -1], cache

    def logits(self, src_ids: np.ndarray, dec_ids: np.ndarray) -> np.ndarray:
        """Teacher-forced logits (B, T, V) for src (B, S) and decoder input (B, T)."""
        memory = self.encode(src_ids)
        logits, _ = self._run_decoder(dec_ids, memory, self.init_cache(memory))
        return logits


def load(onnx_dir: str, *, provider: str = "auto", precision: str = "fp32") -> OnnxBackend:
    return OnnxBackend(onnx_dir, provider=provider, precision=precision)
