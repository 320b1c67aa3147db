"""`train-flow`: ingest -> train -> evaluate -> export -> publish, on any storage URL.

Each task calls one `obf.stages` function; storage-facing tasks retry with backoff. The flow
publishes a versioned ONNX model to `<registry>/<name>/<version>/`, and leaves a table artifact
of the per-modality metrics and the markdown report in the Prefect UI.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from obf import stages
from obf.config import load_params
from obf.registry import publish

STORAGE_RETRIES = dict(retries=3, retry_delay_seconds=[2, 10, 30])


@task(name="ingest", **STORAGE_RETRIES)
def ingest_task(source: str, out_dir: str, params_path: str | None, overrides: list[str]) -> dict[str, Any]:
    return stages.ingest(source, out_dir, load_params(params_path, overrides), progress=False)


@task(name="train")
def train_task(data_dir: str, model_dir: str, params_path: str | None, overrides: list[str]) -> dict[str, Any]:
    return stages.train(data_dir, model_dir, load_params(params_path, overrides), progress=False,
                        live_dir=str(Path(model_dir).parent / "dvclive"))


@task(name="evaluate")
def evaluate_task(model_dir: str, data_dir: str, out: str, params_path: str | None, overrides: list[str]) -> dict[str, Any]:
    return stages.evaluate(model_dir, data_dir, out, load_params(params_path, overrides), progress=False)


@task(name="export")
def export_task(model_dir: str, onnx_dir: str, data_dir: str, params_path: str | None, overrides: list[str]
                ) -> dict[str, Any]:
    return stages.export(model_dir, onnx_dir, load_params(params_path, overrides), data=data_dir, progress=False)


@task(name="publish", **STORAGE_RETRIES)
def publish_task(onnx_dir: str, registry: str, name: str) -> dict[str, Any]:
    return publish(onnx_dir, registry, name)


def metrics_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m, v in [*metrics["modalities"].items(), ("overall", metrics["overall"])]:
        rows.append({"modality": m, "files": v["files"], "bytes": v["bytes"], "model_bpb": round(v["bpb"], 4),
                     **{f"{k}_bpb": round(b, 4) for k, b in v["baselines"].items()},
                     "denoise_accuracy": round(v.get("denoise_accuracy", float("nan")), 4)})
    return rows


@flow(name="train-flow", log_prints=True)
def train_flow(source: str, registry: str, name: str = "obf", params: str | None = "params.yaml",
               overrides: list[str] | None = None, workdir: str | None = None) -> dict[str, Any]:
    """Train a model on the files at `source` and publish it to `registry` as `name`.

    `params`: a params file (a path that does not exist fails the run before any work), or None /
    "none" for the built-in defaults; `overrides` apply on top, as `--set` does."""
    log = get_run_logger()
    overrides = list(overrides or [])
    params_path = None if params is None or params.lower() == "none" else params
    load_params(params_path, overrides)  # fail now, not after ingest, on a missing file or bad value
    log.info("params: %s, overrides: %s", params_path or "built-in defaults", overrides or "none")
    work = Path(workdir or tempfile.mkdtemp(prefix="obf-train-flow-"))
    data, model, onnx = str(work / "dataset"), str(work / "model"), str(work / "onnx")
    manifest = ingest_task(source, data, params_path, overrides)
    log.info("ingested %d files (%d bytes), %d rejected", manifest["files"], manifest["bytes"], len(manifest["rejected"]))
    summary = train_task(data, model, params_path, overrides)
    log.info("trained %d steps, %.0f target bytes/s", summary["steps"], summary["target_bytes_per_s"])
    metrics = evaluate_task(model, data, str(work / "eval" / "metrics.json"), params_path, overrides)
    export_info = export_task(model, onnx, data, params_path, overrides)
    published = publish_task(onnx, registry, name)
    create_table_artifact(metrics_table(metrics), key="obf-metrics", description=f"{name}/{published['version']}")
    create_markdown_artifact((work / "eval" / "report.md").read_text(), key="obf-report",
                             description=f"Evaluation of {name}/{published['version']}")
    log.info("published %s/%s to %s (parity %.1e)", name, published["version"], registry,
             export_info["parity"]["max_abs_diff"])
    return {"name": name, "version": published["version"], "registry": registry, "metrics": metrics["overall"],
            "workdir": str(work)}
