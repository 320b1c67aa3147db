"""Evaluation: honest whole-file bits per byte per modality, compressor baselines, reconstruction
(`denoise`) accuracy, and generated samples written as files that open.

Bits per byte: every byte of every file is predicted from earlier bytes of that file only, with
the `continue` objective window after window (the first window from an empty context; windows
overlap by `evaluate.stride` so that every scored byte has decoder context, each byte scored
once), the end-of-file marker counted, summed in bits and divided by the file's bytes. `bpb` is
the model as it serves: the network with its mixer (`obf.mixer`) when it carries one;
`network_bpb` is the network alone. Baselines compress the same (stored, canonical) bytes with
gzip -9, bz2 -9, xz -9e and zstd -19, as raw streams without containers (deflate, LZMA2,
zstd without checksum), and with the strongest classical coders (PPMd orders 6 and 32, brotli
11); `best` is the smallest of all per file, and it is what the model is compared with. The
files of pairs are measured as conversions (`obf.evaluate.fidelity`), not as files. Scoring itself is
`obf.runtime.scoring`: a torch checkpoint and its ONNX export give the same numbers.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import obf.evaluate.previews as previews
from obf.core import storage
from obf.core.bits import LN2, log_probs_of
from obf.core.config import EvaluateConfig, IngestConfig
from obf.core.params import Params
from obf.core.vocab import MODALITIES, N_BYTES, modality_id, paired_room, task_id
from obf.data.dataset import DataError, Dataset, local_dataset
from obf.data.ingest import ingest
from obf.data.objectives import Example, collate, denoise_window_len, span_corrupt
from obf.evaluate.baselines import compressed_sizes
from obf.evaluate.fidelity import Case, measure
from obf.evaluate.likeness import compare
from obf.evaluate.report import render_csv, render_report, render_table
from obf.formats.layouts import layout
from obf.formats.repair import opens, to_file
from obf.generate.files import ingest_config_of
from obf.generate.planning import plan
from obf.generate.sampling import SamplingOptions, generate
from obf.runtime.backend import Backend, input_end_of, open_backend
from obf.runtime.scoring import served_log_probs, whole_file_bits

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- baselines


# --------------------------------------------------------------------------- scoring


def denoise_scores(
    backend: Backend, files: list[tuple[np.ndarray, str]], cfg: EvaluateConfig
) -> tuple[float, float, int]:
    """(accuracy, bits per masked byte, masked bytes) of teacher-forced span restoration."""

    rng = np.random.default_rng(cfg.seed)
    win = min(backend.max_src_len - 2, denoise_window_len(backend.max_tgt_len, cfg.noise_density, cfg.mean_span))
    examples = []
    for k in range(cfg.denoise_windows):
        data, modality = files[k % len(files)]
        n = min(len(data), win)
        if n < 2:
            continue
        start = int(rng.integers(0, len(data) - n + 1))
        payload, tgt = span_corrupt(np.asarray(data[start : start + n]), rng, cfg.noise_density, cfg.mean_span)
        examples.append(Example([modality_id(modality), task_id("denoise"), *payload], tgt, "denoise", modality, k))
    correct = total = 0
    bits = 0.0
    for i in range(0, len(examples), cfg.batch_size):
        b = collate(examples[i : i + cfg.batch_size], multiple=max(8, backend.patch_size))
        logits = backend.logits(b.src, b.dec)
        is_byte = b.tgt < N_BYTES  # masked bytes only: not sentinels, EOS or PAD
        pred = logits[..., :N_BYTES].argmax(axis=-1)
        correct += int(((pred == b.tgt) & is_byte).sum())
        total += int(is_byte.sum())
        bits -= float((log_probs_of(logits, b.tgt) * is_byte).sum()) / LN2
    return (correct / total if total else float("nan")), (bits / total if total else float("nan")), total


# --------------------------------------------------------------------------- the stage


@dataclass
class EvalFile:
    path: str
    modality: str
    data: np.ndarray


def _files_of(
    data: str, cfg: EvaluateConfig, ingest_cfg: IngestConfig, workdir: Path, progress: bool
) -> tuple[list[EvalFile], list[Case], str]:
    """Files to evaluate: a split of an ingested dataset, or any folder/URL ingested on the fly.
    The files of pairs are not scored as files: they come back as cases of their conversion (at
    most `evaluate.conversion_pairs` each, in key order)."""
    split = cfg.split
    if storage.is_local(data) and (storage.local_path(data) / "manifest.json").is_file():
        ds = Dataset(storage.local_path(data))
    elif not storage.is_local(data) and storage.exists(storage.join(data, "manifest.json")):
        ds = Dataset(local_dataset(data))  # an ingested dataset on storage, through the verified cache
    else:
        ingest(data, workdir / "dataset", ingest_cfg, progress=progress)
        ds = Dataset(workdir / "dataset")
        split = "all"  # a folder of test files: score every file
    splits = ("train", "val", "test") if split == "all" else (split,)
    records = [r for s in splits for r in ds.select(split=s, paired=False)]
    files = [EvalFile(r.key, r.modality, np.asarray(ds.file_bytes(r))) for r in records]
    cases: list[Case] = []
    taken: dict[str, int] = defaultdict(int)
    for inp, tgt in sorted((p for s in splits for p in ds.pairs(s)), key=lambda p: p[0].key):
        case = Case(inp.key, ds.file_bytes(inp).tobytes(), inp.modality, ds.file_bytes(tgt).tobytes(), tgt.modality)
        if taken[case.conversion] < cfg.conversion_pairs:
            taken[case.conversion] += 1
            cases.append(case)
    if not files:
        raise DataError(f"{data}: no file to evaluate" + ("" if split == "all" else f" in split {split!r}"))
    return files, cases, split


_SIGNATURES = {"report.md": b"# Evaluation of `", "bpb.csv": b"label,modality,method,bpb\n"}
DETAILS = "details.json"  # beside metrics.json: every figure, sample and per-file row (DVC does not read it as metrics)
_CONVERSION_FIGURES = ("pairs", "exact", "byte_accuracy", "bpb", "chars_right", "pixels_exact", "pixel_mean_error")


def headline(details: dict[str, Any], *, per_file: bool = False) -> dict[str, Any]:
    """What metrics.json holds, and so what `dvc metrics show` and `dvc exp show` list: per modality
    and overall the files, bytes, and bits per byte of the model, the network alone and each
    compressor (`best` the smallest), denoising accuracy; per conversion its figures. The samples,
    examples, paths and per-file rows stay in details.json (`per_file`: the rows here too)."""
    keep = ("files", "bytes", "bpb", "network_bpb", "baselines", "denoise_accuracy", "samples_open", "samples_open_raw")
    out: dict[str, Any] = {
        "split": details["split"],
        "modalities": {m: {k: v[k] for k in keep if k in v} for m, v in details["modalities"].items()},
        "overall": {k: details["overall"][k] for k in keep if k in details["overall"]},
        "conversions": {c: {k: v[k] for k in _CONVERSION_FIGURES if k in v} for c, v in details["conversions"].items()},
    }
    if per_file:
        out["files"] = details["files"]
    return out


def write_json(path: Path, value: dict[str, Any]) -> None:
    storage.write_bytes_atomic(str(path), (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def check_outputs(out: Path, inputs: list[str]) -> None:
    """Refuse (one line, nothing touched) to write where evaluation would replace what obf did not
    write: `out` (metrics.json), details.json, report.md and bpb.csv beside it must be absent or evaluation
    outputs (recognised by their content), samples/ absent, empty or an earlier evaluation's."""
    if out.is_dir():
        raise DataError(f"{out}: is a folder; --out names the metrics file (e.g. {out / 'metrics.json'})")
    for up in out.parents:  # a file where a folder of the path must be would fail only at the end
        if up.exists():
            if not up.is_dir():
                raise DataError(f"{up}: is a file, so {out} cannot be written")
            break
    storage.check_output_dir(out.parent / "samples", "evaluate", inputs)
    for path in (out, out.parent / DETAILS, out.parent / "report.md", out.parent / "bpb.csv"):
        if not path.exists():
            continue
        content = path.read_bytes() if path.is_file() else b""
        if path == out or path.suffix == ".json":  # metrics are JSON whatever --out calls them
            try:
                ours = {"split", "modalities", "overall"} <= set(json.loads(content))
            except (ValueError, TypeError):
                ours = False
        else:
            ours = content.startswith(_SIGNATURES[path.name])
        if not ours:
            raise DataError(f"{path}: exists and is not an obf evaluate output; remove it or choose another --out")


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def evaluate(
    model_dir: str,
    data: str,
    out: str | Path,
    params: Params,
    *,
    per_file: bool = False,
    provider: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> dict[str, Any]:
    """Score MODEL on DATA; write the headline figures to `out` (metrics.json, `headline`) and
    details.json, report.md, bpb.csv and samples/ beside it; return the details. `per_file`: the
    per-file rows in metrics.json too (details.json always has them). `precision` as for
    `open_backend` (int8: an ONNX dir's quantised graphs; bf16: a checkpoint)."""

    cfg = params.evaluate
    out = Path(out)
    check_outputs(out, [model_dir, data])
    backend = open_backend(model_dir, provider=provider, precision=precision)
    with tempfile.TemporaryDirectory(prefix="obf-eval-") as tmp:
        # files given as a folder are canonicalised like the model's training data
        files, cases, split = _files_of(data, cfg, ingest_config_of(backend), Path(tmp), progress)
        scored = whole_file_bits(backend, [(f.data, f.modality) for f in files], cfg.batch_size, cfg.stride, progress)
        bits, net = scored.model, scored.network
        sizes = [compressed_sizes(f.data.tobytes()) for f in files]

    per_mod: dict[str, dict[str, Any]] = {}
    by_mod: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(files):
        by_mod[f.modality].append(i)
    samples_dir = out.parent / "samples"
    tmp_samples = storage.temp_dir_beside(samples_dir)
    try:
        picks = {m: max((files[i] for i in by_mod[m]), key=lambda f: len(f.data)) for m in MODALITIES if m in by_mod}
        samples = write_samples(backend, picks, cfg, tmp_samples)
        conversions = write_conversions(backend, cases, cfg, tmp_samples, progress) if cases else {}
        for m in MODALITIES:
            idx = by_mod.get(m)
            if not idx:
                continue
            nbytes = sum(len(files[i].data) for i in idx)
            base = {k: _ratio(8 * sum(sizes[i][k] for i in idx), nbytes) for k in sizes[idx[0]]}
            acc, dbpb, masked = denoise_scores(backend, [(files[i].data, m) for i in idx], cfg)
            per_mod[m] = {
                "files": len(idx),
                "bytes": nbytes,
                "bpb": _ratio(sum(bits[i] for i in idx), nbytes),
                "network_bpb": _ratio(sum(net[i] for i in idx), nbytes),
                "baselines": base,
                "denoise_accuracy": acc,
                "denoise_bpb": dbpb,
                "denoise_masked_bytes": masked,
                "sample": samples[m],
            }
        storage.mark_output_dir(tmp_samples, "evaluate")
        storage.replace_dir(tmp_samples, samples_dir)
    finally:
        shutil.rmtree(tmp_samples, ignore_errors=True)

    total_bytes = sum(len(f.data) for f in files)
    keys = list(sizes[0])
    overall = {
        "files": len(files),
        "bytes": total_bytes,
        "bpb": _ratio(sum(bits), total_bytes),
        "network_bpb": _ratio(sum(net), total_bytes),
        "baselines": {k: _ratio(8 * sum(s[k] for s in sizes), total_bytes) for k in keys},
    }
    samples = list(samples.values())
    overall["samples_open_raw"] = _ratio(sum(s["opens_raw"] for s in samples), len(samples))
    overall["samples_open"] = _ratio(sum(s["opens"] for s in samples), len(samples))
    metrics: dict[str, Any] = {
        "model": str(model_dir),
        "data": str(data),
        "split": split,
        "modalities": per_mod,
        "overall": overall,
        "sample_decoding": {k: getattr(cfg, k) for k in ("temperature", "top_k", "top_p", "min_p", "share_guard",
                                                         "match_surprise", "seed")},
        "conversions": conversions,
        "files": [
            {
                "path": f.path,
                "modality": f.modality,
                "bytes": len(f.data),
                "bpb": _ratio(bits[i], len(f.data)),
                "network_bpb": _ratio(net[i], len(f.data)),
            }
            for i, f in enumerate(files)
        ],
    }
    write_json(out.parent / DETAILS, metrics)
    write_json(out, headline(metrics, per_file=per_file))
    storage.write_bytes_atomic(str(out.parent / "report.md"), render_report(metrics).encode())
    storage.write_bytes_atomic(str(out.parent / "bpb.csv"), render_csv(metrics).encode())
    log.info("%s", render_table(metrics))
    return metrics


# --------------------------------------------------------------------------- conversions


def write_conversions(
    backend: Backend, cases: list[Case], cfg: EvaluateConfig, dest: Path, progress: bool
) -> dict[str, Any]:
    """`obf.evaluate.fidelity.measure` per conversion, and for the report the first two `gray` pairs and
    the first `ascii` pair: input, target and what the model made, as pictures (and text)."""

    room = paired_room(backend.max_input_len, input_end_of(backend))
    long = sum(len(c.input) > room for c in cases)
    if long:  # as training does: a pair whose input the model cannot read is left out, and counted
        log.warning("evaluate: %d pair(s) with inputs over %d bytes (model.max_input_len) left out", long, room)
        cases = [c for c in cases if len(c.input) <= room]
        if not cases:
            return {}
    out, made = measure(backend, cases, batch_size=min(cfg.batch_size, 16), progress=progress)
    shown = 0
    for c, g in zip(cases, made):
        if c.conversion == "gray" and shown < 2:
            pics = {}
            for part, data in (("input", c.input), ("target", c.target), ("made", g)):
                name = f"gray_{shown}_{part}.png"
                try:
                    (dest / name).write_bytes(previews.image_png(to_file(data, "image")[0]))
                    pics[part] = f"samples/{name}"
                except Exception as e:  # a made picture that does not open is shown as such
                    pics[part] = f"does not open ({type(e).__name__})"
            out["gray"].setdefault("examples", []).append({"pair": c.key, **pics})
            shown += 1
        if c.conversion == "ascii" and "examples" not in out["ascii"]:
            name = "ascii_0_input.png"
            (dest / name).write_bytes(previews.image_png(c.input))
            out["ascii"]["examples"] = [
                {
                    "pair": c.key,
                    "input": f"samples/{name}",
                    "target": c.target.decode("utf-8", "replace"),
                    "made": g.decode("utf-8", "replace"),
                }
            ]
    return out


# --------------------------------------------------------------------------- samples


def write_samples(
    backend: Backend, picks: dict[str, EvalFile], cfg: EvaluateConfig, dest: Path
) -> dict[str, dict[str, Any]]:
    """Complete one real file per modality and write it, its source and previews into `dest`.

    Each sample keeps the start of its file (`evaluate.sample_prefix_fraction` of it, more when
    the rest would exceed `evaluate.sample_bytes`) and the model makes the rest: up to the size the
    header declares for images, audio and video (see `obf.generate.planning`), up to EOS or
    `sample_bytes` for text and binary. All samples are generated in one batch.

    Beside each: how its generated part compares with the real part it replaces
    (`obf.evaluate.likeness.compare`), and the bits per byte the model, as generation serves it, gives
    each of the two (`generated_bpb`, `real_bpb`): a part sampled from a calibrated model costs
    about what the real one does; one far cheaper has collapsed into what the model expects."""

    plans = {}
    for m, f in picks.items():
        data = f.data.tobytes()
        keep = max(round(cfg.sample_prefix_fraction * len(data)), len(data) - cfg.sample_bytes)
        plans[m] = plan(data, m, max_bytes=cfg.sample_bytes, prefix_bytes=keep)
    opts = SamplingOptions(
        max_bytes=cfg.sample_bytes, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
        min_p=cfg.min_p, share_guard=cfg.share_guard, match_surprise=cfg.match_surprise,
    )
    mods = list(plans)
    gens = generate(backend, [plans[m].keep for m in mods], mods, opts=opts, specs=[plans[m].spec for m in mods])
    reals = [picks[m].data.tobytes()[len(plans[m].keep) : len(plans[m].keep) + len(g)] for m, g in zip(mods, gens)]
    lengths = [min(len(g), len(r)) for g, r in zip(gens, reals)]
    files = [
        (np.frombuffer(plans[m].keep + part[:n], np.uint8), m)
        for m, g, r, n in zip(mods, gens, reals, lengths)
        for part in (g, r)
    ]
    served, _ = served_log_probs(
        backend, files, cfg.batch_size, cfg.stride, learn_until=[len(plans[m].keep) for m in mods for _ in range(2)]
    )
    out = {}
    for j, (m, gen) in enumerate(zip(mods, gens)):
        pl, source, n, k = plans[m], picks[m].data.tobytes(), lengths[j], len(plans[m].keep)
        raw = pl.keep + gen
        data, ext = to_file(raw, m)
        (dest / f"{m}{ext}").write_bytes(data)
        bpb = [-float(served[2 * j + i][k : k + n].sum()) / LN2 / n if n else float("nan") for i in (0, 1)]
        out[m] = {
            "source": picks[m].path,
            "prefix_bytes": len(pl.keep),
            "generated_bytes": len(gen),
            "file": f"samples/{m}{ext}",
            "opens_raw": opens(raw, m),
            "opens": opens(data, m),
            "note": pl.note,
            "generated_bpb": bpb[0],
            "real_bpb": bpb[1],
            **compare(pl.keep, gen, reals[j]),
            **_previews(m, data, source, len(pl.keep), ext, dest),
        }
    return out


def _previews(m: str, sample: bytes, source: bytes, kept: int, ext: str, dest: Path) -> dict[str, Any]:
    """Preview files of one sample and its source (PNG pictures, the source file, text inline)."""

    def put(name: str, data: bytes) -> str:
        (dest / name).write_bytes(data)
        return f"samples/{name}"

    try:
        if m == "image":
            return {
                "preview": put("image.png", previews.image_png(sample)),
                "source_preview": put("image.source.png", previews.image_png(source)),
            }
        if m == "video":
            return {
                "preview": put("video.png", previews.video_strip_png(sample)),
                "source_preview": put("video.source.png", previews.video_strip_png(source)),
            }
        if m == "audio":
            lay = layout(sample, m)
            mark = (kept - lay.header) // lay.unit if lay else None
            return {
                "preview": put("audio.png", previews.waveform_png(sample, mark)),
                "source_preview": put("audio.source.png", previews.waveform_png(source, mark)),
                "source_file": put(f"audio.source{ext}", source),
            }
    except Exception as e:  # a preview is for people; a sample that cannot be drawn is reported, not fatal
        return {"preview_error": f"{type(e).__name__}: {e}"[:200]}
    if m == "text":
        return {
            "kept_tail": sample[max(0, kept - 400) : kept].decode("utf-8", "replace"),
            "generated_text": sample[kept : kept + 2000].decode("utf-8", "replace"),
        }
    return {"generated_hex": sample[kept : kept + 256].hex(" ")}


# --------------------------------------------------------------------------- rendering
