"""Files in, files out: the generation used by `obf generate` and the batch-generate flow.

Each input is read once (any fsspec URL), sniffed, canonicalised like the training data (so a
PNG becomes the BMP the model knows), and batched with the others. `continue` writes the input
followed by its continuation; `paired` writes the generated target. Every output is turned into
a file that opens (`obf.formats.to_file`). One bad input is reported and skipped; the others
complete. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Sequence

from obf import storage
from obf.config import IngestConfig
from obf.errors import ObfError
from obf.formats import FormatError, canonicalize, sniff, to_file
from obf.sampling import SamplingOptions, generate
from obf.vocab import MODALITIES


@dataclass
class Prepared:
    """An input ready to generate from, or the reason it cannot be."""

    source: str
    modality: str = ""
    data: bytes = b""
    error: str | None = None


@dataclass
class Result:
    source: str
    modality: str
    output: bytes | None  # file bytes to write
    extension: str
    error: str | None = None


def ingest_config_of(backend: Any) -> IngestConfig:
    """The canonical forms (image size, audio rate, ...) the model was trained on, else the defaults."""
    meta = getattr(backend, "meta", None) or {}
    saved = meta.get("ingest") or {}
    try:
        return IngestConfig(**saved)
    except TypeError:
        return IngestConfig()


def prepare(source: str, ingest_cfg: IngestConfig, *, max_input_bytes: int, data: bytes | None = None) -> Prepared:
    """Read, size-check, sniff and canonicalise one input. Never raises for a bad input."""
    try:
        if data is None:
            data = storage.read_bytes(source)
    except ObfError as e:
        return Prepared(source, error=str(e))
    except OSError as e:
        return Prepared(source, error=f"unreadable: {e.strerror or e}")
    if len(data) > max_input_bytes:
        return Prepared(source, error=f"input is {len(data)} bytes, over the cap of {max_input_bytes}")
    try:
        canon, sn = canonicalize(data, ingest_cfg) if ingest_cfg.canonicalize else (data, sniff(data))
    except FormatError as e:
        return Prepared(source, error=str(e))
    return Prepared(source, sn.modality, canon)


def generate_files(backend: Any, inputs: Sequence[Prepared], *, task: str = "continue",
                   target_modality: str | None = None, opts: SamplingOptions = SamplingOptions(),
                   batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> list[Result]:
    """Generate an output file for every prepared input; failed inputs keep their error."""
    if target_modality is not None and target_modality not in MODALITIES:
        raise ObfError(f"--target-modality must be one of {', '.join(MODALITIES)}")
    results: list[Result | None] = [None] * len(inputs)
    ok = [i for i, p in enumerate(inputs) if p.error is None]
    for i, p in enumerate(inputs):
        if p.error is not None:
            results[i] = Result(p.source, p.modality, None, "", p.error)
    for start in range(0, len(ok), batch_size):
        chunk = ok[start:start + batch_size]
        mods = [inputs[i].modality for i in chunk]
        targets = [target_modality or m for m in mods]
        gen = generate(backend, [inputs[i].data for i in chunk], mods, task=task,
                       target_modalities=targets if task == "paired" else None, opts=opts)
        for i, g, tm in zip(chunk, gen, targets):
            p = inputs[i]
            raw = g if task == "paired" else p.data + g
            data, ext = to_file(raw, tm if task == "paired" else p.modality)
            results[i] = Result(p.source, tm if task == "paired" else p.modality, data, ext)
        if on_batch:
            on_batch(len(chunk))
    return [r for r in results if r is not None]


def output_key(key: str, extension: str) -> str:
    """Same relative key, with the extension of the output's modality ('a/b.png' -> 'a/b.bmp')."""
    safe = storage.safe_key(key)
    p = PurePosixPath(safe)
    return str(p.with_suffix(extension)) if p.suffix else safe + extension
