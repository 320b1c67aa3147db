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
files of pairs are measured as conversions (`obf.fidelity`), not as files. Scoring itself is
`obf.scoring`: a torch checkpoint and its ONNX export give the same numbers.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import re
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from obf import storage
from obf.config import EvaluateConfig, IngestConfig, Params
from obf.dataset import Dataset, DataError, local_dataset
from obf.fidelity import Case
from obf.ingest import ingest
from obf.objectives import Example, collate, span_corrupt
from obf.scoring import whole_file_bits
from obf.formats import opens, to_file
from obf.metrics import LN2, log_probs_of
from obf.sampling import SamplingOptions, generate
from obf.vocab import MODALITIES, N_BYTES, PAIRED_TAGS, modality_id, task_id



# --------------------------------------------------------------------------- baselines


def compressed_sizes(data: bytes) -> dict[str, int]:
    """Compressed size in bytes of `data` under each standard compressor, and `best`, the smallest.

    Whole-file tools as people run them: gzip -9, bz2 -9, xz -9e, zstd -19. Beside them the raw
    streams without their containers (headers, checksums, sizes), which is what a model is fairly
    compared with on small files: raw deflate -9 (`zlib`, wbits -15), raw LZMA2 preset 9e, and a
    zstd -19 frame without checksum, content size or dictionary id. And the strongest classical
    coders: PPMd (variant I, 7-Zip's text method) of order 6 (16 MiB) and of order 32 (256 MiB, as
    7-Zip's ultra setting), and brotli at quality 11 with its largest window (16 MiB). `best` is
    the smallest of all for this file: the strongest peer a user could pick per file, and what
    claims compare with."""
    import zlib

    import brotli
    import pyppmd
    import zstandard

    sizes = {
        "gzip": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "bz2": len(bz2.compress(data, compresslevel=9)),
        "xz": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
        "zstd": len(zstandard.ZstdCompressor(level=19).compress(data)),
        "deflate_raw": len(zlib.compress(data, 9, wbits=-15)),
        "lzma2_raw": len(lzma.compress(data, format=lzma.FORMAT_RAW,
                                       filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])),
        "zstd_raw": len(zstandard.ZstdCompressor(level=19, write_checksum=False, write_content_size=False,
                                                 write_dict_id=False).compress(data)),
        "ppmd6": len(pyppmd.compress(data, max_order=6, mem_size=16 << 20)),
        "ppmd32": len(pyppmd.compress(data, max_order=32, mem_size=256 << 20)),
        "brotli": len(brotli.compress(data, quality=11, lgwin=24)),
    }
    sizes["best"] = min(sizes.values())
    return sizes


# --------------------------------------------------------------------------- scoring


def denoise_scores(backend: Any, files: list[tuple[np.ndarray, str]], cfg: EvaluateConfig) -> tuple[float, float, int]:
    """(accuracy, bits per masked byte, masked bytes) of teacher-forced span restoration."""
    from obf.objectives import denoise_window_len

    rng = np.random.default_rng(cfg.seed)
    win = min(backend.max_src_len - 2, denoise_window_len(backend.max_tgt_len, cfg.noise_density, cfg.mean_span))
    examples = []
    for k in range(cfg.denoise_windows):
        data, modality = files[k % len(files)]
        n = min(len(data), win)
        if n < 2:
            continue
        start = int(rng.integers(0, len(data) - n + 1))
        payload, tgt = span_corrupt(np.asarray(data[start:start + n]), rng, cfg.noise_density, cfg.mean_span)
        examples.append(Example([modality_id(modality), task_id("denoise"), *payload], tgt, "denoise", modality, k))
    correct = total = 0
    bits = 0.0
    for i in range(0, len(examples), cfg.batch_size):
        b = collate(examples[i:i + cfg.batch_size], multiple=max(8, backend.patch_size))
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


