"""The OmniByteFormer encoder-decoder, pure PyTorch, in one file.

A heavy encoder reads the source bytes, `patch_size` bytes per position (P=1 is plain ByT5,
P>1 is bGPT/MEGABYTE-style patching: P x longer context at the same cost). A light byte-level
decoder cross-attends to the encoder. Pre-norm RMSNorm, rotary positions, SwiGLU, no biases,
`F.scaled_dot_product_attention`.

Byte memory (`cross_bytes`, the default): the decoder cross-attends to every source byte, each a
row of its patch's state plus the byte's own embedding, its key rotated by the byte's position;
the decoder's queries are rotated by the source position their target lies at (`align`: right
after the source for `continue`; for `paired`, the input byte at the same offset, moved by `shift`
to the byte the pair's conversion reads, `obf.formats.conversions.input_offsets`). Attention then
sees exact distances: the byte one image row or one sample frame back, or the input byte a
conversion reads. Without it (models saved before) the decoder reads the patch states, unplaced.

Layout input (`layout_input`): each decoder position also reads where the byte it predicts lies
in its file's layout (`obf.formats.places`: a BMP byte's channel and the byte one row up, a Y4M
byte's plane and its neighbours one row and one frame back, a WAV byte's place in its sample
frame), which 512 bytes into a file the source no longer says. Those ids depend only on the bytes
before the target, so generation gives them at every step as training does.

Long context: with `causal_encoder` the encoder is causal over patches, and the patch grid ends
where the source ends (`collate` and `pad_batch` pad sources on the left, and `encode` pads a
causal source on the left to whole patches). A patch's state then depends only on the bytes up
to its end, so one encoder pass over a long chunk of a file serves a decoder window at every
patch boundary inside it: `forward_windows` scores many windows of one chunk, each
cross-attending only to the patches before its start, and gives the same logits as encoding each
window's own context alone (what generation does). That is what makes a 16 KiB context
affordable in training: every byte of a chunk is a target of one window, and the encoder pays
1/P positions per target byte instead of a pass per window.

The model holds no mutable state: `encode` returns the cross-attention K/V of every decoder layer
once per input, and `decode_step` takes and returns the self-attention KV cache explicitly, so the
same code runs the torch generator and exports to ONNX. The loss lives outside (obf.train).

Shapes: B batch, S source ids, Sp = ceil(S / P) patches, M memory rows (Sp * P bytes, or Sp
patches), T decoder ids, L decoder layers, H heads, D head dim, C d_model, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from obf.core.config import ModelConfig
from obf.core.vocab import PAD
from obf.formats.places import NO_PLACE, SLOT_OFFSETS, TABLE_ROWS
from obf.model.layers import (
    DecoderBlock,
    EncoderBlock,
    KVCache,
    Memory,
    RMSNorm,
    StaticKVCache,
    StepWeights,
    rotary_at,
    rotary_tables,
)


class OmniByteFormer(nn.Module):
    """Byte-level encoder-decoder. `model(src_ids, dec_ids) -> logits (B, T, V)`.

    `dec_ids = [BOS] + target[:-1]`; `logits[:, t]` predicts `target[t]` from the source and
    `target[:t]` only. PAD ids in the source are masked out; padded target positions only ever
    affect later (ignored) positions.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, c, v = cfg.patch_size, cfg.d_model, cfg.vocab_size
        # One table of P * V rows: row (j * V + id) embeds `id` at offset j inside a patch; the
        # patch embedding is their sum (= a linear map of the concatenated one-hots, as in bGPT).
        self.patch_embed = nn.Embedding(p * v, c)
        # with cross_bytes, each source byte's memory row adds the byte itself to its patch's state
        self.cross_embed = nn.Embedding(v, c) if cfg.cross_bytes else None
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.encoder_layers))
        self.enc_norm = RMSNorm(c, cfg.norm_eps)
        self.dec_embed = nn.Embedding(v, c)
        # with layout_input, each decoder position also adds the embeddings of its target byte's
        # place (`obf.formats.places`: phase, byte one row up, byte one frame back; one table)
        self.place_embed = nn.Embedding(TABLE_ROWS, c) if cfg.layout_input else None
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_layers))
        self.dec_norm = RMSNorm(c, cfg.norm_eps)
        self.head = nn.Linear(c, v, bias=False)
        n_pos = max(cfg.input_len // p + 1, cfg.max_tgt_len + 1)
        cos, sin = rotary_tables(n_pos, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # (n_pos, D/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        # rotate_one's tables for the one-id decode step: [cos, cos] and [-sin, sin], (n_pos, D) each
        self.register_buffer("rope_cos_step", torch.cat((cos, cos), dim=-1), persistent=False)
        self.register_buffer("rope_sin_step", torch.cat((-sin, sin), dim=-1), persistent=False)
        self.register_buffer("patch_offsets", torch.arange(p) * v, persistent=False)  # (P,)
        self.register_buffer("slot_offsets", torch.from_numpy(SLOT_OFFSETS), persistent=False)  # (3,)
        self.register_buffer("no_place", torch.from_numpy(NO_PLACE), persistent=False)  # (3,)
        inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
        self.register_buffer("rope_inv_freq", inv_freq, persistent=False)  # (D/2,) cross-attention angles
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        resid_std = std / math.sqrt(2 * (self.cfg.encoder_layers + self.cfg.decoder_layers))
        for name, prm in self.named_parameters():
            if prm.ndim < 2:
                continue
            last = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
            nn.init.normal_(prm, mean=0.0, std=resid_std if last in ("out", "down") else std)

    # ------------------------------------------------------------------ encoder

    def encode(self, src_ids: Tensor, align: Tensor | None = None) -> Memory:
        """src_ids (B, S) int64 -> Memory with cross K/V for every decoder layer. `align` (B,): the
        source position of the decoder's first target (default S, right after the source: the
        `continue` objective; a `paired` window aligns with where its part of the input starts)."""
        mask, kv = self.cross_kv(src_ids)
        ks, vs = zip(*kv)
        return Memory(torch.stack(ks), torch.stack(vs), mask, self.grid_align(src_ids.shape[1], align, src_ids.device))

    def cross_kv(self, src_ids: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """src_ids (B, S) -> the memory mask (B, M) and each decoder layer's cross K, V (B, H, M, D)
        (what the ONNX encoder graph outputs)."""
        memory, mask = self.cross_memory(src_ids)
        rot = self.key_rotation(memory.shape[1])
        return mask, [blk.cross_attn.project_memory(memory, *rot) for blk in self.decoder]

    def cross_memory(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """src_ids (B, S) -> what the decoder cross-attends to (B, M, C) and its mask (B, M): with
        `cross_bytes` one row per source byte on the patch grid (M = Sp * P: the patch's state plus
        the byte's own embedding, PAD rows masked), else the patch states (M = Sp)."""
        states, patch_mask, ids = self._encode(src_ids)
        if self.cross_embed is None:
            return states, patch_mask
        b, sp, c = states.shape
        p = self.cfg.patch_size
        per_byte = states[:, :, None, :].expand(b, sp, p, c).reshape(b, sp * p, c)  # each patch's state, P times
        grid = ids.reshape(b, sp * p)
        return per_byte + self.cross_embed(grid), grid != PAD

    def grid_ids(self, src_ids: Tensor) -> Tensor:
        """src_ids (B, S) padded with PAD to whole patches, as `encode_states` lays them: on the left
        for a causal encoder (the grid ends where the source ends), else on the right."""
        pad = (-src_ids.shape[1]) % self.cfg.patch_size
        if not pad:
            return src_ids
        return F.pad(src_ids, (pad, 0) if self.cfg.causal_encoder else (0, pad), value=PAD)

    def key_rotation(self, n: int) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """cos, sin (M, D/2) of each memory row's source position on the patch grid (with
        `cross_bytes`: row m is byte m); (None, None) for a model without it."""
        if not self.cfg.cross_bytes:
            return None, None
        return rotary_at(torch.arange(n, device=self.rope_inv_freq.device), self.rope_inv_freq)

    def grid_align(self, s: int, align: Tensor | None, device: torch.device) -> Tensor:
        """`align` (B,) or the default S, in source ids -> on the patch grid `encode_states` lays
        (a causal source is left-padded to whole patches, which shifts every position)."""
        shift = (-s) % self.cfg.patch_size if self.cfg.causal_encoder else 0
        if align is None:
            return torch.tensor([s + shift], device=device)
        return align.to(device) + shift

    def encode_states(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """src_ids (B, S) int64 -> encoder output (B, Sp, C) and patch mask (B, Sp), before the
        decoder layers' cross memory (`cross_memory`) and K/V projections (`cross_kv`)."""
        states, mask, _ = self._encode(src_ids)
        return states, mask

    def _encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`encode_states` and the source ids on the patch grid (B, Sp, P)."""
        b = src_ids.shape[0]
        p = self.cfg.patch_size
        causal = self.cfg.causal_encoder
        src_ids = self.grid_ids(src_ids)  # causal: the grid (and its last patch) ends where the source does
        patches = src_ids.view(b, -1, p)  # (B, Sp, P)
        mask = (patches != PAD).any(dim=-1)  # (B, Sp)
        x = self.patch_embed(patches + self.patch_offsets).sum(dim=2)  # (B, Sp, C)
        sp = x.shape[1]
        cos, sin = self.rope_cos[:sp], self.rope_sin[:sp]
        if causal:
            # patch i sees real patches j <= i; an all-PAD patch sees itself only (it is masked
            # everywhere else), so no row of the softmax is empty
            i = torch.arange(sp, device=src_ids.device)
            earlier = i[None, :] <= i[:, None]  # (Sp, Sp)
            attn_mask = (earlier & mask[:, None, :]) | (i[None, :] == i[:, None])  # (B, Sp, Sp)
            attn_mask = attn_mask[:, None]  # (B, 1, Sp, Sp)
        else:
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, Sp)
        for block in self.encoder:
            x = block(x, cos, sin, attn_mask)
        return self.enc_norm(x), mask, patches  # (B, Sp, C), (B, Sp), (B, Sp, P)

    # ------------------------------------------------------------------ decoder

    def _decode(self, dec_ids: Tensor, memory: Memory, cache: KVCache | None, places: Tensor | None = None
                ) -> tuple[Tensor, KVCache]:
        n = self.cfg.decoder_layers
        past = None if cache is None else [(cache.k[i], cache.v[i]) for i in range(n)]
        logits, kv = self.decode_layers(dec_ids, [(memory.k[i], memory.v[i]) for i in range(n)], memory.mask, past,
                                        memory.align, places=places)
        return logits, KVCache(torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv]))

    def query_rotation(self, align: Tensor, n_past: int, t: int, shift: Tensor | None = None
                       ) -> tuple[Tensor, Tensor] | None:
        """cos, sin (B, 1, T, D/2) of the source positions of T decoder positions after n_past:
        align (B,) or (1,) + n_past + t, each moved by shift (B, T) where given; None for a model
        without `cross_bytes`."""
        if not self.cfg.cross_bytes:
            return None
        pos = align[:, None] + n_past + torch.arange(t, device=align.device)  # (B, T)
        if shift is not None:
            pos = pos + shift
        cos, sin = rotary_at(pos, self.rope_inv_freq)
        return cos[:, None], sin[:, None]

    def embed_targets(self, dec_ids: Tensor, places: Tensor | None, table: Tensor | None = None) -> Tensor:
        """dec_ids (B, T) -> the decoder's input rows (B, T, C): each id's embedding (from `table`,
        default `dec_embed`), plus, with `layout_input`, the embeddings of the place ids (B, T, 3)
        of the byte each position predicts (`obf.formats.places`; None: no place, as for text)."""
        x = self.dec_embed(dec_ids) if table is None else F.embedding(dec_ids, table)
        if self.place_embed is None:
            return x
        if places is None:
            places = self.no_place.expand(*dec_ids.shape, -1)
        return x + self.place_embed(places + self.slot_offsets).sum(dim=-2).to(x.dtype)  # (B, T, C)

    def decode_layers(self, dec_ids: Tensor, cross: list[tuple[Tensor, Tensor]], memory_mask: Tensor,
                      past: list[tuple[Tensor, Tensor]] | None, align: Tensor, shift: Tensor | None = None,
                      places: Tensor | None = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The decoder over one (k, v) pair per layer: dec_ids (B, T), cross K/V (B, H, M, D) each,
        memory_mask (B, M), past K/V (B, H, T_past, D) each or None, align (B,) or (1,) the source
        position of the first target on the patch grid (`Memory.align`), shift (B, T) or None how
        far each query moves from align + its offset, places (B, T, 3) or None the place ids of each
        position's target (`embed_targets`) -> logits (B, T, V) and the per-layer K/V grown by T.
        `decode_step` stacks the layers; the ONNX decoder keeps them apart."""
        t = dec_ids.shape[1]
        n_past = 0 if past is None else past[0][0].shape[2]
        cos = self.rope_cos[n_past:n_past + t]
        sin = self.rope_sin[n_past:n_past + t]
        cross_rot = self.query_rotation(align, n_past, t, shift)
        self_mask = None
        if past is not None:
            q_pos = torch.arange(t, device=dec_ids.device) + n_past
            k_pos = torch.arange(n_past + t, device=dec_ids.device)
            self_mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, T, T_past + T)
        cross_mask = memory_mask[:, None, None, :]  # (B, 1, 1, Sp)
        x = self.embed_targets(dec_ids, places)  # (B, T, C)
        new = []
        for i, block in enumerate(self.decoder):
            pk, pv = (None, None) if past is None else past[i]
            x, k, v = block(x, cos, sin, pk, pv, self_mask, cross[i][0], cross[i][1], cross_mask, cross_rot)
            new.append((k, v))
        return self.head(self.dec_norm(x)), new  # logits (B, T, V)

    def decode_step(self, dec_ids: Tensor, memory: Memory, cache: KVCache | StaticKVCache,
                    weights: StepWeights | None = None, places: Tensor | None = None
                    ) -> tuple[Tensor, KVCache | StaticKVCache]:
        """One or more new decoder ids (B, T) after a cache of T_past ids -> logits (B, T, V), cache.
        `places` (B, T, 3): the place ids of the bytes they predict (`embed_targets`).

        With a `KVCache` the returned cache is a new, longer one. With a `StaticKVCache` (one id
        per call) the buffers are written in place and returned with `length + 1`; pass
        `weights=model.step_weights()` to reuse the step's weight layout across calls (without it,
        each call builds one).
        """
        if isinstance(cache, StaticKVCache):
            return self._decode_in_place(dec_ids, memory, cache, self.step_weights() if weights is None else weights,
                                         places)
        return self._decode(dec_ids, memory, cache, places)

    @torch.no_grad()
    def step_weights(self, dtype: torch.dtype | None = None) -> StepWeights:
        """The decoder's weights as the one-id step reads them (see `StepWeights`), folded in the
        weights' own precision and then cast to `dtype` (default: unchanged)."""

        def t(weight: Tensor, gain: Tensor | None = None) -> Tensor:
            w = weight if gain is None else weight * gain  # (out, in) * (in,)
            return w.t().contiguous().to(dtype or w.dtype)  # (in, out)

        layers = tuple(
            (t(blk.self_attn.qkv.weight, blk.norm1.weight), t(blk.self_attn.out.weight),
             t(blk.cross_attn.q.weight, blk.norm2.weight), t(blk.cross_attn.out.weight),
             t(blk.mlp.gate_up.weight, blk.norm3.weight), t(blk.mlp.down.weight))
            for blk in self.decoder)
        embed = self.dec_embed.weight.detach().to(dtype or self.dec_embed.weight.dtype)
        return StepWeights(embed, layers, t(self.head.weight, self.dec_norm.weight))

    def _decode_in_place(self, dec_ids: Tensor, memory: Memory, cache: StaticKVCache, weights: StepWeights,
                         places: Tensor | None = None) -> tuple[Tensor, StaticKVCache]:
        b, t = dec_ids.shape
        past = cache.length
        if t != 1:
            raise ValueError(f"a StaticKVCache takes one id per step, got {t}")
        if past >= cache.k.shape[3]:
            raise ValueError(f"the StaticKVCache is full ({past} ids)")
        cos, sin = self.rope_cos_step[past], self.rope_sin_step[past]  # (D,) each
        cross_mask = memory.mask[:, None, None, :]  # (B, 1, 1, Sp)
        cross_rot = None
        if self.cfg.cross_bytes:
            qc, qs = rotary_at(memory.align + past, self.rope_inv_freq)  # (B or 1, D/2)
            cross_rot = (torch.cat((qc, qc), -1)[:, None, None],
                         torch.cat((-qs, qs), -1)[:, None, None])  # rotate_one's tables (B, 1, 1, D)
        x = self.embed_targets(dec_ids, places, weights.embed).view(b, -1)  # (B, C)
        for i, block in enumerate(self.decoder):
            x = block.step_in_place(x, weights.layers[i], cos, sin, cache.k[i], cache.v[i], past,
                                    memory.k[i], memory.v[i], cross_mask, cross_rot)
        x = F.rms_norm(x, x.shape[-1:], None, self.dec_norm.eps)
        logits = torch.mm(x, weights.head).unsqueeze(1)  # (B, 1, V)
        return logits, StaticKVCache(cache.k, cache.v, past + 1)

    def static_cache(self, batch: int, capacity: int | None = None, device: torch.device | None = None,
                     dtype: torch.dtype | None = None) -> StaticKVCache:
        """An empty StaticKVCache for `batch` rows and up to `capacity` ids (default: the
        decoder window, BOS included)."""
        ref = self.head.weight
        cap = capacity or self.cfg.max_tgt_len + 1
        shape = (self.cfg.decoder_layers, batch, self.cfg.n_heads, cap, self.cfg.head_dim)
        dev, dt = device or ref.device, dtype or ref.dtype
        return StaticKVCache(torch.zeros(shape, device=dev, dtype=dt), torch.zeros(shape, device=dev, dtype=dt), 0)

    def empty_cache(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """A cache with T = 0 for `batch` rows."""
        ref = self.head.weight
        shape = (self.cfg.decoder_layers, batch, self.cfg.n_heads, 0, self.cfg.head_dim)
        z = torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)
        return KVCache(z, z.clone())

    def forward(self, src_ids: Tensor, dec_ids: Tensor, rows: Tensor | None = None,
                visible: Tensor | None = None, align: Tensor | None = None, shift: Tensor | None = None,
                places: Tensor | None = None) -> Tensor:
        """src_ids (B, S), dec_ids (B, T) int64 -> logits (B, T, V). `align` (B,): the source
        position each row's first target lies at (default S: `continue`); `places` (B, T, 3) the
        place ids of the targets (`embed_targets`). With `rows` and `visible`, many windows per
        source: see `forward_windows` (what training calls, through DDP), whose `shift` moves each
        query."""
        if rows is not None and visible is not None:
            return self.forward_windows(src_ids, dec_ids, rows, visible, align, shift, places)
        logits, _ = self._decode(dec_ids, self.encode(src_ids, align), None, places)
        return logits

    def forward_windows(self, src_ids: Tensor, dec_ids: Tensor, rows: Tensor, visible: Tensor,
                        align: Tensor | None = None, shift: Tensor | None = None, places: Tensor | None = None
                        ) -> Tensor:
        """Many decoder windows over one encoder pass: src_ids (B, S) left-padded chunks,
        dec_ids (N, T) one window per row, rows (N,) the chunk of each window, visible (N,) how
        many ids of its chunk lie before the window's start (on the patch grid, which ends where
        the source ends), align (N,) the source position of each window's first target (default:
        `visible`, a `continue` window right after its context), shift (N, T) how far each
        query moves from align + its offset (a `paired` target byte reading the input byte its
        conversion maps it to; default none), places (N, T, 3) the place ids of the targets
        (`embed_targets`; default none) -> logits (N, T, V).

        With a causal encoder, window n's logits equal `forward(src[rows[n], :visible[n]],
        dec_ids[n])`: it sees its own context and nothing after it. A `paired` window sees the
        whole input (visible = S) and aligns with its own part of it."""
        memory = self.encode(src_ids)  # k, v (L, B, H, M, D)
        seen = self.before(src_ids.shape[1], visible, memory.mask.shape[1])  # (N, M)
        mask = memory.mask.index_select(0, rows) & seen  # (N, M)
        cross = [(memory.k[i].index_select(0, rows), memory.v[i].index_select(0, rows))
                 for i in range(self.cfg.decoder_layers)]  # (N, H, M, D) each
        aligned = self.grid_align(src_ids.shape[1], visible if align is None else align, src_ids.device)
        logits, _ = self.decode_layers(dec_ids, cross, mask, None, aligned, shift, places)
        return logits  # (N, T, V)

    def before(self, s: int, visible: Tensor, m: int) -> Tensor:
        """(N, M) True for the memory rows a window may see: those before `visible` (N,) source ids
        (on the patch grid; a patch, without `cross_bytes`, when it lies wholly before)."""
        p = self.cfg.patch_size
        if self.cfg.cross_bytes:
            edge = visible + ((-s) % p if self.cfg.causal_encoder else 0)  # (N,) bytes
        else:
            edge = (visible + (-s) % p) // p  # (N,) patches (`encode` pads S to a multiple of P)
        return torch.arange(m, device=visible.device)[None, :] < edge[:, None]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
