"""The ONNX decoder graph, written node by node from a trained model's weights (graph layout v3).

Why not `torch.onnx.export` for the decoder: a decode step is tiny (one id per row through two
layers), so on CPU its cost is the number of graph nodes and the cache traffic, not arithmetic.
The exported graph grew every layer's cache by a Concat each step (a copy of the whole cache),
spelled rotary embedding and attention as a dozen small nodes, and normalised without fusing the
residual add. Written by hand it uses ONNX Runtime's fused kernels instead:

* `GroupQueryAttention` (com.microsoft) per self-attention layer: rotary positions, the causal
  mask and the cache append in one kernel. The cache is a fixed-size buffer (B, H, T_max, D) that
  the kernel writes in place when the caller binds the same buffer as `past_*` input and
  `present_*` output (obf.runtime.onnx_backend does), so a step never copies the cache.
* `SkipSimplifiedLayerNormalization`: the residual add and the next RMSNorm in one kernel.
* Cross-attention as `FusedMatMul` (scale and K^T folded in) + additive mask + Softmax + MatMul
  over the cross K/V the encoder computed once; ONNX Runtime's `MultiHeadAttention` kernel was
  slower than these on CPU for one query position.
* One packed QKV and one gate/up product per layer; ONNX Runtime fuses `x * sigmoid(x)`.

The math is exactly `OmniByteFormer.decode_layers`; `obf.export.parity` checks it against the
torch model on every export. `dtype="fp16"` writes the same graph with fp16 weights, cache and
cross K/V (logits stay fp32) for the CUDA provider, whose GroupQueryAttention kernel takes fp16 and
not fp32. Interface (L decoder layers, i = 0..L-1):

  inputs  dec_ids (B, T) int64; past_len () int64, ids already in the cache; memory_mask (B, Sp)
          bool; cross_k_i, cross_v_i (B, H, Sp, D); past_k_i, past_v_i (B, H, T_max, D); and for a
          model with `cross_bytes` align (B, T) int64: new id t's query is rotated by align[:, t] +
          past_len + t before it meets the cross keys the encoder rotated (`Memory.align`, the
          source position of each row's first target, plus the query's `shift`; exports made
          before `query_map` take align (B,), one position per row, and obf reads both); and for a
          model with `layout_input` places (B, T, 3) int64, the place ids of the byte each new id
          predicts (`obf.formats.places`)
  outputs logits (B, T, V) float32; present_k_i, present_v_i (B, H, T_max, D): the buffers with
          the T new ids' K/V written at positions past_len .. past_len + T - 1
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from obf.formats.places import SLOT_OFFSETS
from obf.model.network import OmniByteFormer

MS = "com.microsoft"
# dtype -> (numpy type, ONNX type, the additive bias of a masked patch: far below any score, and
# finite in that type so that exp() of it is 0 rather than NaN)
DTYPES = {"fp32": (np.float32, TensorProto.FLOAT, -1e30), "fp16": (np.float16, TensorProto.FLOAT16, -3e4)}


class _Builder:
    """Collects nodes and initializers; every node gets a unique, readable name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> list[str]:
        self.nodes.append(
            helper.make_node(op, inputs, outputs, name=f"{outputs[0] or op}/{op}", domain=domain, **attrs)
        )
        return outputs

    def op(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        return self.node(op, inputs, [output], domain, **attrs)[0]


def _query_rotation(g: _Builder, cfg, t: str, np_type: type) -> tuple[str, str, str]:
    """cos, sin (B, 1, T, D) of the cross queries' source positions align + past_len + 0..T-1 (each
    angle twice, for both halves of the head dim), computed in fp32 as `obf.model.rotary_at` and
    cast to the graph's type; and the (D, D) matrix that maps x to (-x2, x1)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_base ** (np.arange(0, d, 2, dtype=np.float32) / d))
    steps = g.op(
        "Range",
        [
            g.const("zero_i64", np.array(0, np.int64)),
            g.op("Squeeze", [t], "t_scalar"),
            g.const("one_i64", np.array(1, np.int64)),
        ],
        "steps",
    )  # (T,)
    start = g.op("Add", ["align", "past_len"], "first_pos")  # (B, T)
    pos = g.op("Cast", [g.op("Add", [start, steps], "pos_i64")], "pos", to=TensorProto.FLOAT)  # (B, T)
    ang = g.op(
        "Mul",
        [
            g.op("Unsqueeze", [pos, g.const("axis_m1", np.array([-1], np.int64))], "pos3"),
            g.const("inv_freq2", np.concatenate([inv_freq, inv_freq])),
        ],
        "angles",
    )  # (B, T, D)
    out = []
    axis = g.const("axis_1b", np.array([1], np.int64))
    for fn in ("Cos", "Sin"):
        x = g.op(fn, [ang], f"q_{fn.lower()}")
        if np_type != np.float32:
            x = g.op("Cast", [x], f"q_{fn.lower()}_h", to=TensorProto.FLOAT16)
        out.append(g.op("Unsqueeze", [x, axis], f"q_{fn.lower()}4"))
    half = np.zeros((d, d), np_type)
    half[np.arange(d // 2) + d // 2, np.arange(d // 2)] = -1  # output j < D/2 takes -x2_j
    half[np.arange(d // 2), np.arange(d // 2) + d // 2] = 1  # output D/2 + j takes x1_j
    return out[0], out[1], g.const("rotate_half", half)


def _rotate(g: _Builder, x: str, cos: str, sin: str, half: str, name: str) -> str:
    """`obf.model.apply_rotary` without splitting the head dim: x cos + (-x2, x1) sin."""
    swapped = g.op("MatMul", [x, half], f"{name}.swap")
    return g.op("Add", [g.op("Mul", [x, cos], f"{name}.xc"), g.op("Mul", [swapped, sin], f"{name}.xs")], name)


def decoder_graph(model: OmniByteFormer, opset: int, dtype: str = "fp32") -> onnx.ModelProto:
    """The decoder of `model` as an ONNX model in graph layout v3 (see the module doc), computing in
    `dtype` (fp32 or fp16; the weights are rounded from the model's fp32 copy)."""
    np_type, onnx_type, masked = DTYPES[dtype]
    cfg = model.cfg
    c, h, d, n_layers, v = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.decoder_layers, cfg.vocab_size
    w = {k: t.detach().float().cpu().numpy().astype(np_type) for k, t in model.state_dict().items()}
    g = _Builder()
    eps = float(cfg.norm_eps)

    def linear(x: str, weight: str, out: str) -> str:  # x (..., in) @ W^T -> (..., out)
        return g.op("MatMul", [x, g.const(f"{weight}.T", w[weight].T)], out)

    # Positions: GroupQueryAttention wants each row's last position (seqlens_k, int32) and the
    # total length (a scalar); every row of a batch steps together, so they are the same.
    t = g.op("Shape", ["dec_ids"], "t", start=1, end=2)  # (1,) int64
    b = g.op("Shape", ["dec_ids"], "b", start=0, end=1)  # (1,)
    total = g.op(
        "Cast",
        [g.op("Squeeze", [g.op("Add", ["past_len", t], "total64")], "total64s")],
        "total_len",
        to=TensorProto.INT32,
    )  # () int32
    seqlens = g.op(
        "Expand", [g.op("Sub", [total, g.const("one_i32", np.array(1, np.int32))], "last"), b], "seqlens_k"
    )  # (B,) int32
    rope = {
        name: getattr(model, name).float().cpu().numpy().astype(np_type)  # not in state_dict
        for name in ("rope_cos", "rope_sin")
    }
    cos, sin = g.const("rope_cos", rope["rope_cos"]), g.const("rope_sin", rope["rope_sin"])  # (n, D/2) each
    cross_rot = _query_rotation(g, cfg, t, np_type) if cfg.cross_bytes else None
    # Cross-attention mask as an additive bias: 0 where a patch holds a real id, `masked` elsewhere.
    keep = g.op("Unsqueeze", ["memory_mask", g.const("axes_1_2", np.array([1, 2], np.int64))], "keep")  # (B,1,1,Sp)
    bias = g.op(
        "Where",
        [keep, g.const("zero", np.array(0.0, np_type)), g.const("masked", np.array(masked, np_type))],
        "cross_bias",
    )
    heads = g.const("shape_bthd", np.array([0, 0, h, d], np.int64))
    merged = g.const("shape_btc", np.array([0, 0, c], np.int64))
    ff = g.const("split_ff", np.array([cfg.d_ff, cfg.d_ff], np.int64))

    x = g.op("Gather", [g.const("dec_embed", w["dec_embed.weight"]), "dec_ids"], "embed")  # (B, T, C)
    if cfg.layout_input:  # `OmniByteFormer.embed_targets`: plus the sum of the three place embeddings
        rows = g.op("Add", ["places", g.const("slot_offsets", SLOT_OFFSETS)], "place_rows")  # (B, T, 3)
        placed = g.op("Gather", [g.const("place_embed", w["place_embed.weight"]), rows], "place_vecs")  # (B,T,3,C)
        summed = g.op("ReduceSum", [placed, g.const("axis_2", np.array([2], np.int64))], "place_sum", keepdims=0)
        x = g.op("Add", [x, summed], "embed_placed")  # (B, T, C)
    residual: str | None = None

    def norm(branch: str, weight: str, name: str) -> str:
        """RMSNorm of residual + branch; the first one normalises the embedding alone."""
        nonlocal residual
        scale = g.const(weight, w[weight])
        if residual is None:
            residual = branch
            return g.op("SimplifiedLayerNormalization", [branch, scale], name, axis=-1, epsilon=eps)
        out, _, _, residual = g.node(
            "SkipSimplifiedLayerNormalization",
            [branch, residual, scale],
            [name, "", "", f"{name}_sum"],
            MS,
            epsilon=eps,
        )
        return out

    for i in range(n_layers):
        p = f"decoder.{i}."
        # self-attention: packed QKV (B, T, 3C) -> GQA (rotary + cache write + causal attention)
        qkv = linear(norm(x, p + "norm1.weight", f"l{i}.h1"), p + "self_attn.qkv.weight", f"l{i}.qkv")
        att = g.node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_k_{i}", f"past_v_{i}", seqlens, total, cos, sin],
            [f"l{i}.self", f"present_k_{i}", f"present_v_{i}"],
            MS,
            num_heads=h,
            kv_num_heads=h,
            do_rotary=1,
            rotary_interleaved=0,
        )[0]  # (B, T, C)
        hx = norm(linear(att, p + "self_attn.out.weight", f"l{i}.self_out"), p + "norm2.weight", f"l{i}.h2")
        # cross-attention over the encoder's K/V (B, H, Sp, D)
        q = g.op(
            "Transpose",
            [g.op("Reshape", [linear(hx, p + "cross_attn.q.weight", f"l{i}.cq"), heads], f"l{i}.cq4")],
            f"l{i}.cqt",
            perm=[0, 2, 1, 3],
        )  # (B, H, T, D)
        if cross_rot is not None:
            q = _rotate(g, q, *cross_rot, f"l{i}.cqr")
        scores = g.op("FusedMatMul", [q, f"cross_k_{i}"], f"l{i}.scores", MS, transB=1, alpha=d**-0.5)  # (B,H,T,Sp)
        probs = g.op("Softmax", [g.op("Add", [scores, bias], f"l{i}.masked")], f"l{i}.probs", axis=-1)
        y = g.op("MatMul", [probs, f"cross_v_{i}"], f"l{i}.cross")  # (B, H, T, D)
        y = g.op("Reshape", [g.op("Transpose", [y], f"l{i}.cross_t", perm=[0, 2, 1, 3]), merged], f"l{i}.cross_m")
        hx = norm(linear(y, p + "cross_attn.out.weight", f"l{i}.cross_out"), p + "norm3.weight", f"l{i}.h3")
        # SwiGLU
        gate, up = g.node(
            "Split", [linear(hx, p + "mlp.gate_up.weight", f"l{i}.gate_up"), ff], [f"l{i}.gate", f"l{i}.up"], axis=-1
        )
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate], f"l{i}.sig")], f"l{i}.silu"), up], f"l{i}.act")
        x = linear(act, p + "mlp.down.weight", f"l{i}.mlp_out")  # the branch the next norm adds
    logits = linear(norm(x, "dec_norm.weight", "final"), "head.weight", "logits" if dtype == "fp32" else "logits16")
    if dtype != "fp32":
        logits = g.op("Cast", [logits], "logits", to=TensorProto.FLOAT)  # (B, T, V) float32 on every dtype
    assert logits == "logits"

    cache_dims = ["batch", h, "cache", d]
    inputs = [
        helper.make_tensor_value_info("dec_ids", TensorProto.INT64, ["batch", "tgt"]),
        helper.make_tensor_value_info("past_len", TensorProto.INT64, []),
        helper.make_tensor_value_info("memory_mask", TensorProto.BOOL, ["batch", "patches"]),
    ]
    inputs += [
        helper.make_tensor_value_info(f"cross_{kv}_{i}", onnx_type, ["batch", h, "patches", d])
        for i in range(n_layers)
        for kv in "kv"
    ]
    inputs += [
        helper.make_tensor_value_info(f"past_{kv}_{i}", onnx_type, cache_dims) for i in range(n_layers) for kv in "kv"
    ]
    if cfg.cross_bytes:
        inputs.append(helper.make_tensor_value_info("align", TensorProto.INT64, ["batch", "tgt"]))
    if cfg.layout_input:
        inputs.append(helper.make_tensor_value_info("places", TensorProto.INT64, ["batch", "tgt", 3]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "tgt", v])]
    outputs += [
        helper.make_tensor_value_info(f"present_{kv}_{i}", onnx_type, cache_dims)
        for i in range(n_layers)
        for kv in "kv"
    ]
    graph = helper.make_graph(g.nodes, "obf_decoder", inputs, outputs, g.inits)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)]
    return helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="obf",
        ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True),
    )
