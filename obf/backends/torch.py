"""The sampling Backend over the PyTorch model (reference generator; also used by evaluation)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from obf.model import KVCache, Memory, OmniByteFormer


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (or `auto` on CUDA with bf16 support); a no-op otherwise."""
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TorchBackend:
    """encode / init_cache / step with the torch model, under inference mode."""

    def __init__(self, model: OmniByteFormer, *, device: str | torch.device | None = None,
                 precision: str = "fp32") -> None:
        self.model = model.eval()
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self.precision = precision
        self.max_src_len = model.cfg.max_src_len
        self.max_tgt_len = model.cfg.max_tgt_len
        self.vocab_size = model.cfg.vocab_size
        self.patch_size = model.cfg.patch_size
        self.meta: dict = {}  # config.json of the checkpoint, when loaded from a dir

    @torch.inference_mode()
    def encode(self, src_ids: np.ndarray) -> Memory:
        src = torch.from_numpy(np.ascontiguousarray(src_ids, dtype=np.int64)).to(self.device)
        with autocast_for(self.device, self.precision):
            return self.model.encode(src)

    def init_cache(self, memory: Memory) -> KVCache:
        return self.model.empty_cache(memory.k.shape[1], device=self.device, dtype=memory.k.dtype)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, memory: Memory, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        t = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)[:, None]  # (B, 1)
        with autocast_for(self.device, self.precision):
            logits, cache = self.model.decode_step(t, memory, cache)  # (B, 1, V)
        return logits[:, -1].float().cpu().numpy(), cache

    @torch.inference_mode()
    def logits(self, src_ids: np.ndarray, dec_ids: np.ndarray) -> np.ndarray:
        """Teacher-forced logits (B, T, V) float32 for src (B, S) and decoder input (B, T)."""
        src = torch.from_numpy(np.ascontiguousarray(src_ids, dtype=np.int64)).to(self.device)
        dec = torch.from_numpy(np.ascontiguousarray(dec_ids, dtype=np.int64)).to(self.device)
        with autocast_for(self.device, self.precision):
            out = self.model(src, dec)
        return out.float().cpu().numpy()


def load(model_dir: str, *, device: str = "auto", precision: str = "fp32") -> TorchBackend:
    """A TorchBackend over a training checkpoint dir (model.safetensors + config.json)."""
    from obf.checkpoint import load_model, read_config

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    backend = TorchBackend(load_model(model_dir, device=dev), device=dev, precision=precision)
    backend.meta = read_config(model_dir)[1]
    return backend
