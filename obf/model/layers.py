"""The building blocks of the network: RMSNorm, rotary positions, attention, SwiGLU, the
encoder and decoder blocks, and the explicit caches they pass around. Pure PyTorch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from obf.core.config import ModelConfig


class Memory(NamedTuple):
    """What the decoder needs from one encoded batch; computed once per input."""

    k: Tensor  # (L, B, H, M, D) cross-attention keys, one set per decoder layer (with cross_bytes: rotated
    #            by each row's source position)
    v: Tensor  # (L, B, H, M, D) cross-attention values
    mask: Tensor  # (B, M) bool, True where the row holds a real id (a byte; or a patch with at least one)
    align: Tensor  # (B,) or (1,) int64: the source position (on the patch grid) of the decoder's first target


class KVCache(NamedTuple):
    """Decoder self-attention cache that grows by concatenation; T may be 0 before the first step.

    Why two cache designs: this one takes any number of ids per call (a chunk of a prompt, or a
    whole window) and is the plain reference the fast one-id `StaticKVCache` step is tested
    against; generation (the torch backend) uses only `StaticKVCache`."""

    k: Tensor  # (L, B, H, T, D)
    v: Tensor  # (L, B, H, T, D)


class StaticKVCache(NamedTuple):
    """A preallocated decoder cache that `decode_step` fills in place, one id at a time.

    The caller owns the buffers (the model stays stateless); `length` ids are filled. Growing a
    `KVCache` copies the whole cache every step; this writes one column, which is what makes
    long generation cheap. The torch generator uses it; the ONNX graphs (obf/export/onnx_export.py) carry
    their own per-layer cache.
    """

    k: Tensor  # (L, B, H, T_max, D)
    v: Tensor  # (L, B, H, T_max, D)
    length: int


class StepWeights(NamedTuple):
    """The decoder's weights laid out for the one-id decode step (`OmniByteFormer.step_weights`).

    Every matrix is stored transposed, (in, out) and contiguous, and each RMSNorm gain is folded
    into the matrix that reads the normalised rows (rms(x) * g @ W^T = rms(x) @ (W * g)^T), so a
    step is plain `mm` / `addmm` calls with no per-call transpose or gain multiply. On CPU a
    batch-1 step pays per op more than per flop (benchmarks/generate.py measures it). Derived data:
    build it again after the weights change.
    """

    embed: Tensor  # (V, C) decoder embedding
    layers: tuple[tuple[Tensor, ...], ...]  # per layer: qkv (C, 3C), out (C, C), cross q (C, C),
    #                                         cross out (C, C), gate_up (C, 2F), down (F, C)
    head: Tensor  # (C, V), the final norm's gain folded in


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            # The same function in the form ONNX Runtime fuses into one SimplifiedLayerNormalization
            # kernel (F.rms_norm exports as six elementwise nodes, rsqrt as Sqrt + Reciprocal).
            return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotary_tables(n: int, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos, sin tables (n, D/2) for rotary position embedding."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(n, dtype=torch.float32), inv)  # (n, D/2)
    return ang.cos(), ang.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of the head dim. x (B, H, T, D); cos/sin (T, D/2)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def rotary_at(positions: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin (..., D/2) of rotary angles at integer `positions` (...), computed, not looked up:
    cross-attention positions run as far as a long `paired` target does."""
    ang = positions.to(torch.float32)[..., None] * inv_freq  # (..., D/2)
    return ang.cos(), ang.sin()


def rotate_one(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`apply_rotary` in three ops for the one-id decode step: x (..., D); cos = [cos, cos] and
    sin = [-sin, sin] (D,), one position's tables. `roll` swaps the halves, so this is
    (x1 cos - x2 sin, x2 cos + x1 sin), `apply_rotary`'s values (to the last bit or so)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """`F.scaled_dot_product_attention`: q (B, H, T, D), k / v (B, H, N, D), mask bool broadcastable
    to (B, H, T, N) with True = may attend -> (B, H, T, D).

    Two cases take `explicit_attention` instead, the same function written out in matrix products:
    - ONNX export: the exporter's own decomposition of SDPA materialises K^T on every call (a
      Transpose node that took over a third of ONNX Runtime's decode step on CPU), while
      `q @ k.transpose(-2, -1)` fuses into one MatMul.
    - training on CPU: PyTorch's CPU flash-attention backward is slower than the backward of the
      explicit form at our shapes (bf16, 128-256 positions, head dim 64; benchmarks/train_step.py).
    """
    if torch.onnx.is_in_onnx_export() or (q.requires_grad and q.device.type == "cpu"):
        return explicit_attention(q, k, v, mask, is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                       is_causal: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(D) + mask) v in plain ops; shapes as in `attention`. The scale goes on q
    (T x D multiplies, not T x N); the causal mask is an additive (T, N) table of 0 / -inf; the
    softmax runs in the inputs' dtype (in bf16 the kernel accumulates in fp32, and flash attention
    also multiplies bf16 probabilities into V)."""
    w = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))  # (B, H, T, N)
    if is_causal:
        t, n = w.shape[-2:]
        w = w + torch.full((t, n), -torch.inf, dtype=w.dtype, device=w.device).triu(n - t + 1)
    if mask is not None:
        w = w.masked_fill(~mask, -torch.inf)
    return torch.matmul(torch.softmax(w, dim=-1), v)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.h, self.d = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def qkv_heads(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, self.d).permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def merge(self, y: Tensor) -> Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.h * self.d))


