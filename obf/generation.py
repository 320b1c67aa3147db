"""Files in, files out: the generation used by `obf generate` and the batch-generate flow.

Each input is read once (any fsspec URL), sniffed, canonicalised like the training data (so a
PNG becomes the BMP the model knows), and batched with the others. `continue` writes the input
followed by its continuation; `paired` writes the generated target. Every output is turned into
a file that opens (`obf.formats.to_file`). One bad input is reported and skipped; the others
complete. Imports no torch.

How much `continue` generates follows `obf.completion.plan`: a media file (BMP, WAV, Y4M) is
completed to the size its header declares from a kept prefix (`prefix_bytes` /
`prefix_fraction`), or, when complete, extended by whole rows / sample frames / frames with its
header updated; text and binary run until EOS or `max_bytes`. Inputs are batched by how many
bytes they need, so a short row does not wait for a long one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from obf import storage
from obf.completion import Plan, plan
from obf.config import IngestConfig
from obf.conversions import conversion_for
from obf.errors import ObfError
from obf.formats import FormatError, canonicalize, opens, sniff, to_file
from obf.sampling import SamplingOptions, generate
from obf.vocab import MODALITIES, PAIRED_TAGS


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
    kept: int = 0  # bytes of the (canonical) input at the start of the output
    generated: int = 0  # bytes the model made
    opens_raw: bool = False  # the output opened as generated, before any header repair
    note: str = ""  # what was kept and what was made, in words


def ingest_config_of(backend: Any) -> IngestConfig:
    """The canonical forms (image size, audio rate, ...) the model was trained on. A model that
    recorded none gets the defaults; recorded settings that do not parse are an error, never a
    silent fall-back to forms the model did not see."""
    meta = getattr(backend, "meta", None) or {}
    saved = meta.get("ingest")
    if saved is None:
        return IngestConfig()
    try:
        cfg = IngestConfig(**saved)
        cfg.validate()
    except (TypeError, ObfError) as e:
        raise ObfError(f"the model's recorded ingest settings do not parse ({e}); re-export it with this obf") from None
    return cfg


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
                   batch_size: int = 8, prefix_bytes: int | None = None, prefix_fraction: float | None = None,
                   on_batch: Callable[[int], None] | None = None) -> list[Result]:
    """Generate an output file for every prepared input; failed inputs keep their error.

    `continue` follows `obf.completion.plan` (see the module doc); `paired` writes a target of
    `target_modality` (default: the input's) of up to `opts.max_bytes`, its header repaired."""
    if target_modality is not None and target_modality not in MODALITIES:
        raise ObfError(f"--target-modality must be one of {', '.join(MODALITIES)}")
    if prefix_bytes is not None and prefix_bytes < 0:
        raise ObfError("--prefix-bytes must not be negative")
    if prefix_fraction is not None and not 0.0 <= prefix_fraction < 1.0:
        raise ObfError("--prefix-fraction must be in [0, 1)")
    if task != "continue" and (prefix_bytes is not None or prefix_fraction is not None):
        raise ObfError("--prefix-bytes / --prefix-fraction apply to --task continue")
    results: list[Result | None] = [None] * len(inputs)
    plans: dict[int, Plan] = {}
    sources = [p.data for p in inputs]  # what each row is generated from (a `paired` input: as its conversion takes it)
    for i, p in enumerate(inputs):
        if p.error is None and task == "continue":
            try:
                plans[i] = plan(p.data, p.modality, max_bytes=opts.max_bytes, prefix_bytes=prefix_bytes,
                                prefix_fraction=prefix_fraction)
            except (FormatError, ValueError) as e:
                results[i] = Result(p.source, p.modality, None, "", str(e))
        elif p.error is None:
            try:
                sources[i], note = paired_source(p.data, p.modality, target_modality or p.modality,
                                                 backend.max_input_len)
                plans[i] = Plan(b"", None, note=note)
            except FormatError as e:
                results[i] = Result(p.source, p.modality, None, "", str(e))
        else:
            results[i] = Result(p.source, p.modality, None, "", p.error)
    # similar lengths together: a batch runs as long as its longest row
    todo = sorted(plans, key=lambda i: plans[i].length if plans[i].length is not None else opts.max_bytes)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        mods = [inputs[i].modality for i in chunk]
        targets = [target_modality or m for m in mods]
        contexts = [sources[i] if task == "paired" else plans[i].keep for i in chunk]
        gen = generate(backend, contexts, mods, task=task, target_modalities=targets if task == "paired" else None,
                       opts=opts, specs=[plans[i].spec for i in chunk])
        for i, g, tm in zip(chunk, gen, targets):
            p, pl = inputs[i], plans[i]
            modality = tm if task == "paired" else p.modality
            raw = pl.keep + g
            data, ext = to_file(raw, modality)
            results[i] = Result(p.source, modality, data, ext, kept=len(pl.keep), generated=len(g),
                                opens_raw=opens(raw, modality), note=pl.note)
        if on_batch:
            on_batch(len(chunk))
    return [r for r in results if r is not None]


def paired_source(data: bytes, modality: str, target_modality: str, max_input_len: int) -> tuple[bytes, str]:
    """The input a `paired` row is generated from, and a note: as the built-in conversion of this
    pair of modalities takes it (`obf.conversions`: an image fitted into 16x16, a text or binary
    input within its limit, else a FormatError naming the limit), and within the model's source
    (`model.max_input_len`; never cut)."""
    conv = conversion_for(modality, target_modality)
    note = f"a {target_modality} target made from the input"
    if conv is not None:
        try:
            data = conv.prepare(data)
        except FormatError as e:
            raise FormatError(f"{conv.name} ({conv.source} -> {conv.target}): {e}") from None
        note += f" (the `{conv.name}` conversion)"
    if len(data) > max_input_len - PAIRED_TAGS:
        raise FormatError(f"the input is {len(data)} bytes; this model takes paired inputs of up to "
                          f"{max_input_len - PAIRED_TAGS} bytes (model.max_input_len {max_input_len})")
    return data, note


def output_key(key: str, extension: str) -> str:
    """The input's whole relative key with the output's extension added ('a/b.png' -> 'a/b.png.bmp').

    Distinct inputs never share an output: the extension is one `.suffix` from a fixed set, so
    the output key ends in exactly one of them and the rest is the input's key unchanged."""
    return storage.safe_key(key) + extension


def output_name(source: str, extension: str) -> str:
    """`obf generate`'s file name for an input path or URL: its base name + the output's extension."""
    base = source.rstrip("/").rsplit("/", 1)[-1] or "output"
    return output_key(base, extension)


LEDGER = ".obf-generate.json"  # in an output dir: {name: sha256} of the files `obf generate` wrote there


def read_ledger(out_dir: str) -> dict[str, str]:
    """Which files of `out_dir` obf generate wrote, by name and sha256 ({} when none)."""
    url = storage.join(out_dir, LEDGER)
    if not storage.exists(url):
        return {}
    try:
        return dict(json.loads(storage.read_bytes(url))["outputs"])
    except (ValueError, KeyError, TypeError) as e:
        raise ObfError(f"{url}: unreadable ({e}); move it away to continue") from None


def written_by_obf(ledger: dict[str, str], out_dir: str, name: str) -> bool:
    """True when `name` in `out_dir` is still the file obf generate wrote (same sha256)."""
    want = ledger.get(name)
    return want is not None and hashlib.sha256(storage.read_bytes(storage.join(out_dir, name))).hexdigest() == want


def record_outputs(out_dir: str, written: dict[str, bytes]) -> None:
    """Add the files just written to the ledger of `out_dir` (read again, so others' entries stay)."""
    ledger = read_ledger(out_dir)
    ledger.update({name: hashlib.sha256(data).hexdigest() for name, data in written.items()})
    storage.write_bytes_atomic(storage.join(out_dir, LEDGER),
                               (json.dumps({"outputs": ledger}, indent=1, sort_keys=True) + "\n").encode())
