"""The sampling Backend over the PyTorch model (reference generator; also used by evaluation)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from obf.core.errors import ObfError
from obf.model.checkpoint import load_model, read_config
from obf.model.devices import resolve_device, use_bf16
from obf.model.layers import Memory, StaticKVCache, StepWeights
from obf.model.network import OmniByteFormer


class TorchBackend:
    """encode / init_cache / step with the torch model, under inference mode.

    The decode step reads the decoder's weights from a `StepWeights` built once here (each
    matrix transposed, norm gains folded in).

    In bf16 the backend runs a bf16 copy of the weights rather than fp32 weights under autocast:
    autocast re-casts every weight on every call, which is most of a decode step's cost at small
    batches. The cache is a preallocated `StaticKVCache` written in place, one column per step.
    On CPU the decode step's attention stays fp32 under bf16 weights (cache and cross K/V held in
    fp32): PyTorch's CPU attention kernel in bf16 is slower than in fp32 for one query at batch 8
    and up (benchmarks/generate.py).
    """

    def __init__(self, model: OmniByteFormer, *, device: str | torch.device | None = None,
                 precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16", "auto"):
            raise ObfError(
                f"a checkpoint runs in fp32 or bf16, not {precision} (int8 and fp16 are for `obf export` dirs)"
            )
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.dtype = torch.bfloat16 if use_bf16(self.device, precision) else torch.float32
        model = model.eval().to(self.device)
        self.model = model if self.dtype == torch.float32 else copy.deepcopy(model).to(self.dtype)
        # the cross-attention angles are position x frequency: a bf16 frequency would turn a rounding
        # error into an angle error that grows with distance, so the frequencies stay fp32
        self.model.rope_inv_freq = model.rope_inv_freq.float()
        self.step_weights: StepWeights = model.step_weights(self.dtype)  # folded in fp32, then cast
        self.attn_dtype = torch.float32 if self.device.type == "cpu" else self.dtype  # decode-step attention
        self.precision = precision
        self.max_src_len = model.cfg.max_src_len
        self.max_input_len = model.cfg.input_len
        self.max_tgt_len = model.cfg.max_tgt_len
        self.vocab_size = model.cfg.vocab_size
        self.patch_size = model.cfg.patch_size
        self.causal_encoder = model.cfg.causal_encoder
        self.query_map = model.cfg.query_map
        self.input_end = model.cfg.input_end
        self.layout_input = model.cfg.layout_input
        self.paired_places = model.cfg.paired_placed
        self.meta: dict = {}  # config.json of the checkpoint, when loaded from a dir

    def _ids(self, ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self.device)

    def _places(self, places: np.ndarray | None) -> torch.Tensor | None:
        """Place ids for a model with `layout_input`; None (no place) otherwise or when not given."""
        return None if places is None or not self.layout_input else self._ids(places)

    @torch.inference_mode()
    def encode(self, src_ids: np.ndarray, align: np.ndarray | None = None) -> Memory:
        """src_ids (B, S); align (B,): each row's first target lies at this source position
        (default S, `continue`; see `OmniByteFormer.encode`)."""
        mem = self.model.encode(self._ids(src_ids), None if align is None else self._ids(align))
        return Memory(mem.k.to(self.attn_dtype), mem.v.to(self.attn_dtype), mem.mask, mem.align)

    @torch.inference_mode()
    def init_cache(self, memory: Memory) -> StaticKVCache:
        return self.model.static_cache(memory.k.shape[1], device=self.device, dtype=self.attn_dtype)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, memory: Memory, cache: StaticKVCache, shift: np.ndarray | None = None,
             places: np.ndarray | None = None) -> tuple[np.ndarray, StaticKVCache]:
        ids = self._ids(tokens).unsqueeze(1)  # (B, 1)
        if shift is not None:  # this step's queries move from align + past (`OmniByteFormer.query_rotation`)
            memory = memory._replace(align=memory.align + self._ids(shift))
        pl = self._places(places)
        pl = None if pl is None else pl.unsqueeze(1)  # (B, 1, 3)
        logits, cache = self.model.decode_step(ids, memory, cache, self.step_weights, pl)  # (B, 1, V)
        assert isinstance(cache, StaticKVCache)
        return logits.select(1, 0).float().cpu().numpy(), cache

    @torch.inference_mode()
    def logits(self, src_ids: np.ndarray, dec_ids: np.ndarray, align: np.ndarray | None = None,
               places: np.ndarray | None = None) -> np.ndarray:
        """Teacher-forced logits (B, T, V) float32 for src (B, S) and decoder input (B, T); align
        as for `encode`; places (B, T, 3) the targets' place ids."""
        a = None if align is None else self._ids(align)
        out = self.model(self._ids(src_ids), self._ids(dec_ids), align=a, places=self._places(places))
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def window_logits(
        self,
        src_ids: np.ndarray,
        dec_ids: np.ndarray,
        rows: np.ndarray,
        visible: np.ndarray,
        align: np.ndarray | None = None,
        shift: np.ndarray | None = None,
        places: np.ndarray | None = None,
    ) -> np.ndarray:
        """Teacher-forced logits (N, T, V) float32 of many windows per source, one encoder pass
        (`OmniByteFormer.forward_windows`)."""
        a = None if align is None else self._ids(align)
        sh = None if shift is None else self._ids(shift)
        out = self.model.forward_windows(self._ids(src_ids), self._ids(dec_ids), self._ids(rows), self._ids(visible),
                                         a, sh, self._places(places))
        return out.float().cpu().numpy()


def load(model_dir: str, *, device: str = "auto", precision: str = "fp32") -> TorchBackend:
    """A TorchBackend over a training checkpoint dir (model.safetensors + config.json)."""

    dev = resolve_device(device, "provider")
    backend = TorchBackend(load_model(model_dir, device=dev), device=dev, precision=precision)
    backend.meta = read_config(model_dir)[1]
    return backend
