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
