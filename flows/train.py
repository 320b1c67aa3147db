"""`train-flow`: ingest -> train -> evaluate -> export -> publish, on any storage URL.

Each task calls one `obf.stages` function; storage-facing tasks retry with backoff. The flow
publishes a versioned ONNX model to `<registry>/<name>/<version>/` with its model card
(`obf.provenance.card`), and leaves a table artifact of the per-modality metrics and the markdown
report in the Prefect UI.

The work of a run is kept where it is worth keeping: the exported model and its evaluation are a
build, persisted at `<registry>/_builds/<name>/<key>/` and keyed by what made them (the dataset's
manifest sha256, the `model`, `train`, `evaluate` and `export` settings, the code version). A run
whose build exists (say, a rerun after a publish that failed) publishes it without training again.
The local work dir is a temp dir removed when the flow ends, unless `keep_workdir` (or a `workdir`
of the user's, which obf never deletes).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.retries import STORAGE_RETRIES
from obf import provenance, stages
from obf.core import storage
from obf.core.params import Params, load_params
from obf.data.dataset import dataset_sha256
from obf.registry import check_name, publish

BUILD = "build.json"  # written last: a build is complete when it is there



@task(name="ingest", **STORAGE_RETRIES)
def ingest_task(source: str, out_dir: str, params: Params, dask_address: str | None = None) -> dict[str, Any]:
    return stages.ingest(source, out_dir, params, progress=False, dask=dask_address)


@task(name="train")
def train_task(data_dir: str, model_dir: str, params: Params) -> dict[str, Any]:
    return stages.train(data_dir, model_dir, params, progress=False, live_dir=str(Path(model_dir).parent / "dvclive"))


@task(name="evaluate")
def evaluate_task(model_dir: str, data_dir: str, out: str, params: Params) -> dict[str, Any]:
    return stages.evaluate(model_dir, data_dir, out, params, progress=False)


@task(name="export")
def export_task(model_dir: str, onnx_dir: str, data_dir: str, params: Params) -> dict[str, Any]:
    return stages.export(model_dir, onnx_dir, params, data=data_dir, progress=False)


# No retries: a publish that failed after taking its version number would take the next one on a
# retry, publishing the same model twice. A rerun of the flow publishes the kept build instead.
@task(name="publish")
def publish_task(onnx_dir: str, registry: str, name: str, card: dict[str, Any] | None = None) -> dict[str, Any]:
    return publish(onnx_dir, registry, name, card=card)


def build_url(registry: str, name: str, key: str) -> str:
    return storage.join(registry, f"_builds/{name}/{key}")


@task(name="find-build", **STORAGE_RETRIES)
def find_build_task(url: str) -> dict[str, Any] | None:
    """The record of a complete build at `url`, or None."""
    try:
        blob = storage.read_bytes(storage.join(url, BUILD))
    except storage.NotFoundError:
        return None
    try:
        return json.loads(blob)
    except ValueError:
        raise storage.StorageError(
            f"{storage.join(url, BUILD)}: not a build record (corrupt JSON); remove it to train again"
        ) from None


@task(name="save-build", **STORAGE_RETRIES)
def save_build_task(url: str, parts: dict[str, str], record: dict[str, Any]) -> dict[str, Any]:
    """Upload the exported model and the evaluation under an attempt of their own (one PUT per
    file), then create the record that says the build is whole, naming each file's sha256. The
    record is a conditional create: when two runs of the same key race, the first whole build
    wins and is what both publish (their files never mix)."""
    attempt = uuid.uuid4().hex[:12]
    files: dict[str, str] = {}
    for sub, local in parts.items():
        for p in sorted(Path(local).rglob("*")):
            if p.is_file():
                key = f"{attempt}/{sub}/{p.relative_to(local).as_posix()}"
                data = p.read_bytes()
                storage.write_bytes_atomic(storage.join(url, key), data)
                files[key] = hashlib.sha256(data).hexdigest()
    record = {**record, "attempt": attempt, "files": files}
    try:
        storage.write_if(
            storage.join(url, BUILD), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), etag=None
        )
    except storage.ConflictError:  # another run of the same key finished first: use its build
        theirs = find_build_task.fn(url)
        if theirs is None:
            raise
        if theirs.get("attempt") != attempt:
            return theirs
    return record


@task(name="fetch-build", **STORAGE_RETRIES)
def fetch_build_task(url: str, record: dict[str, Any], sub: str, dest: str) -> None:
    """Download one part (`onnx` or `eval`) of a build into the new dir `dest`, each file checked
    against the sha256 its record names."""
    prefix = f"{record['attempt']}/{sub}/"
    for key, sha in sorted(record["files"].items()):
        if not key.startswith(prefix):
            continue
        data = storage.read_bytes(storage.join(url, key))
        if hashlib.sha256(data).hexdigest() != sha:
            raise storage.StorageError(f"{storage.join(url, key)}: does not match its sha256 in {BUILD}")
        target = Path(dest) / storage.safe_key(key[len(prefix) :])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def metrics_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m, v in [*metrics["modalities"].items(), ("overall", metrics["overall"])]:
        rows.append(
            {
                "modality": m,
                "files": v["files"],
                "bytes": v["bytes"],
                "model_bpb": round(v["bpb"], 4),
                **{f"{k}_bpb": round(b, 4) for k, b in v["baselines"].items()},
                "denoise_accuracy": round(v.get("denoise_accuracy", float("nan")), 4),
            }
        )
    return rows


@flow(name="train-flow", log_prints=True)
def train_flow(
    source: str,
    registry: str,
    name: str = "obf",
    params: str | None = "params.yaml",
    overrides: list[str] | None = None,
    workdir: str | None = None,
    keep_workdir: bool = False,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Train a model on the files at `source` and publish it to `registry` as `name`.

    `params`: a params file (a path that does not exist fails the run before any work), or None /
    "none" for the built-in defaults; `overrides` apply on top, as `--set` does. The trained,
    evaluated and exported model is kept as a build keyed by its inputs (see the module doc);
    a run that finds its build publishes it without training. `workdir`: a local folder for the
    run's files (kept); without it, a temp dir removed at the end unless `keep_workdir`.
    `dask_address`: a Dask scheduler to spread the ingest over (`obf ingest --dask`); its workers
    must reach `source` and the work dir (a shared filesystem or a LocalCluster on this host)."""
    log = get_run_logger()
    overrides = list(overrides or [])
    params_path = None if params is None or params.lower() == "none" else params
    # read once: every stage and the build key take these settings, so an edit to the file while the
    # run goes on changes nothing in it (and a missing file or a bad value fails now, not after ingest)
    resolved = load_params(params_path, overrides)
    check_name("name", name)  # and a name publish would refuse, or one that leads out of the registry
    for url in (source, registry):
        storage.check_url(url)
    if dask_address:
        from obf.data.ingest_dask import check_address

        check_address(dask_address)
    log.info("params: %s, overrides: %s", params_path or "built-in defaults", overrides or "none")
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="obf-train-flow-"))
    keep = keep_workdir or workdir is not None
    try:
        out = _train_and_publish(source, registry, name, resolved, work, log, dask_address)
        return {**out, "workdir": str(work) if keep else None}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _train_and_publish(
    source: str,
    registry: str,
    name: str,
    resolved: Params,
    work: Path,
    log: Any,
    dask_address: str | None,
) -> dict[str, Any]:
    data, model, onnx, eval_dir = str(work / "dataset"), str(work / "model"), str(work / "onnx"), work / "eval"
    manifest = ingest_task(source, data, resolved, dask_address)
    log.info(
        "ingested %d files (%d bytes), %d rejected", manifest["files"], manifest["bytes"], len(manifest["rejected"])
    )
    data_sha = dataset_sha256(data)
    key = provenance.build_key(data_sha, resolved)
    url = build_url(registry, name, key)
    record = find_build_task(url)
    trained = record is None
    if record is None:
        summary = train_task(data, model, resolved)
        log.info("trained %d steps, %.0f target bytes/s", summary["steps"], summary["target_bytes_per_s"])
        metrics = evaluate_task(model, data, str(eval_dir / "metrics.json"), resolved)
        export_info = export_task(model, onnx, data, resolved)
        card = provenance.card(
            data_sha,
            resolved,
            metrics,
            manifest_sha256=hashlib.sha256((Path(data) / "manifest.json").read_bytes()).hexdigest(),
        )
        record = save_build_task(
            url,
            {"onnx": onnx, "eval": str(eval_dir)},
            {"key": key, "card": card, "train": summary, "parity_max_abs_diff": export_info["parity"]["max_abs_diff"]},
        )
    else:
        log.info("build %s found at %s: publishing it without training again", key, url)
    # publish exactly the build's files, fetched into a fresh dir (never a kept workdir's old files)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=work) as built:
        onnx, eval_dir = str(Path(built) / "onnx"), Path(built) / "eval"
        fetch_build_task(url, record, "onnx", onnx)
        fetch_build_task(url, record, "eval", str(eval_dir))
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        published = publish_task(onnx, registry, name, record["card"])
        create_table_artifact(metrics_table(metrics), key="obf-metrics", description=f"{name}/{published['version']}")
        create_markdown_artifact(
            (eval_dir / "report.md").read_text(),
            key="obf-report",
            description=f"Evaluation of {name}/{published['version']}",
        )
    log.info("published %s/%s to %s (parity %.1e)", name, published["version"], registry, record["parity_max_abs_diff"])
    return {
        "name": name,
        "version": published["version"],
        "registry": registry,
        "metrics": metrics["overall"],
        "build": key,
        "trained": trained,
    }
