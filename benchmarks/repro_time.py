"""How long the default pipeline takes on a host class, stage by stage, and what model it makes there.

Runs the stages of `dvc.yaml` (ingest, train, evaluate, export), their commands as written there,
into a scratch folder, times each, and prints the model's validation figures beside the committed
default's (`data/eval/metrics.json`, the bf16 host's). DVC itself is left out: its own overhead is
seconds, and a scratch folder leaves the repository's outputs untouched.

`--stand-in fp32` runs every stage as a CPU without bf16 would: on one core (`taskset -c 0`, one
thread), with AVX2 kernels only (`ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`,
`MKL_ENABLE_INSTRUCTIONS=AVX2`) and `train.precision=fp32`, so `train.fp32_minutes` applies. The
env vars alone do not slow this host's fp32 steps (README, Training time); the single core does.

    python benchmarks/repro_time.py [--stand-in fp32] [--set train.fp32_minutes=5 ...] [--keep DIR]

Saves benchmarks/results/repro_time_<host|fp32_stand_in>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OMP_NUM_THREADS": "1"}


def stage_commands(work: Path, sets: list[str]) -> dict[str, list[str]]:
    """dvc.yaml's stage commands, their outputs moved into `work` (the raw corpus stays where it
    is); `sets` (`section.key=value`) go to the stages that read their section."""
    import yaml

    moved = {"data/dataset": work / "dataset", "data/model": work / "model", "dvclive": work / "dvclive",
             "data/eval/metrics.json": work / "eval/metrics.json", "data/onnx": work / "onnx",
             "data/raw": ROOT / "data/raw"}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        words = [str(moved.get(w, w)) for w in shlex.split(stage["cmd"])]
        assert words[0] == "obf", f"dvc.yaml stage {name}: {stage['cmd']!r} is not an obf command"
        sections = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])]
        out[name] = [sys.executable, "-m", "obf", *words[1:],
                     *(f"--set={x}" for x in sets if x.split(".", 1)[0] in sections)]
    return out


def run_stages(work: Path, sets: list[str], stand_in: bool) -> dict[str, float]:
    """Each stage's wall-clock seconds; a failing stage stops the run with its stderr."""
    env = {**os.environ, **(AVX2_ONLY if stand_in else {})}
    pin = ["taskset", "-c", "0"] if stand_in and shutil.which("taskset") else []
    seconds: dict[str, float] = {}
    for name, cmd in stage_commands(work, sets).items():
        t = time.perf_counter()
        r = subprocess.run([*pin, *cmd, "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds[name] = time.perf_counter() - t
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"{name} failed (exit {r.returncode}): {last}")
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    return seconds


def figures(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Served and network-alone bits per byte per modality and overall, from a metrics.json."""
    rows = {**metrics["modalities"], "overall": metrics["overall"]}
    return {k: {"model": v["bpb"], "network": v["network_bpb"], "best": v["baselines"]["best"]}
            for k, v in rows.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stand-in", choices=["fp32"], help="run as a CPU without bf16 would (one core, AVX2, fp32)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a param")
    ap.add_argument("--keep", help="keep the scratch folder's outputs here")
    args = ap.parse_args()
    sets = list(args.set) + (["train.precision=fp32"] if args.stand_in else [])

    with tempfile.TemporaryDirectory(prefix="obf-repro-time-") as tmp:
        work = Path(tmp)
        seconds = run_stages(work, sets, bool(args.stand_in))
        summary = json.loads((work / "model/train_summary.json").read_text())
        metrics = json.loads((work / "eval/metrics.json").read_text())
        ours, conversions = figures(metrics), metrics.get("conversions", {})
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
    default = figures(json.loads((ROOT / "data/eval/metrics.json").read_text()))
    total = sum(seconds.values())
    print(f"\n{' + '.join(f'{k} {v / 60:.1f}' for k, v in seconds.items())} = {total / 60:.1f} min; "
          f"{summary['steps']} steps in {summary['seconds']:.0f} s ({summary['precision']}, "
          f"budget {summary.get('budget_minutes', 0):g} min), mixer fit {summary['mixer_fit_seconds']:.0f} s\n")
    print("| modality | model bpb | default model bpb | network bpb | default network bpb | best compressor bpb |\n"
          "|---|---:|---:|---:|---:|---:|")
    for k, v in ours.items():
        d = default.get(k, {})
        print(f"| {k} | {v['model']:.3f} | {d.get('model', float('nan')):.3f} | {v['network']:.3f} "
              f"| {d.get('network', float('nan')):.3f} | {v['best']:.3f} |")
    save(
        f"repro_time_{args.stand_in}_stand_in" if args.stand_in else "repro_time_host",
        {
            "stand_in": args.stand_in,
            "sets": sets,
            "seconds": seconds,
            "total_minutes": total / 60,
            "train": {k: summary.get(k) for k in ("steps", "seconds", "mixer_fit_seconds", "target_bytes_per_s",
                                                   "precision", "budget_minutes")},
            "validation": ours,
            "default_validation": default,
            "conversions_exact": {k: v.get("exact") for k, v in conversions.items() if isinstance(v, dict)},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
