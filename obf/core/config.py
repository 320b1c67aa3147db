"""`params.yaml` sections as validated dataclasses. Imports no torch.

Each pipeline stage reads one section. Unknown keys and bad values fail with one line naming the
key (`ingest.val_fraction: must be in [0, 1), got 1.5`). The file as a whole, and `--set
section.key=value` overrides applied before validation (like `dvc exp run -S`), are
`obf.core.params`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from obf.core.errors import ObfError
from obf.core.vocab import MODALITIES, TASKS, VOCAB_SIZE


class ConfigError(ObfError):
    """A bad parameter: unknown key, wrong type or out-of-range value."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise `ConfigError("key: message")` unless `ok`: every check of a setting reads the same."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class IngestConfig:
    """How raw files become a byte dataset (`obf ingest`)."""

    canonicalize: bool = True  # image -> BMP, audio -> WAV PCM, video -> Y4M
    max_file_bytes: int = 16 * 1024 * 1024
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    shard_bytes: int = 64 * 1024 * 1024
    image_max_side: int = 64
    audio_rate: int = 8000
    audio_sample_width: int = 1  # bytes per sample: 1 (u8), 2 (s16)
    audio_channels: int = 1
    video_width: int = 32
    video_height: int = 32
    video_fps: int = 5
    video_max_frames: int = 16

    def validate(self, s: str = "ingest") -> None:
        require(self.max_file_bytes > 0, f"{s}.max_file_bytes", "must be positive")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            require(0.0 <= v < 1.0, f"{s}.{name}", f"must be in [0, 1), got {v}")
        require(self.val_fraction + self.test_fraction < 1.0, f"{s}.val_fraction",
                 "val_fraction + test_fraction must be below 1")
        require(self.shard_bytes >= 1024, f"{s}.shard_bytes", "must be at least 1024")
        require(self.image_max_side >= 1, f"{s}.image_max_side", "must be at least 1")
        require(1000 <= self.audio_rate <= 192000, f"{s}.audio_rate", "must be in 1000..192000")
        require(self.audio_sample_width in (1, 2), f"{s}.audio_sample_width", "must be 1 or 2")
        require(self.audio_channels in (1, 2), f"{s}.audio_channels", "must be 1 or 2")
        for name in ("video_width", "video_height"):
            v = getattr(self, name)
            require(v >= 2 and v % 2 == 0, f"{s}.{name}", f"must be even and at least 2, got {v}")
        require(self.video_fps >= 1, f"{s}.video_fps", "must be at least 1")
        require(self.video_max_frames >= 1, f"{s}.video_max_frames", "must be at least 1")


_PRESETS: dict[str, dict[str, Any]] = {
    # For tests: trains in seconds.
    "tiny": dict(d_model=64, n_heads=2, encoder_layers=2, decoder_layers=1, d_ff=192),
    # The CPU default, about 8.0 M parameters (8,382,208 with the default vocab and layout input).
    "small": dict(d_model=256, n_heads=4, encoder_layers=6, decoder_layers=2, d_ff=768),
    # For a GPU, about 100 M parameters.
    "base": dict(d_model=768, n_heads=12, encoder_layers=9, decoder_layers=3, d_ff=2048),
}


