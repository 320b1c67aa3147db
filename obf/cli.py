"""The `obf` command: a thin argparse layer over `obf.stages`.

Every stage command takes `--params PATH` and repeatable `--set section.key=value`. A user-facing
problem (`ObfError`) prints one line and exits 1; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence

from obf import __version__
from obf.core.config import GenerateSettings
from obf.core.errors import ObfError
from obf.core.params import Params, load_params
from obf.core.vocab import MODALITIES


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", metavar="PATH",
                   help="params file (default: params.yaml; a missing file is an error; `none` = the built-in "
                        "defaults, which differ from the project's params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one param, repeatable (like `dvc exp run -S`)")
    _add_verbosity(p)


def _add_verbosity(p: argparse.ArgumentParser, hidden: bool = False) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help=argparse.SUPPRESS if hidden else "warnings and errors only: no progress bars or summaries")
    p.add_argument("-v", "--verbose", action="store_true",
                   help=argparse.SUPPRESS if hidden else "debug messages too")


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Send the library's log records (the `obf` logger) to stderr as plain lines: summaries at
    INFO, what was left out at WARNING; `-q` keeps warnings only, `-v` adds DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("obf")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _params(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.overrides)


def cmd_ingest(args: argparse.Namespace) -> int:
    from obf import stages

    manifest = stages.ingest(args.source, args.out, _params(args), progress=not args.quiet, dask=args.dask)
    if not args.quiet:
        mods = ", ".join(f"{m} {v['files']}" for m, v in manifest["by_modality"].items() if v["files"])
        print(f"{args.out}: {manifest['files']} files, {manifest['bytes']} bytes ({mods}); "
              f"{len(manifest['rejected'])} rejected")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from obf import stages

    stages.train(args.data, args.out, _params(args), resume=args.resume, live_dir=args.live,
                 progress=not args.quiet, sample_log=args.sample_log)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from obf import stages

    stages.evaluate(args.model, args.data, args.out, _params(args), per_file=args.per_file,
                    provider=args.provider, precision=args.precision, progress=not args.quiet)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from obf import stages

    stages.export(args.model, args.out, _params(args), data=args.data, progress=not args.quiet)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from obf import stages

    params = _params(args)
    status = stages.generate(args.model, args.inputs, args.out, params, generate_settings(params.generate, args),
                             provider=args.provider, batch_size=args.batch_size, max_input_bytes=args.max_input_bytes,
                             overwrite=args.overwrite, progress=not args.quiet)
    failed = [s for s in status if s["status"] != "ok"]
    for s in status:
        if s["status"] == "ok":
            if not args.quiet:
                print(f"{s['input']} -> {s['output']} ({s['modality']}, {s['bytes']} bytes: {s['kept']} kept, "
                      f"{s['generated']} generated; {s['note']})")
        else:
            print(f"obf generate: {s['input']}: {s['error']}", file=sys.stderr)
    if failed:
        print(f"obf generate: {len(failed)} of {len(status)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def generate_settings(base: GenerateSettings, args: argparse.Namespace) -> GenerateSettings:
    """`base` (params.yaml's `generate` section) with the flags given on the command line."""
    given = {k: getattr(args, k) for k in ("task", "target_modality", "max_bytes", "prefix_bytes", "prefix_fraction",
                                           "temperature", "top_k", "top_p", "min_p", "share_guard",
                                           "match_surprise", "seed",
                                           "precision")}
    given = {k: v for k, v in given.items() if v is not None}
    if "prefix_bytes" in given or "prefix_fraction" in given:  # one flag replaces the other's setting
        given = {"prefix_bytes": None, "prefix_fraction": None, **given}
    if given.get("task") == "continue":  # params.yaml's paired target modality does not apply
        given.setdefault("target_modality", None)
    settings = dataclasses.replace(base, **given)
    settings.validate()
    return settings


def cmd_registry(args: argparse.Namespace) -> int:
    import json

    from obf import registry

    if args.action == "list":
        versions = registry.list_versions(args.registry, args.name)
        if not versions:  # a mistyped registry or name would otherwise print nothing and succeed
            raise registry.RegistryError(f"no published versions of {args.name!r} in {args.registry}")
        for version in versions:
            m = registry.describe(args.registry, args.name, version)
            ev = m.get("card", {}).get("evaluation", {})
            figures = (f"bpb {ev['bpb']:.3f} (best compressor {ev['best_compressor_bpb']:.3f}, {ev['split']} split)"
                       if ev.get("bpb") is not None and ev.get("best_compressor_bpb") is not None else "no model card")
            print(f"{version}  {m.get('published', '?')}  {figures}")
        return 0
    print(json.dumps(registry.describe(args.registry, args.name, args.version), indent=2, sort_keys=True))
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from obf.generate.sampling import DECODING

    parser = argparse.ArgumentParser(
        prog="obf", description="OmniByteFormer: a byte-level encoder-decoder for any file."
    )
    parser.add_argument("--version", action="version", version=f"obf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "ingest",
        help="raw files (folder or fsspec URL) -> byte dataset",
        description="Hash every file under SOURCE, sniff its modality, optionally "
        "canonicalise media, dedupe by sha256, assign a content-hash split and "
        "write memmap shards, index.jsonl and manifest.json to DEST (a dir or fsspec URL).",
    )
    p.add_argument("source", metavar="SOURCE", help="local folder, file, or fsspec URL (s3://bucket/prefix)")
    p.add_argument(
        "--out",
        required=True,
        metavar="DEST",
        help="dataset to (re)create: a local dir or an fsspec URL (s3://bucket/ds)",
    )
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="spread the work over the Dask cluster whose scheduler is at "
        "ADDRESS (tcp://host:8786): its workers read, canonicalise, hash and write the shards to DEST, "
        "which they must reach (a URL, or a shared filesystem)",
    )
    _add_params(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "train",
        help="byte dataset -> model dir",
        description="Train the encoder-decoder on an ingested dataset (continue / denoise / "
        "paired objectives mixed by train.task_weights). Writes model.safetensors, "
        "config.json and a resumable train_state.pt to MODEL_DIR, and DVCLive metrics. "
        "For several processes: torchrun --nproc_per_node N -m obf train DATA --out DIR.",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="dataset written by `obf ingest`: a dir, or its URL (s3://bucket/ds; "
        "read through a local cache, $OBF_DATA_CACHE, verified by sha256)",
    )
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model dir to write")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/train_state.pt (exact)")
    p.add_argument("--live", metavar="DIR", default=None, help="DVCLive dir (default: MODEL_DIR/dvclive)")
    p.add_argument(
        "--sample-log",
        metavar="PREFIX",
        default=None,
        help="debug: append the sample indices each rank trains on to PREFIX.rank<R> (JSON lines)",
    )
    _add_params(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="per-modality bits per byte vs the classical compressors, reconstruction, samples",
        description="Score MODEL (a training checkpoint dir or an exported ONNX dir) on DATA (an "
        "ingested dataset dir, split evaluate.split, or any folder/URL of files, ingested "
        "on the fly) beside the classical compressors (gzip, bz2, xz, zstd, PPMd, brotli, ...; "
        "`best` is the smallest per file). Writes metrics.json to --out and details.json, report.md, "
        "bpb.csv and samples/ beside it.",
    )
    p.add_argument("model", metavar="MODEL", help="model dir (obf train) or ONNX dir (obf export)")
    p.add_argument("data", metavar="DATA", help="dataset dir, folder or fsspec URL of files")
    p.add_argument("--out", required=True, metavar="METRICS_JSON", help="where to write metrics.json")
    p.add_argument("--per-file", action="store_true",
                   help="add the per-file rows to metrics.json (details.json beside it always has them)")
    p.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto", help="device / ONNX Runtime provider")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8", "fp16"),
        default="fp32",
        help="fp32 (default); int8: an ONNX dir's quantised graphs (export.int8); fp16: an ONNX dir's "
        "fp16 graphs (export.fp16, for CUDA); bf16: a checkpoint on torch",
    )
    _add_params(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="model dir -> ONNX dir (encoder, decoder with KV cache, obf.json)",
        description="Export a trained model to encoder.onnx + decoder.onnx with dynamic batch and "
        "lengths and an explicit KV cache; checks parity with the torch model and "
        "fails, leaving nothing behind, when it exceeds export.max_abs_diff.",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="model dir written by `obf train`")
    p.add_argument("--out", required=True, metavar="ONNX_DIR", help="ONNX dir to (re)create")
    p.add_argument(
        "--data",
        default=None,
        metavar="DATA_DIR",
        help="dataset (obf ingest) whose validation files the parity check and the int8 / fp16 reports "
        "also run on (default: random bytes only)",
    )
    _add_params(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "generate",
        help="input files -> generated files that open",
        description="For each INPUT (path or fsspec URL), generate with the model (ONNX dir on ONNX "
        "Runtime, or a training checkpoint on torch) and write a valid file of its "
        "modality to DIR as <input name><output extension> (a.png -> a.png.bmp), so "
        "distinct inputs never share an output. continue on an image, audio or video "
        "file: with --prefix-bytes/--prefix-fraction, keep that start of the canonical "
        "BMP/WAV/Y4M and generate the rest of the file its header declares (BMP rows are "
        "stored bottom-up: the kept start is the bottom of the picture); without, extend "
        "the whole file by about --max-bytes (whole rows, sample frames or frames) with "
        "its header updated. Text and binary: until end of file or --max-bytes. Inputs "
        "are batched; a bad input is reported and the others still complete; exit code 1 "
        "if any input failed.",
    )
    p.add_argument("model", metavar="MODEL", help="ONNX dir (obf export) or model dir (obf train)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files (paths or URLs)")
    p.add_argument("--out", required=True, metavar="DIR", help="output dir or URL prefix")
    p.add_argument(
        "--task",
        choices=("continue", "paired"),
        default=None,
        help="continue: the input's start followed by what the model makes; paired: the input's paired target "
        "(default: generate.task in --params, continue)",
    )
    p.add_argument("--target-modality", choices=MODALITIES, default=None,
                   help="modality of the paired target (default: the input's)")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument(
        "--prefix-bytes",
        type=int,
        default=None,
        metavar="N",
        help="continue: keep the first N bytes of the canonical input (at least its header; whole "
        "rows / sample frames) and generate the rest",
    )
    keep.add_argument(
        "--prefix-fraction",
        type=float,
        default=None,
        metavar="F",
        help="continue: keep this fraction, in [0, 1), of the canonical input (of an image, audio or "
        "video file: of what follows its header, so 0.5 keeps half the rows) and generate the rest",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=None,
        help="text/binary and paired: bytes to generate at most; continue on a whole image/audio/video: "
        "about this many more, rounded to whole rows/sample frames/frames, at least one "
        "(default: generate.max_bytes, 1024)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file that obf did not write (default: refuse)",
    )
    cont, pair = DECODING["continue"], DECODING["paired"]
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"0 = greedy (default: {cont['temperature']:g} for continue, chosen by measurement; "
        f"{pair['temperature']:g} for paired)",
    )
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely bytes (0 = off, the default)")
    p.add_argument(
        "--top-p",
        type=float,
        default=None,
        help=f"nucleus sampling mass (1 = off; default {cont['top_p']:g} for continue, {pair['top_p']:g} for paired)",
    )
    p.add_argument(
        "--min-p",
        type=float,
        default=None,
        help="never sample a byte less than this fraction as likely as the likeliest one, after the temperature "
        f"(0 = off; default {cont['min_p']:g} for continue, chosen by measurement; {pair['min_p']:g} for paired)",
    )
    p.add_argument(
        "--share-guard",
        type=float,
        default=None,
        help="a byte an output writes more than 0.1 above its share of the input's end loses this many logits per "
        f"unit of excess (0 = off; default {cont['share_guard']:g} for continue, chosen by measurement; "
        f"{pair['share_guard']:g} for paired)",
    )
    p.add_argument(
        "--match-surprise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a thermostat per output: its temperature moves to keep what it writes about as surprising to the "
        "model as the end of the input was (default: on for continue, chosen by measurement; off for paired; "
        "no effect when greedy)",
    )
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: generate.seed, 0)")
    p.add_argument(
        "--provider",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="ONNX Runtime provider / torch device (auto = CUDA when it works)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8", "fp16"),
        default=None,
        help="fp32 (default: generate.precision); int8: the quantised graphs of an ONNX dir exported with export.int8 "
        "(CPU); fp16: its fp16 graphs (export.fp16; CUDA, cache kept on the GPU); bf16: a "
        "checkpoint dir on torch",
    )
    p.add_argument("--batch-size", type=_positive_int, default=8, help="inputs generated together (default 8)")
    p.add_argument(
        "--max-input-bytes", type=_positive_int, default=None, help="size cap per input (default ingest.max_file_bytes)"
    )
    _add_params(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "registry",
        help="the versions of a published model and their model cards",
        description="`list`: the versions of NAME in REGISTRY (any fsspec URL), each with its "
        "publication date and headline figures. `show`: one version's manifest as JSON: "
        "its files (sha256, size) and its model card (the dataset's manifest sha256, the "
        "full settings, obf's version, code hash and git commit, the evaluation's figures).",
    )
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("registry", metavar="REGISTRY", help="registry URL (a folder, s3://bucket/models, ...)")
    p.add_argument("name", metavar="NAME", help="model name in the registry")
    p.add_argument("--version", default="latest", help="show: the version (default latest)")
    _add_verbosity(p, hidden=True)
    p.set_defaults(func=cmd_registry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    configure_logging(args.quiet, args.verbose)
    try:
        return func(args)
    except ObfError as e:
        print(f"obf {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"obf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
