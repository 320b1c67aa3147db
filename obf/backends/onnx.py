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
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from obf.errors import ObfError
from obf.vocab import Vocab

ENCODER, DECODER, META = "encoder.onnx", "decoder.onnx", "obf.json"


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
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
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
                 encoder: str = ENCODER, decoder: str = DECODER, verify: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        """`verify=False` with an explicit `config` is for the export's own parity check only."""
        if provider not in ("auto", "cpu", "cuda"):
            raise OnnxModelError(f"provider must be auto, cpu or cuda, got {provider!r}")
        self.dir = Path(onnx_dir)
        if verify:
            self.meta = read_meta(self.dir)
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

    # -- protocol ---------------------------------------------------------------------------

    def encode(self, src_ids: np.ndarray) -> dict[str, Any]:
        src = np.ascontiguousarray(src_ids, dtype=np.int64)
        if self.cuda:
            io = self.enc.io_binding()
            io.bind_cpu_input("src_ids", src)
            for name in ("cross_k", "cross_v", "memory_mask"):
                io.bind_output(name, "cuda")
            self.enc.run_with_iobinding(io)
            k, v, mask = io.get_outputs()
            return {"cross_k": k, "cross_v": v, "memory_mask": mask, "batch": src.shape[0]}
        k, v, mask = self.enc.run(None, {"src_ids": src})
        return {"cross_k": k, "cross_v": v, "memory_mask": mask, "batch": src.shape[0]}

    def init_cache(self, memory: dict[str, Any]) -> tuple[Any, Any]:
        shape = (self.layers, memory["batch"], self.heads, 0, self.head_dim)
        z = np.zeros(shape, dtype=np.float32)
        if self.cuda:
            return ort.OrtValue.ortvalue_from_numpy(z, "cuda", 0), ort.OrtValue.ortvalue_from_numpy(z.copy(), "cuda", 0)
        return z, z.copy()

    def _run_decoder(self, dec_ids: np.ndarray, memory: dict[str, Any], cache: tuple[Any, Any]
                     ) -> tuple[np.ndarray, tuple[Any, Any]]:
        dec = np.ascontiguousarray(dec_ids, dtype=np.int64)
        if self.cuda:
            io = self.dec.io_binding()
            io.bind_cpu_input("dec_ids", dec)
            for name in ("cross_k", "cross_v", "memory_mask"):
                io.bind_ortvalue_input(name, memory[name])
            io.bind_ortvalue_input("past_k", cache[0])
            io.bind_ortvalue_input("past_v", cache[1])
            io.bind_output("logits", "cpu")
            io.bind_output("present_k", "cuda")
            io.bind_output("present_v", "cuda")
            self.dec.run_with_iobinding(io)
            logits, k, v = io.get_outputs()
            return logits.numpy(), (k, v)
        logits, k, v = self.dec.run(None, {"dec_ids": dec, "cross_k": memory["cross_k"], "cross_v": memory["cross_v"],
                                           "memory_mask": memory["memory_mask"], "past_k": cache[0], "past_v": cache[1]})
        return logits, (k, v)

    def step(self, tokens: np.ndarray, memory: dict[str, Any], cache: tuple[Any, Any]) -> tuple[np.ndarray, tuple[Any, Any]]:
        logits, cache = self._run_decoder(np.asarray(tokens, dtype=np.int64)[:, None], memory, cache)
        return logits[:, -1], cache

    def logits(self, src_ids: np.ndarray, dec_ids: np.ndarray) -> np.ndarray:
        """Teacher-forced logits (B, T, V) for src (B, S) and decoder input (B, T)."""
        memory = self.encode(src_ids)
        logits, _ = self._run_decoder(dec_ids, memory, self.init_cache(memory))
        return logits


def load(onnx_dir: str, *, provider: str = "auto") -> OnnxBackend:
    return OnnxBackend(onnx_dir, provider=provider)
