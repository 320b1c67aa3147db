"""The sampling Backend over ONNX Runtime sessions. Imports no torch.

`OnnxBackend(onnx_dir, provider="auto")` verifies the sha256 of each graph against `obf.json`
(a tampered or mixed-up dir is refused), then opens the encoder and decoder sessions. Provider
`auto` asks for CUDA, then CPU, and reports what it really got (`providers`). The decoder's
self-attention cache is a set of fixed-size buffers bound (IO binding) as both the `past_*` inputs
and the `present_*` outputs, so the graph writes each step's K/V into them in place.

Where the cache lives follows from ONNX Runtime's CUDA GroupQueryAttention kernel, which takes
fp16/bf16 and not fp32. With the fp32 graphs that node (and the cache it owns) runs on the CPU
provider even in a CUDA session, so the cache stays in host memory while the matrix products and
the cross K/V run on the GPU. `precision="fp16"` runs the fp16 graph pair (`export.fp16`), whose
every node has a CUDA kernel: on CUDA its cache buffers are allocated on the device and never
leave it; only the ids go in and the logits come out each step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from obf.core.errors import ObfError
from obf.core.system import usable_cpus
from obf.core.vocab import Vocab
from obf.formats.places import NO_PLACE

ENCODER, DECODER, META = "encoder.onnx", "decoder.onnx", "obf.json"
GRAPH_VERSION = 3


def kv_names(prefix: str, layers: int) -> list[str]:
    """Graph input/output names of per-layer K/V tensors: `cross` -> [cross_k_0, cross_v_0, ...]."""
    return [f"{prefix}_{kv}_{i}" for i in range(layers) for kv in "kv"]


class OnnxModelError(ObfError):
    """An ONNX model dir is missing, corrupt, tampered with or cannot run on the asked provider."""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
        raise OnnxModelError(
            f"{path}: graph layout version {meta.get('version')}, this obf runs version "
            f"{GRAPH_VERSION}; re-run `obf export` on the model"
        )
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

    def __init__(
        self,
        onnx_dir: str | Path,
        *,
        provider: str = "auto",
        threads: int | None = None,
        precision: str = "fp32",
        encoder: str = ENCODER,
        decoder: str = DECODER,
        verify: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        """`precision` int8 runs the dynamically quantised graphs of `export.int8` (made for CPU),
        fp16 the graphs of `export.fp16` (made for CUDA; they also run, slowly, on CPU).
        `verify=False` with an explicit `config` is for the export's own parity check only."""
        if provider not in ("auto", "cpu", "cuda"):
            raise OnnxModelError(f"provider must be auto, cpu or cuda, got {provider!r}")
        if precision not in ("fp32", "int8", "fp16"):
            raise OnnxModelError(
                f"{onnx_dir}: ONNX graphs run in fp32, int8 or fp16, not {precision} (bf16 is for checkpoint dirs)"
            )
        self.dir = Path(onnx_dir)
        self.precision = precision
        if verify:
            self.meta = read_meta(self.dir)
            if precision != "fp32":
                if not self.meta.get(precision):
                    raise OnnxModelError(
                        f"{self.dir}: exported without {precision} graphs; re-export with "
                        f"`--set export.{precision}=true`"
                    )
                encoder, decoder = self.meta[precision]["encoder"], self.meta[precision]["decoder"]
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
        # the cache's element type is the graph's (fp32, or fp16 for the fp16 pair); it lives on the
        # GPU only where the graph's attention runs there, i.e. in fp16 on CUDA
        past = next(i for i in self.dec.get_inputs() if i.name == "past_k_0")
        self.cache_dtype = np.float16 if past.type == "tensor(float16)" else np.float32
        self.cache_on_device = self.cuda and self.cache_dtype == np.float16
        self.max_src_len = int(cfg["max_src_len"])
        self.max_input_len = int(cfg.get("max_input_len") or self.max_src_len)
        self.max_tgt_len = int(cfg["max_tgt_len"])
        self.vocab_size = int(cfg["vocab_size"])
        self.patch_size = int(cfg["patch_size"])
        self.causal_encoder = bool(cfg.get("causal_encoder", False))
        self.layers, self.heads = int(cfg["decoder_layers"]), int(cfg["n_heads"])
        self.head_dim = int(cfg["d_model"]) // self.heads
        align = [i for i in self.dec.get_inputs() if i.name == "align"]
        self.cross_bytes = bool(align)  # a byte-level cross memory
        self.align_per_id = bool(align) and len(align[0].shape) == 2  # (B, T); (B,) in exports before query_map
        self.query_map = bool(cfg.get("query_map", False)) and self.align_per_id
        self.input_end = bool(cfg.get("input_end", False))  # an EOS id after each paired input
        self.layout_input = any(i.name == "places" for i in self.dec.get_inputs())  # `model.layout_input`
        self.paired_places = self.layout_input and bool(cfg.get("paired_places", False))  # `model.paired_places`
        self.cross_names = kv_names("cross", self.layers)
        self.past_names = kv_names("past", self.layers)
        self.present_names = kv_names("present", self.layers)

    # -- protocol ---------------------------------------------------------------------------
    # memory: {"memory_mask", "cross_k_i", "cross_v_i": arrays or OrtValues on the device, "align":
    #          (B,) int64, "batch"}
    # cache: a _Cache (fixed-size buffers written in place; one per encoded batch)

    def _grid_align(self, s: int, align: np.ndarray | None, rows: int) -> np.ndarray:
        """`OmniByteFormer.grid_align`: (B,) source positions of the first targets on the patch grid."""
        shift = (-s) % self.patch_size if self.causal_encoder else 0
        base = np.full(rows, s, np.int64) if align is None else np.asarray(align, np.int64).reshape(rows)
        return np.ascontiguousarray(base + shift)

    def encode(self, src_ids: np.ndarray, align: np.ndarray | None = None) -> dict[str, Any]:
        """src_ids (B, S); align (B,): each row's first target lies at this source position
        (default S, `continue`)."""
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
        return {
            **dict(zip(names, outs)),
            "align": self._grid_align(src.shape[1], align, src.shape[0]),
            "batch": src.shape[0],
        }

    def init_cache(self, memory: dict[str, Any]) -> _Cache:
        return _Cache(self, memory, new_ids=1)

    def step(self, tokens: np.ndarray, memory: dict[str, Any], cache: _Cache, shift: np.ndarray | None = None,
             places: np.ndarray | None = None) -> tuple[np.ndarray, _Cache]:
        """tokens (B,) -> logits (B, V); shift (B,): this step's query moves from align + past;
        places (B, 3): the place ids of the byte it predicts (`layout_input`)."""
        logits = cache.run(np.asarray(tokens, dtype=np.int64)[:, None], None if shift is None else shift[:, None],
                           None if places is None else places[:, None])
        return logits[:, -1], cache

    def logits(self, src_ids: np.ndarray, dec_ids: np.ndarray, align: np.ndarray | None = None,
               places: np.ndarray | None = None) -> np.ndarray:
        """Teacher-forced logits (B, T, V) for src (B, S) and decoder input (B, T); align as for
        `encode`; places (B, T, 3) the targets' place ids."""
        memory = self.encode(src_ids, align)
        return _Cache(self, memory, new_ids=dec_ids.shape[1]).run(dec_ids, None, places)

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
        """Teacher-forced logits (N, T, V) of many windows per source over one encoder run, as
        `OmniByteFormer.forward_windows`: window n reads the cross K/V of source row rows[n], masked
        to the patches before its start (visible[n] ids of the padded row), its first target at
        source position align[n] (default visible[n]), target t's query moved by shift[n, t]."""
        enc = self.encode(src_ids)
        host = {
            k: (v.numpy() if isinstance(v, ort.OrtValue) else v) for k, v in enc.items() if k not in ("batch", "align")
        }
        m = host["memory_mask"].shape[1]
        s, p = src_ids.shape[1], self.patch_size
        if self.cross_bytes:  # `OmniByteFormer.before`
            edge = np.asarray(visible) + ((-s) % p if self.causal_encoder else 0)
        else:
            edge = (np.asarray(visible) + (-s) % p) // p
        mask = host["memory_mask"][rows] & (np.arange(m)[None, :] < edge[:, None])  # (N, M)
        memory = {
            "memory_mask": np.ascontiguousarray(mask),
            "batch": len(rows),
            "align": self._grid_align(src_ids.shape[1], visible if align is None else align, len(rows)),
            **{k: np.ascontiguousarray(host[k][rows]) for k in self.cross_names},
        }
        if self.cuda:  # where `encode` puts them on CUDA
            memory = {
                k: (v if k in ("batch", "align") else ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
                for k, v in memory.items()
            }
        return _Cache(self, memory, new_ids=dec_ids.shape[1]).run(dec_ids, shift, places)


class _Cache:
    """One encoded batch's decoder state: 2L buffers (B, H, T_max, D), `length` ids filled, and
    the IO binding that ties them, the batch's memory and a logits buffer to the decoder session.

    Everything is bound once per batch, as OrtValues over numpy arrays this object keeps (an
    OrtValue on the host wraps its array, no copy); a step writes its ids and `past_len` into their
    arrays and runs. The same buffer is bound as `past_*` input and `present_*` output, which is
    what lets ONNX Runtime's GroupQueryAttention write the new K/V in place instead of copying.
    With `cache_on_device` the buffers are allocated on the GPU instead (nothing reads a position
    before the kernel has written it, so they need no zeroing).
    """

    def __init__(self, backend: OnnxBackend, memory: dict[str, Any], new_ids: int) -> None:
        b = memory["batch"]
        self.session, self.length, self.capacity = backend.dec, 0, backend.max_tgt_len + 1
        self.new_ids = new_ids  # ids per call: 1 for generation, T for teacher-forced logits
        self.memory = memory  # bound below; kept alive with the binding
        shape = (b, backend.heads, self.capacity, backend.head_dim)
        if backend.cache_on_device:
            self.buffers = [
                ort.OrtValue.ortvalue_from_shape_and_type(shape, backend.cache_dtype, "cuda", 0)
                for _ in range(2 * backend.layers)
            ]
        else:
            self.buffers = [
                ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, backend.cache_dtype))
                for _ in range(2 * backend.layers)
            ]
        self.out = ort.OrtValue.ortvalue_from_numpy(np.zeros((b, new_ids, backend.vocab_size), np.float32))
        self.ids = np.zeros((b, new_ids), np.int64)  # (B, new_ids), rewritten every call
        self.past_len = np.zeros((), np.int64)
        io = self.io = backend.dec.io_binding()
        io.bind_ortvalue_input("dec_ids", ort.OrtValue.ortvalue_from_numpy(self.ids))
        io.bind_ortvalue_input("past_len", ort.OrtValue.ortvalue_from_numpy(self.past_len))
        for name in ("memory_mask", *backend.cross_names):  # numpy on CPU, OrtValues on the device on CUDA
            value = memory[name]
            io.bind_ortvalue_input(
                name, value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
            )
        self.align_base = memory.get("align")  # (B,) each row's first target's source position
        self.align = None  # what the graph reads: (B, new_ids), or (B,) in exports before query_map
        self.moved = False  # whether `align` holds a shift from the last call
        if backend.cross_bytes:
            per_id = backend.align_per_id
            self.align = np.zeros((b, new_ids) if per_id else (b,), np.int64)
            self.align[...] = self.align_base[:, None] if per_id else self.align_base
            io.bind_ortvalue_input("align", ort.OrtValue.ortvalue_from_numpy(self.align))
        self.places = None  # (B, new_ids, 3) the place ids the graph reads (`layout_input`), rewritten every call
        if backend.layout_input:
            self.places = np.tile(NO_PLACE, (b, new_ids, 1))
            io.bind_ortvalue_input("places", ort.OrtValue.ortvalue_from_numpy(self.places))
        for past, present, buf in zip(backend.past_names, backend.present_names, self.buffers):
            io.bind_ortvalue_input(past, buf)
            io.bind_ortvalue_output(present, buf)
        io.bind_ortvalue_output("logits", self.out)

    def run(self, dec_ids: np.ndarray, shift: np.ndarray | None = None, places: np.ndarray | None = None
            ) -> np.ndarray:
        """dec_ids (B, new_ids) after the `length` cached ids -> logits (B, new_ids, V) float32;
        shift (B, new_ids) or None: how far each id's cross query moves from align + its position;
        places (B, new_ids, 3) or None (no place): the place ids of the bytes the ids predict."""
        if dec_ids.shape != self.ids.shape:
            raise ValueError(f"this cache takes ids of shape {self.ids.shape} per call, got {dec_ids.shape}")
        if self.length + self.new_ids > self.capacity:
            raise ValueError(f"the decoder cache is full ({self.length} of {self.capacity} ids)")
        if self.align is not None and (shift is not None or self.moved):  # else `align` already holds the base
            moved = np.zeros(self.ids.shape, np.int64) if shift is None else np.asarray(shift, np.int64)
            if self.align.ndim == 1 and self.new_ids > 1 and moved.any():
                raise ValueError("this export reads one cross position per row and step (made before "
                                 "model.query_map); re-run `obf export` on the model")
            per_id = self.align.ndim == 2
            self.align[...] = self.align_base[:, None] + moved if per_id else self.align_base + moved[:, 0]
            self.moved = shift is not None
        self.ids[...] = dec_ids
        if self.places is not None:
            self.places[...] = NO_PLACE if places is None else places
        self.past_len[...] = self.length
        self.session.run_with_iobinding(self.io)
        self.length += self.new_ids
        return self.out.numpy().copy()  # numpy() is a view of the buffer the next call overwrites


def load(onnx_dir: str, *, provider: str = "auto", precision: str = "fp32") -> OnnxBackend:
    return OnnxBackend(onnx_dir, provider=provider, precision=precision)
