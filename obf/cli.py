"""The `obf` command: a thin argparse layer over `obf.stages`.

Every stage command takes `--params PATH` and repeatable `--set section.key=value`. A user-facing
problem (`ObfError`) prints one line and exits 1; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from obf import __version__
from obf.config import Params, load_params
from obf.errors import ObfError


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", metavar="PATH",
                   help="params file (default: params.yaml; missing default file = built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one param, repeatable (like `dvc exp run -S`)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")


def _params(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.overrides)


def cmd_ingest(args: argparse.Namespace) -> int:
    from obf import stages

    manifest = stages.ingest(args.source, args.out, _params(args), progress=not args.quiet)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="obf", description="OmniByteFormer: a byte-level encoder-decoder for any file.")
    parser.add_argument("--version", action="version", version=f"obf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("ingest", help="raw files (folder or fsspec URL) -> byte dataset",
                       description="Read every file under SOURCE once, sniff its modality, optionally "
                                   "canonicalise media, dedupe by sha256, assign a content-hash split and "
                                   "write memmap shards, index.jsonl and manifest.json to DIR.")
    p.add_argument("source", metavar="SOURCE", help="local folder, file, or fsspec URL (s3://bucket/prefix)")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset dir to (re)create")
    _add_params(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("train", help="byte dataset -> model dir",
                       description="Train the encoder-decoder on an ingested dataset (continue / denoise / "
                                   "paired objectives mixed by train.task_weights). Writes model.safetensors, "
                                   "config.json and a resumable train_state.pt to MODEL_DIR, and DVCLive metrics. "
                                   "For several processes: torchrun --nproc_per_node N -m obf.train DATA --out DIR.")
    p.add_argument("data", metavar="DATA", help="dataset dir written by `obf ingest`")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model dir to write")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/train_state.pt (exact)")
    p.add_argument("--live", metavar="DIR", default=None, help="DVCLive dir (default: MODEL_DIR/dvclive)")
    p.add_argument("--sample-log", metavar="PREFIX", default=None,
                   help="debug: append the sample indices each rank trains on to PREFIX.rank<R> (JSON lines)")
    _add_params(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
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