class CrossAttention(nn.Module):
    """Decoder bytes attend to the encoder's memory. With `cfg.cross_bytes` the memory holds every
    source byte (its patch's state plus the byte itself, `OmniByteFormer.cross_memory`), keys are
    rotated by the byte's source position and queries by the source position their target lies
    at, so scores see the exact distance between them: `continue` can read the byte one row or
    one sample frame back, `paired` the input byte its target byte comes from (the same offset
    for `upper` and `gray`). Without it, the memory is the patch states, without positions."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.h, self.d = cfg.n_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def project_memory(self, memory: Tensor, cos: Tensor | None = None, sin: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        """memory (B, M, C) -> k, v (B, H, M, D); k rotated by the positions' cos / sin (M, D/2) if given."""
        b, s, _ = memory.shape
        k, v = self.kv(memory).view(b, s, 2, self.h, self.d).permute(2, 0, 3, 1, 4)  # each (B, H, M, D)
        if cos is not None and sin is not None:
            k = apply_rotary(k, cos, sin)
        return k, v

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, cos: Tensor | None = None,
                sin: Tensor | None = None) -> Tensor:
        """x (B, T, C); cos / sin (B, 1, T, D/2) of the queries' positions, or None (no positions)."""
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.d).transpose(1, 2)  # (B, H, T, D)
        if cos is not None and sin is not None:
            q = apply_rotary(q, cos, sin)
        y = attention(q, k, v, mask)  # mask (B, 1, 1, M)
        return self.out(y.transpose(1, 2).reshape(b, t, self.h * self.d))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = self.attn.qkv_heads(self.norm1(x), cos, sin)
        x = x + self.attn.merge(attention(q, k, v, mask))
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = SelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg)
        self.norm3 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, past_k: Tensor | None, past_v: Tensor | None,
                self_mask: Tensor | None, cross_k: Tensor, cross_v: Tensor, cross_mask: Tensor,
                cross_rot: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.self_attn.qkv_heads(self.norm1(x), cos, sin)
        if past_k is not None and past_v is not None:
            k = torch.cat((past_k, k), dim=2)  # (B, H, T_past + T, D)
            v = torch.cat((past_v, v), dim=2)
            y = attention(q, k, v, self_mask)
        else:
            y = attention(q, k, v, is_causal=True)
        x = x + self.self_attn.merge(y)
        x = x + self.cross_attn(self.norm2(x), cross_k, cross_v, cross_mask, *(cross_rot or (None, None)))
        return x + self.mlp(self.norm3(x)), k, v

    def step_in_place(self, x: Tensor, w: tuple[Tensor, ...], cos: Tensor, sin: Tensor, k_buf: Tensor,
                      v_buf: Tensor, past: int, cross_k: Tensor, cross_v: Tensor, cross_mask: Tensor | None,
                      cross_rot: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """One new id per row (x: B, C) after `past` cached ones, with this layer's `StepWeights`
        entry `w`: writes its K/V into column `past` of k_buf / v_buf (B, H, T_max, D) and attends
        to columns 0..past. No self mask is needed: the newest id may see every cached one. cos /
        sin: `rotate_one`'s (D,) tables; `cross_rot` the same tables (B, 1, 1, D) of each row's query
        position in the source (`cross_bytes`). Attention runs in the dtype of the cache and cross K/V,
        which may be wider than the weights' (see `TorchBackend`: bf16 weights with fp32 attention
        on CPU).

        The same function as `forward` for one position, written for the fewest torch ops, since a
        decode step on CPU costs per op, not per flop (a batch-1 step is ~13 small matrix-vector
        products): rows stay (B, C) so no transposes are needed, views are taken with
        `select` / `narrow` rather than indexing, q and k rotate together, and each output
        projection adds into the residual inside one `addmm`."""
        b, h, d = x.shape[0], self.self_attn.h, self.self_attn.d
        c, eps = x.shape[-1:], self.norm1.eps
        w_qkv, w_out, w_cq, w_cout, w_gate_up, w_down = w
        qkv = torch.mm(F.rms_norm(x, c, None, eps), w_qkv).view(b, 3, h, d)
        qk = rotate_one(qkv.narrow(1, 0, 2), cos, sin)  # (B, 2, H, D): q and k
        k_buf.select(2, past).copy_(qk.select(1, 1))  # (casts to the cache's dtype)
        v_buf.select(2, past).copy_(qkv.select(1, 2))
        q = qk.select(1, 0).unsqueeze(2)  # (B, H, 1, D)
        if q.dtype != k_buf.dtype:
            q = q.to(k_buf.dtype)
        n = past + 1
        y = F.scaled_dot_product_attention(q, k_buf.narrow(2, 0, n), v_buf.narrow(2, 0, n))
        x = torch.addmm(x, y.view(b, h * d).to(x.dtype), w_out)
        q = torch.mm(F.rms_norm(x, c, None, eps), w_cq).view(b, h, 1, d)
        if cross_rot is not None:
            q = rotate_one(q, *cross_rot)
        y = F.scaled_dot_product_attention(q.to(cross_k.dtype), cross_k, cross_v, cross_mask)
        x = torch.addmm(x, y.view(b, h * d).to(x.dtype), w_cout)
        gate, up = torch.mm(F.rms_norm(x, c, None, eps), w_gate_up).chunk(2, dim=-1)
        return torch.addmm(x, F.silu(gate).mul_(up), w_down)  # (B, C)
