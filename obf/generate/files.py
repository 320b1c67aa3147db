"""Files in, files out: the generation used by `obf generate` and the batch-generate flow.

Each input is read once (any fsspec URL), sniffed, canonicalised like the training data (so a
PNG becomes the BMP the model knows), and batched with the others. `continue` writes the input
followed by its continuation; `paired` writes the generated target. Every output is turned into
a file that opens (`obf.formats.to_file`). One bad input is reported and skipped; the others
complete. Imports no torch.

How much `continue` generates follows `obf.generate.planning.plan`: a media file (BMP, WAV, Y4M) is
completed to the size its header declares from a kept prefix (`prefix_bytes` /
`prefix_fraction`), or, when complete, extended by whole rows / sample frames / frames with its
header updated; text and binary run until EOS or `max_bytes`. Inputs are batched by how many
bytes they need, so a short row does not wait for a long one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from obf.core import storage
from obf.core.config import GenerateSettings, IngestConfig
from obf.core.errors import ObfError
from obf.core.vocab import paired_room
from obf.formats.canonical import canonicalize
from obf.formats.conversions import conversion_for
from obf.formats.repair import opens, to_file
from obf.formats.sniff import FormatError, sniff
from obf.generate.planning import Plan, plan
from obf.generate.sampling import SamplingOptions, generate
from obf.runtime.backend import Backend, input_end_of, meta_of


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


def ingest_config_of(backend: Backend) -> IngestConfig:
    """The canonical forms (image size, audio rate, ...) the model was trained on. A model that
    recorded none gets the defaults; recorded settings that do not parse are an error, never a
    silent fall-back to forms the model did not see."""
    saved = meta_of(backend).get("ingest")
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
    except ObfError as e:  # its message names the URL first; the error is reported under the source's name
        return Prepared(source, error=str(e).removeprefix(f"{source}: "))
    except OSError as e:
        return Prepared(source, error=f"unreadable: {e.strerror or e}")
    if len(data) > max_input_bytes:
        return Prepared(source, error=f"input is {len(data)} bytes, over the cap of {max_input_bytes}")
    try:
        canon, sn = canonicalize(data, ingest_cfg) if ingest_cfg.canonicalize else (data, sniff(data))
    except FormatError as e:
        return Prepared(source, error=str(e))
    return Prepared(source, sn.modality, canon)


def generate_files(backend: Backend, inputs: Sequence[Prepared], settings: GenerateSettings | None = None, *,
                   opts: SamplingOptions | None = None, batch_size: int = 8,
                   on_batch: Callable[[int], None] | None = None) -> list[Result]:
    """Generate an output file for every prepared input; failed inputs keep their error.

    `settings` (default `GenerateSettings()`): `continue` follows `obf.generate.planning.plan` (see
    the module doc); `paired` writes a target of `settings.target_modality` (default: the input's)
    of up to `max_bytes`, its header repaired. `opts`: the decode loop's options exactly (tests and
    the evaluation pick them), instead of `SamplingOptions.of(settings)`."""
    settings = settings or GenerateSettings()
    settings.validate()
    task, target_modality = settings.task, settings.target_modality
    prefix_bytes, prefix_fraction = settings.prefix_bytes, settings.prefix_fraction
    if task != "continue" and (prefix_bytes is not None or prefix_fraction is not None):
        raise ObfError("--prefix-bytes / --prefix-fraction apply to --task continue")
    opts = opts or SamplingOptions.of(settings)
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
                                                 paired_room(backend.max_input_len, input_end_of(backend)))
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


def paired_source(data: bytes, modality: str, target_modality: str, room: int) -> tuple[bytes, str]:
    """The input a `paired` row is generated from, and a note: as the built-in conversion of this
    pair of modalities takes it (`obf.formats.conversions`: an image fitted into 16x16, a text or binary
    input within its limit, else a FormatError naming the limit), and within the `room` bytes of the
    model's source (`vocab.paired_room` of `model.max_input_len`; never cut)."""
    conv = conversion_for(modality, target_modality)
    note = f"a {target_modality} target made from the input"
    if conv is not None:
        try:
            data = conv.prepare(data)
        except FormatError as e:
            raise FormatError(f"{conv.name} ({conv.source} -> {conv.target}): {e}") from None
        note += f" (the `{conv.name}` conversion)"
    if len(data) > room:
        raise FormatError(f"the input is {len(data)} bytes; this model takes paired inputs of up to "
                          f"{room} bytes (model.max_input_len)")
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