@dataclass
class ModelConfig:
    """Shape of the encoder-decoder. `ModelConfig.from_preset("small", patch_size=4)`."""

    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 6
    decoder_layers: int = 2
    d_ff: int = 768  # SwiGLU hidden width
    patch_size: int = 1  # bytes per encoder position (1 = plain ByT5)
    max_src_len: int = 1024  # encoder context in bytes (incl. the 2 tag ids)
    max_tgt_len: int = 512  # decoder window in bytes (incl. BOS / EOS)
    vocab_size: int = VOCAB_SIZE
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    causal_encoder: bool = False  # True: patch i sees patches <= i, for long-context training (obf.model)
    cross_bytes: bool = True  # the decoder cross-attends to every source byte at its position (else to patches)
    max_input_len: int = 0  # longest `paired` source in ids (tags included); 0 = max_src_len
    # `paired` queries read the input byte the pair's conversion maps each target byte to
    # (`obf.formats.conversions.input_offsets`: hex, ascii); False: the byte at the same offset
    query_map: bool = True
    # `paired` sources end with an EOS id after the input, which the target's end reads: a key
    # that says where the input stops (a hex target's last newline and its EOS read it)
    input_end: bool = True
    # the decoder reads each target byte's place in its file's layout (`obf.formats.places`: a
    # BMP byte's channel and the byte one row up, a Y4M byte's plane, ...) beside the byte before it
    layout_input: bool = True
    # with layout_input, a `paired` target's bytes read their places too (a gray BMP's channel and
    # row above, from the header the target writes first); False: only `continue` windows do
    paired_places: bool = True
    preset: str = ""  # the preset this config started from, for humans

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, s: str = "model") -> None:
        require(self.d_model > 0 and self.n_heads > 0, f"{s}.d_model", "d_model and n_heads must be positive")
        require(self.d_model % self.n_heads == 0, f"{s}.n_heads",
                 f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        require((self.d_model // self.n_heads) % 2 == 0, f"{s}.n_heads", "head dim must be even for rotary")
        require(self.encoder_layers >= 1, f"{s}.encoder_layers", "must be at least 1")
        require(self.decoder_layers >= 1, f"{s}.decoder_layers", "must be at least 1")
        require(self.d_ff > 0, f"{s}.d_ff", "must be positive")
        require(
            self.patch_size in (1, 2, 4, 8, 16), f"{s}.patch_size", f"must be 1, 2, 4, 8 or 16, got {self.patch_size}"
        )
        require(self.max_src_len >= 2 * self.patch_size, f"{s}.max_src_len", "too small for one patch")
        require(self.max_src_len % self.patch_size == 0, f"{s}.max_src_len", "must be a multiple of patch_size")
        require(self.max_tgt_len >= 4, f"{s}.max_tgt_len", "must be at least 4")
        require(
            self.max_input_len == 0 or self.max_input_len >= self.max_src_len,
            f"{s}.max_input_len",
            f"must be 0 or at least model.max_src_len ({self.max_src_len})",
        )
        require(self.max_input_len % self.patch_size == 0, f"{s}.max_input_len", "must be a multiple of patch_size")
        require(not self.query_map or self.cross_bytes, f"{s}.query_map", "needs model.cross_bytes")
        require(self.vocab_size == VOCAB_SIZE, f"{s}.vocab_size", f"must be {VOCAB_SIZE} (fixed by obf.core.vocab)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def paired_placed(self) -> bool:
        """Whether `paired` targets carry place ids (`paired_places` counts only with `layout_input`)."""
        return self.layout_input and self.paired_places

    @property
    def input_len(self) -> int:
        """The longest source the encoder takes: a `paired` input with its three tags."""
        return self.max_input_len or self.max_src_len

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in _PRESETS:
            raise ConfigError(f"model.preset: unknown preset {name!r}; expected one of {', '.join(_PRESETS)}")
        return build_section(cls, "model", {**_PRESETS[name], "preset": name, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """A saved config; one saved before `cross_bytes`, `query_map`, `input_end`, `layout_input`
        or `paired_places` existed describes a model without it."""
        return build_section(cls, "model", {"cross_bytes": False, "query_map": False, "input_end": False,
                                            "layout_input": False, "paired_places": False, **d})


def _default_task_weights() -> dict[str, float]:
    return {"continue": 0.8, "denoise": 0.2}  # add `paired` when the data has pairs


@dataclass
class TrainConfig:
    """The training loop (`obf train`)."""

    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | bf16 | fp32
    compile: bool = False
    steps: int = 600
    minutes: float = 0.0  # wall-clock budget over the whole run, resumes included; 0 = steps only
    fp32_minutes: float = 0.0  # the budget when training runs in fp32 on a CPU (one without bf16) and `minutes` is 0
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    task_weights: dict[str, float] = field(default_factory=_default_task_weights)
    balance_modalities: bool = True  # draw each modality equally often (else by bytes)
    modality_weights: dict[str, float] = field(default_factory=dict)  # explicit weights; {} = off
    noise_density: float = 0.15
    mean_span: float = 3.0
    random_bytes_weight: float = 0.0  # share of continue examples that predict uniform random bytes (calibration)
    windows: int = 1  # decoder windows per `continue` example, served by one causal encoder pass
    src_len: int = 0  # encoder context of ordinary steps in bytes (0 = model.max_src_len)
    long_every: int = 0  # every Nth step is a long step: one chunk at the full model.max_src_len (0 = none)
    long_windows: int = 16  # decoder windows of a long step's chunk
    mixer_fit_bytes: int = 65536  # training bytes per modality the mixer (obf.mixer) is fitted on (0 = none)
    eval_every: int = 200
    eval_batches: int = 4
    checkpoint_every: int = 200

    def validate(self, s: str = "train") -> None:
        require(
            self.device in ("auto", "cpu", "cuda"), f"{s}.device", f"must be auto, cpu or cuda, got {self.device!r}"
        )
        require(
            self.precision in ("auto", "bf16", "fp32"),
            f"{s}.precision",
            f"must be auto, bf16 or fp32, got {self.precision!r}",
        )
        require(self.steps >= 1, f"{s}.steps", "must be at least 1")
        require(self.minutes >= 0, f"{s}.minutes", "must not be negative")
        require(self.fp32_minutes >= 0, f"{s}.fp32_minutes", "must not be negative")
        require(self.batch_size >= 1, f"{s}.batch_size", "must be at least 1")
        require(self.lr > 0, f"{s}.lr", "must be positive")
        require(0 <= self.min_lr_ratio <= 1, f"{s}.min_lr_ratio", "must be in [0, 1]")
        require(self.warmup_steps >= 0, f"{s}.warmup_steps", "must not be negative")
        require(self.grad_clip >= 0, f"{s}.grad_clip", "must not be negative")
        require(0 < self.beta1 < 1 and 0 < self.beta2 < 1, f"{s}.beta1", "betas must be in (0, 1)")
        for k, v in self.task_weights.items():
            require(k in TASKS, f"{s}.task_weights.{k}", f"unknown task; expected one of {', '.join(TASKS)}")
            require(v >= 0, f"{s}.task_weights.{k}", "must not be negative")
        require(sum(self.task_weights.values()) > 0, f"{s}.task_weights", "at least one weight must be positive")
        for k, v in self.modality_weights.items():
            require(
                k in MODALITIES,
                f"{s}.modality_weights.{k}",
                f"unknown modality; expected one of {', '.join(MODALITIES)}",
            )
            require(v >= 0, f"{s}.modality_weights.{k}", "must not be negative")
        require(0 < self.noise_density < 1, f"{s}.noise_density", "must be in (0, 1)")
        require(self.mean_span >= 1, f"{s}.mean_span", "must be at least 1")
        require(0 <= self.random_bytes_weight < 1, f"{s}.random_bytes_weight", "must be in [0, 1)")
        require(self.windows >= 1, f"{s}.windows", "must be at least 1")
        require(self.src_len >= 0, f"{s}.src_len", "must not be negative")
        require(self.long_every >= 0, f"{s}.long_every", "must not be negative")
        require(self.long_windows >= 1, f"{s}.long_windows", "must be at least 1")
        require(self.mixer_fit_bytes >= 0, f"{s}.mixer_fit_bytes", "must not be negative")
        require(self.eval_every >= 1, f"{s}.eval_every", "must be at least 1")
        require(self.eval_batches >= 1, f"{s}.eval_batches", "must be at least 1")
        require(self.checkpoint_every >= 1, f"{s}.checkpoint_every", "must be at least 1")


@dataclass
class EvaluateConfig:
    """Evaluation (`obf evaluate`): whole-file bits per byte, reconstruction, samples."""

    split: str = "val"  # split of an ingested dataset to score: train | val | test | all
    batch_size: int = 32
    stride: int = 0  # bytes scored per decoder window (0 = half the window); windows overlap by the rest
    denoise_windows: int = 16  # per modality
    noise_density: float = 0.15
    mean_span: float = 3.0
    sample_prefix_fraction: float = 0.5  # share of each sample file kept (more when the rest exceeds sample_bytes)
    sample_bytes: int = 4096  # bytes generated per sample, at most (media: whole rows / frames)
    temperature: float = 1.0  # as obf generate's default (DECODING["continue"])
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.03  # as obf generate's default (DECODING["continue"])
    share_guard: float = 40.0  # as obf generate's default (DECODING["continue"])
    match_surprise: bool = True  # as obf generate's default (DECODING["continue"])
    seed: int = 0
    conversion_pairs: int = 40  # pairs per conversion measured (teacher-forced and generated), at most; 0 = none

    def validate(self, s: str = "evaluate") -> None:
        require(
            self.split in ("train", "val", "test", "all"),
            f"{s}.split",
            f"must be train, val, test or all, got {self.split!r}",
        )
        require(self.batch_size >= 1, f"{s}.batch_size", "must be at least 1")
        require(self.stride >= 0, f"{s}.stride", "must not be negative")
        require(self.denoise_windows >= 0, f"{s}.denoise_windows", "must not be negative")
        require(0 < self.noise_density < 1, f"{s}.noise_density", "must be in (0, 1)")
        require(self.mean_span >= 1, f"{s}.mean_span", "must be at least 1")
        require(0 <= self.sample_prefix_fraction < 1, f"{s}.sample_prefix_fraction", "must be in [0, 1)")
        require(self.sample_bytes >= 0, f"{s}.sample_bytes", "must not be negative")
        require(self.temperature >= 0, f"{s}.temperature", "must not be negative")
        require(self.top_k >= 0, f"{s}.top_k", "must not be negative")
        require(0 < self.top_p <= 1, f"{s}.top_p", "must be in (0, 1]")
        require(0 <= self.min_p < 1, f"{s}.min_p", "must be in [0, 1)")
        require(self.share_guard >= 0, f"{s}.share_guard", "must not be negative")
        require(self.conversion_pairs >= 0, f"{s}.conversion_pairs", "must not be negative")


# The decoding `obf generate` and batch-generate use unless told otherwise (the evaluation's
# samples take `evaluate.temperature` / `top_k` / `top_p` / `min_p` / `share_guard` / `match_surprise`, which
# params.yaml sets the same). `continue`: chosen on the validation split by benchmarks/samples.py --grid (the
# setting that holds most of the likeness targets; benchmarks/README.md, "Generation"): greedy
# decoding of a small model loops, a fixed temperature writes images flatter and text noisier than
# the files they continue, so each row's temperature follows a thermostat that keeps what it
# writes as surprising to the model as the end of its file was (`match_surprise`,
# `obf.generate.sampling.SurpriseControl`), and no byte is sampled that is under 3% as likely as
# the likeliest one (`min_p`, after the thermostat's temperature: the slips a long row would
# otherwise sample now and then, which media then follow), and a byte a row writes far more often
# than the end of its file holds it loses logits (`share_guard`, `obf.generate.sampling.ShareGuard`:
# a background colour or a silence level that takes over a row). `paired`: greedy, since a conversion
# has one right answer.
DECODING: dict[str, dict[str, float]] = {
    "continue": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.03, "share_guard": 40.0,
                 "match_surprise": True},
    "paired": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "share_guard": 0.0,
               "match_surprise": False},
}


@dataclass(frozen=True)
class GenerateSettings:
    """What generation writes for an input: `obf generate` (the `generate` section of params.yaml,
    which its flags override) and batch-generate (its parameters). Every field can change an
    output, so batch-generate's settings id and state records are built from all of them. The
    provider is not here: CUDA and CPU run the same graphs."""

    task: str = "continue"  # continue: the input's start and what the model makes after it; paired: its target
    target_modality: str | None = None  # paired: the target's modality (default: the input's)
    max_bytes: int = 1024  # text/binary and paired: at most; a whole media file: about this many more, whole units
    prefix_bytes: int | None = None  # continue: keep this start of the canonical input and complete the file
    prefix_fraction: float | None = None  # continue: keep this fraction of it instead, in [0, 1)
    temperature: float | None = None  # unset: DECODING[task]; 0 = greedy
    top_k: int | None = None  # unset: DECODING[task]; 0 = off
    top_p: float | None = None  # unset: DECODING[task]; 1 = off
    min_p: float | None = None  # unset: DECODING[task]; 0 = off (sampling.SamplingOptions.min_p)
    share_guard: float | None = None  # unset: DECODING[task]; 0 = off (sampling.ShareGuard)
    match_surprise: bool | None = None  # unset: DECODING[task]; a thermostat per row (sampling.SurpriseControl)
    seed: int = 0
    precision: str = "fp32"  # fp32 | int8 | fp16 (an ONNX dir's graphs) | bf16 (a checkpoint on torch)

    def validate(self, s: str = "generate") -> None:
        require(self.task in DECODING, f"{s}.task", f"must be continue or paired, got {self.task!r}")
        require(
            self.target_modality is None or (self.task == "paired" and self.target_modality in MODALITIES),
            f"{s}.target_modality",
            f"is for task paired and one of {', '.join(MODALITIES)}",
        )
        require(self.max_bytes >= 0, f"{s}.max_bytes", "must not be negative")
        require(self.prefix_bytes is None or self.prefix_fraction is None, f"{s}.prefix_bytes",
                 "give prefix_bytes or prefix_fraction, not both")
        require(self.prefix_bytes is None or self.prefix_bytes >= 0, f"{s}.prefix_bytes", "must not be negative")
        require(self.prefix_fraction is None or 0 <= self.prefix_fraction < 1, f"{s}.prefix_fraction",
                 "must be in [0, 1)")
        require(self.temperature is None or self.temperature >= 0, f"{s}.temperature", "must not be negative")
        require(self.top_k is None or self.top_k >= 0, f"{s}.top_k", "must not be negative")
        require(self.top_p is None or 0 < self.top_p <= 1, f"{s}.top_p", "must be in (0, 1]")
        require(self.min_p is None or 0 <= self.min_p < 1, f"{s}.min_p", "must be in [0, 1)")
        require(self.share_guard is None or self.share_guard >= 0, f"{s}.share_guard", "must not be negative")
        require(self.precision in ("fp32", "bf16", "int8", "fp16"), f"{s}.precision",
                 f"must be fp32, bf16, int8 or fp16, got {self.precision!r}")

    def resolved(self) -> GenerateSettings:
        """These settings with the decoding the task gets by default filled in (`DECODING`)."""
        d = DECODING[self.task]
        return dataclasses.replace(
            self,
            temperature=d["temperature"] if self.temperature is None else self.temperature,
            top_k=int(d["top_k"]) if self.top_k is None else self.top_k,
            top_p=d["top_p"] if self.top_p is None else self.top_p,
            min_p=d["min_p"] if self.min_p is None else self.min_p,
            share_guard=d["share_guard"] if self.share_guard is None else self.share_guard,
            match_surprise=bool(d["match_surprise"]) if self.match_surprise is None else self.match_surprise,
        )

    def settings_id(self) -> str:
        """One string per distinct output: batch-generate keys its claims and state records by it."""
        r = self.resolved()
        return (f"{r.task}|{r.max_bytes}|{r.seed}|{r.precision}|{r.target_modality}|{r.prefix_bytes}|"
                f"{r.prefix_fraction}|{r.temperature:g}|{r.top_k}|{r.top_p:g}"
                + (f"|min_p={r.min_p:g}" if r.min_p and r.temperature else "")
                + (f"|guard={r.share_guard:g}" if r.share_guard and r.temperature and r.task == "continue" else "")
                + ("|surprise" if r.match_surprise and r.temperature else ""))

    def record(self) -> dict[str, Any]:
        """The resolved settings as a state record names them."""
        return dataclasses.asdict(self.resolved())


@dataclass
class ExportConfig:
    """ONNX export (`obf export`)."""

    opset: int = 18
    max_abs_diff: float = 1e-3  # parity tolerance on logits, torch vs ONNX Runtime (fp32)
    int8: bool = False  # also write dynamically quantised int8 graphs for CPU
    fp16: bool = False  # also write fp16 graphs for the CUDA provider (cache kept on the GPU)

    def validate(self, s: str = "export") -> None:
        require(17 <= self.opset <= 23, f"{s}.opset", f"must be in 17..23, got {self.opset}")
        require(self.max_abs_diff > 0, f"{s}.max_abs_diff", "must be positive")


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Coerce/check `value` against a dataclass field annotation; ints are accepted as floats."""
    origin = typing.get_origin(tp)
    if tp is bool:
        require(isinstance(value, bool), key, f"must be true or false, got {value!r}")
    elif tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        require(
            isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}"
        )
        value = float(value)
    elif tp is str:
        require(isinstance(value, str), key, f"must be a string, got {value!r}")
    elif origin is dict:
        require(isinstance(value, dict), key, f"must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        value = {str(k): _check_type(f"{key}.{k}", v, vt) for k, v in value.items()}
    elif origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None  # an optional setting left unset
        return _check_type(key, value, args[0]) if len(args) == 1 else value
    return value


def build_section(cls: type, section: str, data: dict[str, Any]) -> Any:
    """One params section (a mapping) as `cls`: unknown keys refused, each value checked against
    its field's annotation, then the dataclass's own `validate`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(f"{section}.{k}: unknown key; expected one of {', '.join(sorted(names))}")
        kwargs[k] = _check_type(f"{section}.{k}", v, hints[k])
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{section}: {e}") from None
    if hasattr(obj, "validate"):
        obj.validate(section)
    return obj


