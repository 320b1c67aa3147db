"""The byte vocabulary shared by the model, the data pipeline and every backend.

ids 0..255 are the byte values themselves, so a real byte is never a special id. Above them come
PAD, BOS, EOS, one tag per modality, one tag per task and sentinel ids for span corruption; the
size is rounded up to a multiple of 64 (the spare ids are never produced by the data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODALITIES: tuple[str, ...] = ("text", "image", "audio", "video", "binary")
TASKS: tuple[str, ...] = ("continue", "denoise", "paired")

N_BYTES = 256
PAD = 256
BOS = 257
EOS = 258
_MODALITY_BASE = 259
_TASK_BASE = _MODALITY_BASE + len(MODALITIES)
SENTINEL_BASE = _TASK_BASE + len(TASKS)
N_SENTINELS = 32
_USED = SENTINEL_BASE + N_SENTINELS
VOCAB_SIZE = -(-_USED // 64) * 64  # 320


def modality_id(modality: str) -> int:
    """The tag id of a modality name (`text`, `image`, ...)."""
    try:
        return _MODALITY_BASE + MODALITIES.index(modality)
    except ValueError:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}") from None


def task_id(task: str) -> int:
    """The tag id of a task name (`continue`, `denoise`, `paired`)."""
    try:
        return _TASK_BASE + TASKS.index(task)
    except ValueError:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}") from None


def sentinel_id(i: int) -> int:
    """The id of the i-th sentinel (0-based) used to mark a corrupted span."""
    if not 0 <= i < N_SENTINELS:
        raise ValueError(f"sentinel index {i} out of range 0..{N_SENTINELS - 1}")
    return SENTINEL_BASE + i


@dataclass(frozen=True)
class Vocab:
    """A serialisable description of the vocabulary, stored in config.json and ONNX metadata."""

    size: int = VOCAB_SIZE
    pad: int = PAD
    bos: int = BOS
    eos: int = EOS
    modalities: dict[str, int] = field(default_factory=lambda: {m: modality_id(m) for m in MODALITIES})
    tasks: dict[str, int] = field(default_factory=lambda: {t: task_id(t) for t in TASKS})
    sentinel_base: int = SENTINEL_BASE
    n_sentinels: int = N_SENTINELS

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "pad": self.pad,
            "bos": self.bos,
            "eos": self.eos,
            "modalities": dict(self.modalities),
            "tasks": dict(self.tasks),
            "sentinel_base": self.sentinel_base,
            "n_sentinels": self.n_sentinels,
        }

    @classmethod
    def check(cls, d: dict) -> None:
        """Raise ValueError when a stored vocabulary differs from this code's vocabulary."""
        if d != cls().to_dict():
            raise ValueError("the model's vocabulary differs from this version of obf")


def encoder_input(modality: str, task: str, payload: bytes | bytearray | memoryview, max_len: int) -> list[int]:
    """Encoder ids: [modality tag, task tag] + the last `max_len - 2` bytes of `payload`.

    Keeping the *last* bytes means a long context is cut at its start, so the bytes nearest to
    what the decoder predicts are always seen.
    """
    keep = max(0, max_len - 2)
    tail = bytes(payload[len(payload) - keep:]) if keep and len(payload) > keep else (bytes(payload) if keep else b"")
    return [modality_id(modality), task_id(task), *tail]


PAIRED_TAGS = 3  # ids before a `paired` input: its modality, the task, the target's modality


def paired_room(max_len: int, end: bool = False) -> int:
    """The most input bytes a `paired` source of `max_len` ids holds: the three tags first, and
    with `end` (`model.input_end`) an EOS id after the input."""
    return max_len - PAIRED_TAGS - int(end)


def paired_input(
    payload: bytes | bytearray | memoryview, modality: str, target_modality: str, max_len: int, end: bool = False
) -> list[int]:
    """Encoder ids for `paired`: [input modality, paired, target modality] + the whole input (+ EOS
    with `end`: a key that says where the input stops, which the target's end reads). An input
    longer than `paired_room` is a ValueError naming the limit: a conversion of a cut input would
    look right and be wrong."""
    room = paired_room(max_len, end)
    if len(payload) > room:
        raise ValueError(
            f"the input is {len(payload)} bytes; the model takes paired inputs of up to "
            f"{room} bytes (model.max_input_len {max_len})"
        )
    tail = [EOS] if end else []
    return [modality_id(modality), task_id("paired"), modality_id(target_modality), *bytes(payload), *tail]