def _files_of(data: str, cfg: EvaluateConfig, ingest_cfg: IngestConfig, workdir: Path, progress: bool
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


def check_outputs(out: Path, inputs: list[str]) -> None:
    """Refuse (one line, nothing touched) to write where evaluation would replace what obf did not
    write: `out` (metrics.json), report.md and bpb.csv beside it must be absent or evaluation
    outputs (recognised by their content), samples/ absent, empty or an earlier evaluation's."""
    storage.check_output_dir(out.parent / "samples", "evaluate", inputs)
    for path in (out, out.parent / "report.md", out.parent / "bpb.csv"):
        if not path.exists():
            continue
        content = path.read_bytes() if path.is_file() else b""
        if path == out:
            try:
                ours = {"model", "data", "modalities", "overall"} <= set(json.loads(content))
            except (ValueError, TypeError):
                ours = False
        else:
            ours = content.startswith(_SIGNATURES[path.name])
        if not ours:
            raise DataError(f"{path}: exists and is not an obf evaluate output; remove it or choose another --out")


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def evaluate(model_dir: str, data: str, out: str | Path, params: Params, *, per_file: bool = False,
             provider: str = "auto", precision: str = "fp32", progress: bool = True) -> dict[str, Any]:
    """Score MODEL on DATA; write metrics.json to `out`, and report.md, bpb.csv, samples/ beside it.
    `precision` as for `open_backend` (int8: an ONNX dir's quantised graphs; bf16: a checkpoint)."""
    from obf.backends import open_backend
    from obf.generation import ingest_config_of

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
            per_mod[m] = {"files": len(idx), "bytes": nbytes, "bpb": _ratio(sum(bits[i] for i in idx), nbytes),
                          "network_bpb": _ratio(sum(net[i] for i in idx), nbytes),
                          "baselines": base, "denoise_accuracy": acc, "denoise_bpb": dbpb, "denoise_masked_bytes": masked,
                          "sample": samples[m]}
        storage.mark_output_dir(tmp_samples, "evaluate")
        storage.replace_dir(tmp_samples, samples_dir)
    finally:
        shutil.rmtree(tmp_samples, ignore_errors=True)

    total_bytes = sum(len(f.data) for f in files)
    keys = list(sizes[0])
    overall = {"files": len(files), "bytes": total_bytes, "bpb": _ratio(sum(bits), total_bytes),
               "network_bpb": _ratio(sum(net), total_bytes),
               "baselines": {k: _ratio(8 * sum(s[k] for s in sizes), total_bytes) for k in keys}}
    samples = list(samples.values())
    overall["samples_open_raw"] = _ratio(sum(s["opens_raw"] for s in samples), len(samples))
    overall["samples_open"] = _ratio(sum(s["opens"] for s in samples), len(samples))
    metrics: dict[str, Any] = {"model": str(model_dir), "data": str(data), "split": split,
                               "modalities": per_mod, "overall": overall, "conversions": conversions}
    if per_file:
        metrics["files"] = [{"path": f.path, "modality": f.modality, "bytes": len(f.data),
                             "bpb": _ratio(bits[i], len(f.data)), "network_bpb": _ratio(net[i], len(f.data))}
                            for i, f in enumerate(files)]
    storage.write_bytes_atomic(str(out), (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    storage.write_bytes_atomic(str(out.parent / "report.md"), render_report(metrics).encode())
    storage.write_bytes_atomic(str(out.parent / "bpb.csv"), render_csv(metrics).encode())
    if progress:
        print(render_table(metrics), file=sys.stderr)
    return metrics


# --------------------------------------------------------------------------- conversions


def write_conversions(backend: Any, cases: list[Case], cfg: EvaluateConfig, dest: Path, progress: bool
                      ) -> dict[str, Any]:
    """`obf.fidelity.measure` per conversion, and for the report the first two `gray` pairs and
    the first `ascii` pair: input, target and what the model made, as pictures (and text)."""
    from obf import previews
    from obf.fidelity import measure

    room = backend.max_input_len - PAIRED_TAGS
    long = sum(len(c.input) > room for c in cases)
    if long:  # as training does: a pair whose input the model cannot read is left out, and counted
        print(f"evaluate: {long} pair(s) with inputs over {room} bytes (model.max_input_len) left out",
              file=sys.stderr)
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
            out["ascii"]["examples"] = [{"pair": c.key, "input": f"samples/{name}",
                                         "target": c.target.decode("utf-8", "replace"),
                                         "made": g.decode("utf-8", "replace")}]
    return out


# --------------------------------------------------------------------------- samples


def write_samples(backend: Any, picks: dict[str, EvalFile], cfg: EvaluateConfig, dest: Path) -> dict[str, dict[str, Any]]:
    """Complete one real file per modality and write it, its source and previews into `dest`.

    Each sample keeps the start of its file (`evaluate.sample_prefix_fraction` of it, more when
    the rest would exceed `evaluate.sample_bytes`) and the model makes the rest: up to the size the
    header declares for images, audio and video (see `obf.completion`), up to EOS or
    `sample_bytes` for text and binary. All samples are generated in one batch.

    Beside each: how its generated part compares with the real part it replaces
    (`obf.likeness.compare`), and the bits per byte the model, as generation serves it, gives
    each of the two (`generated_bpb`, `real_bpb`): a part sampled from a calibrated model costs
    about what the real one does; one far cheaper has collapsed into what the model expects."""
    from obf.completion import plan
    from obf.likeness import compare
    from obf.scoring import served_log_probs

    plans = {}
    for m, f in picks.items():
        data = f.data.tobytes()
        keep = max(round(cfg.sample_prefix_fraction * len(data)), len(data) - cfg.sample_bytes)
        plans[m] = plan(data, m, max_bytes=cfg.sample_bytes, prefix_bytes=keep)
    opts = SamplingOptions(max_bytes=cfg.sample_bytes, temperature=cfg.temperature, top_k=cfg.top_k,
                           top_p=cfg.top_p, seed=cfg.seed)
    mods = list(plans)
    gens = generate(backend, [plans[m].keep for m in mods], mods, opts=opts, specs=[plans[m].spec for m in mods])
    reals = [picks[m].data.tobytes()[len(plans[m].keep):len(plans[m].keep) + len(g)] for m, g in zip(mods, gens)]
    lengths = [min(len(g), len(r)) for g, r in zip(gens, reals)]
    files = [(np.frombuffer(plans[m].keep + part[:n], np.uint8), m)
             for m, g, r, n in zip(mods, gens, reals, lengths) for part in (g, r)]
    served, _ = served_log_probs(backend, files, cfg.batch_size, cfg.stride,
                                 learn_until=[len(plans[m].keep) for m in mods for _ in range(2)])
    out = {}
    for j, (m, gen) in enumerate(zip(mods, gens)):
        pl, source, n, k = plans[m], picks[m].data.tobytes(), lengths[j], len(plans[m].keep)
        raw = pl.keep + gen
        data, ext = to_file(raw, m)
        (dest / f"{m}{ext}").write_bytes(data)
        bpb = [-float(served[2 * j + i][k:k + n].sum()) / LN2 / n if n else float("nan") for i in (0, 1)]
        out[m] = {"source": picks[m].path, "prefix_bytes": len(pl.keep), "generated_bytes": len(gen),
                  "file": f"samples/{m}{ext}", "opens_raw": opens(raw, m), "opens": opens(data, m), "note": pl.note,
                  "generated_bpb": bpb[0], "real_bpb": bpb[1], **compare(pl.keep, gen, reals[j]),
                  **_previews(m, data, source, len(pl.keep), ext, dest)}
    return out


def _previews(m: str, sample: bytes, source: bytes, kept: int, ext: str, dest: Path) -> dict[str, Any]:
    """Preview files of one sample and its source (PNG pictures, the source file, text inline)."""
    from obf import previews
    from obf.completion import layout

    def put(name: str, data: bytes) -> str:
        (dest / name).write_bytes(data)
        return f"samples/{name}"

    try:
        if m == "image":
            return {"preview": put("image.png", previews.image_png(sample)),
                    "source_preview": put("image.source.png", previews.image_png(source))}
        if m == "video":
            return {"preview": put("video.png", previews.video_strip_png(sample)),
                    "source_preview": put("video.source.png", previews.video_strip_png(source))}
        if m == "audio":
            lay = layout(sample, m)
            mark = (kept - lay.header) // lay.unit if lay else None
            return {"preview": put("audio.png", previews.waveform_png(sample, mark)),
                    "source_preview": put("audio.source.png", previews.waveform_png(source, mark)),
                    "source_file": put(f"audio.source{ext}", source)}
    except Exception as e:  # a preview is for people; a sample that cannot be drawn is reported, not fatal
        return {"preview_error": f"{type(e).__name__}: {e}"[:200]}
    if m == "text":
        return {"kept_tail": sample[max(0, kept - 400):kept].decode("utf-8", "replace"),
                "generated_text": sample[kept:kept + 2000].decode("utf-8", "replace")}
    return {"generated_hex": sample[kept:kept + 256].hex(" ")}


# --------------------------------------------------------------------------- rendering


def _methods(metrics: dict[str, Any]) -> list[str]:
    """`model` (as served), `network` (without the mixer; older metrics lack it), baselines."""
    return ["model", *(["network"] if "network_bpb" in metrics["overall"] else []), *metrics["overall"]["baselines"]]


def _value(v: dict[str, Any], method: str) -> float:
    return v["bpb"] if method == "model" else v["network_bpb"] if method == "network" else v["baselines"][method]


def _rows(metrics: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    yield from metrics["modalities"].items()
    yield "overall", metrics["overall"]


def render_table(metrics: dict[str, Any]) -> str:
    methods = _methods(metrics)
    head = "| modality | files | bytes | " + " | ".join(f"{m} bpb" for m in methods) + " | denoise acc |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    for name, v in _rows(metrics):
        vals = [_value(v, k) for k in methods]
        best = min(vals)
        cells = [f"**{x:.3f}**" if x == best else f"{x:.3f}" for x in vals]
        acc = v.get("denoise_accuracy")
        acc_cell = f"{acc:.3f}" if acc is not None else ""
        lines.append(f"| {name} | {v['files']} | {v['bytes']:,} | {' | '.join(cells)} | {acc_cell} |")
    return "\n".join(lines)


def _fenced(text: str, lang: str = "") -> str:
    """A markdown code block that no backtick run inside `text` can close."""
    fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    return f"{fence}{lang}\n{text}\n{fence}"


def render_sample(m: str, s: dict[str, Any]) -> list[str]:
    """One sample's section of the report: what was kept and made, and the sample beside its source."""
    parts = [f"### {m}: `{s['source']}`", "",
             f"{s['prefix_bytes']:,} bytes kept, {s['generated_bytes']:,} generated: {s['note']}. "
             f"Opens as generated: {'yes' if s['opens_raw'] else 'no'}; after repair: {'yes' if s['opens'] else 'no'}. "
             f"File: [{s['file']}]({s['file']}).", ""]
    if s.get("compared_bytes"):
        parts += [f"The generated part beside the real part it replaces ({s['compared_bytes']:,} bytes each): "
                  f"{s['generated_bpb']:.2f} bits per byte under the model (real part {s['real_bpb']:.2f}); raw LZMA2 "
                  f"size ratio {s['lzma_ratio']:.2f}; commonest byte {s['top_share']:.0%} of it (real part "
                  f"{s['real_top_share']:.0%}); it adds {s['novelty_ratio']:.2f}x the new information the real part "
                  "adds to the kept part.", ""]
    if "preview" in s:
        parts += ["| source | sample (model-made part included) |", "|---|---|",
                  f"| ![source]({s['source_preview']}) | ![sample]({s['preview']}) |", ""]
    if "source_file" in s:
        parts += [f"Listen: [sample]({s['file']}), [source]({s['source_file']}); the red line marks where the "
                  "generated part starts.", ""]
    if "generated_text" in s:
        parts += ["End of the kept part:", "", _fenced(s["kept_tail"]), "", "Generated:", "",
                  _fenced(s["generated_text"]), ""]
    if "generated_hex" in s:
        parts += ["First generated bytes (hex):", "", _fenced(s["generated_hex"]), ""]
    if "preview_error" in s:
        parts += [f"No preview: {s['preview_error']}", ""]
    return parts


def render_report(metrics: dict[str, Any]) -> str:
    parts = [f"# Evaluation of `{metrics['model']}`", "",
             f"Data: `{metrics['data']}` (split: {metrics['split']}). Bits per byte over whole files; "
             "lower is better, the best per row in bold. `model` is the model as it serves (the network and "
             "its mixer), `network` the network alone; `best` is the smallest compressor output per file.", "",
             render_table(metrics), "", "## Samples", "",
             "Each sample keeps the start of a real file and the model makes the rest: images, audio and video "
             "up to the size their header declares, text and binary until end of file or `evaluate.sample_bytes`.",
             ""]
    for m, v in metrics["modalities"].items():
        parts += render_sample(m, v["sample"])
    if metrics.get("conversions"):
        parts += render_conversions(metrics["conversions"])
    return "\n".join(parts).rstrip() + "\n"


def render_conversions(conv: dict[str, Any]) -> list[str]:
    """The conversions table and examples of the report."""
    parts = ["## Conversions", "",
             "`paired` pairs of the split, per conversion (`obf.conversions`): the share of targets the model makes "
             "exactly (greedy), of target bytes right where they belong (generated, and teacher forced), and the "
             "target's bits per byte with its input against scored alone.", "",
             "| conversion | pairs | exact | bytes right (generated) | bytes right (teacher forced) | bpb with input "
             "| bpb alone | pixels exact | pixel error |", "|---|---|---|---|---|---|---|---|---|"]
    for name, v in conv.items():
        px = (f"{v['pixels_exact']:.1%} | {v['pixel_mean_error']:.1f}" if "pixels_exact" in v else " | ")
        parts.append(f"| {name} | {v['pairs']} | {v['exact']:.1%} | {v['byte_accuracy']['generated']:.1%} | "
                     f"{v['byte_accuracy']['teacher_forced']:.1%} | {v['bpb']['with_input']:.3f} | "
                     f"{v['bpb']['without_input']:.3f} | {px} |")
    parts.append("")
    for ex in conv.get("gray", {}).get("examples", []):
        cells = [f"![{k}]({ex[k]})" if ex[k].startswith("samples/") else ex[k] for k in ("input", "target", "made")]
        parts += [f"`gray` of `{ex['pair']}`:", "", "| input | target | made by the model |", "|---|---|---|",
                  "| " + " | ".join(cells) + " |", ""]
    for ex in conv.get("ascii", {}).get("examples", []):
        parts += [f"`ascii` of `{ex['pair']}`: ![input]({ex['input']})", "", "Target:", "", _fenced(ex["target"]), "",
                  "Made by the model:", "", _fenced(ex["made"]), ""]
    return parts


def render_csv(metrics: dict[str, Any]) -> str:
    """One row per (modality, method) for `dvc plots show` bar charts."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["label", "modality", "method", "bpb"])
    for name, v in _rows(metrics):
        for method in _methods(metrics):
            w.writerow([f"{name} / {method}", name, method, f"{_value(v, method):.6f}"])
    return out.getvalue()
