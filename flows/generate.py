"""`batch-generate`: every new object under `input_url` -> a generated file under `output_url`.

Runs ONNX Runtime (never torch) with a model resolved from the registry. Idempotent: an input
already done for the same model version and the same generation settings (task, target
modality, prefix, max_bytes, seed, precision, temperature, top_k, top_p, min_p, share_guard,
match_surprise; same key, size and ETag, or content sha256 for local files) is skipped, so a
second run processes nothing and a rerun after a crash fills in only what is missing; a run with other settings
generates every input again (its outputs replace the earlier ones, and each state record says
which settings made its output).

Outputs keep the input's whole relative key and add the extension of their modality
(`a/b.png` -> `a/b.png.bmp`, `obf.generate.files.output_key`), so distinct inputs never share an
output, and an output prefix belongs to one input prefix (`_obf.json`, `own_output_task`), so
nothing obf did not write is written over; one PUT per object; the state of each input is written
after its output. Overlapping runs on one output prefix generate each input once: a run works on
an input only under its claim in `_claims/`, taken with S3 conditional writes (`try_claim`). Every run writes
`_runs/<flow-run-id>.json` listing each input with its status, output and error, and ends Failed
(after all other inputs are written) when any input failed.

Concurrency comes from the task runner: a thread pool of `DEFAULT_WORKERS` threads (or
`PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS` when set), or `prefect_dask.DaskTaskRunner` to spread
batches over a Dask cluster (see README). Nothing local to the flow process crosses to a task:
the flow resolves which version of the model to use (reading the registry, downloading nothing),
and each batch task fetches that version into its own machine's verified cache ($OBF_CACHE of the
worker), so workers on other machines need only the registry, the input and the output URLs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import threading
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.task_runners import ThreadPoolTaskRunner

from flows.retries import STORAGE_RETRIES
from obf.core import storage
from obf.core.config import ConfigError, GenerateSettings
from obf.core.errors import ObfError
from obf.generate.files import generate_files, ingest_config_of, output_key, prepare
from obf.registry import resolve, resolve_version

STATE, RUNS, CLAIMS = "_state", "_runs", "_claims"
OWNER = "_obf.json"  # at output_url: the input_url whose outputs it holds, written by the first run there
DEFAULT_CLAIM_TTL_S = 1800  # a crashed run's claims block other runs this long at most; must exceed a batch's time
DEFAULT_WORKERS = 4  # batches in flight at once; the fastest of 1 / 2 / 4 (benchmarks/batch_generate.py)
_BACKEND_LOCK = threading.Lock()


def _backend(registry: str, name: str, version: str, provider: str, precision: str) -> Any:
    """One ONNX Runtime backend per model version, provider and precision in this process (a
    worker's batches share it), over the version fetched into this machine's verified cache;
    batches that start together fetch it once."""
    with _BACKEND_LOCK:
        return _open_backend(registry, name, version, provider, precision)


@functools.cache
def _open_backend(registry: str, name: str, version: str, provider: str, precision: str) -> Any:
    from obf.runtime.onnx_backend import OnnxBackend

    model_dir, _ = resolve(registry, name, version)
    return OnnxBackend(model_dir, provider=provider, precision=precision)


def _bucket_of(url: str) -> str:
    """`s3://bucket/a/b` -> `s3://bucket`."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def fingerprint(entry: storage.Entry) -> str:
    """What identifies one version of an input: its key, size and ETag (for local files, which have
    no ETag, the sha256 of the content that `list_task` puts there)."""
    return f"{entry.key}|{entry.size}|{entry.etag or ''}"


def with_content_hashes(entries: list[storage.Entry]) -> list[storage.Entry]:
    """Local entries with `etag` set to `sha256:<hex>` of their content, so that a same-size edit is
    a new version of the input (key and size alone would call it done)."""
    out = []
    for e in entries:
        if e.etag is None and e.error is None and storage.is_local(e.url):
            with open(storage.local_str(e.url), "rb") as f:
                e = dataclasses.replace(e, etag="sha256:" + hashlib.file_digest(f, "sha256").hexdigest())
        out.append(e)
    return out


def own_key(key: str) -> bool:
    """Keys under the flow's own bookkeeping prefixes: never inputs."""
    return key.split("/", 1)[0] in (STATE, RUNS, CLAIMS)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def state_dir(version: str, entry: storage.Entry) -> str:
    """The folder of the records of one input version done by one model version."""
    return f"{STATE}/{version}/{_digest(fingerprint(entry))}"


def state_key(version: str, entry: storage.Entry, settings: str) -> str:
    """The record that one input version was done by one model version with one set of settings.
    The name alone says "done", so a run learns what to skip from one listing, without reading any
    record. An input's folder holds at most one record: the settings its current output came from."""
    return f"{state_dir(version, entry)}/{_digest(settings)[:32]}.json"


def claim_key(version: str, entry: storage.Entry, settings: str) -> str:
    """The claim one run holds on one input version while it generates it (model version, settings)."""
    return f"{CLAIMS}/{state_dir(version, entry)[len(STATE) + 1:]}/{_digest(settings)[:32]}.json"


def try_claim(url: str, run_id: str, ttl_s: float) -> bool:
    """Take the claim at `url` for this run: True when it is ours now, False when another run holds
    a live one. Conditional writes make the race safe: of two runs creating the claim at once one
    PUT (If-None-Match: *) fails, and an expired claim of a crashed run is taken over with
    If-Match on the version that was read, so of two runs taking it over only one wins."""
    body = json.dumps({"run": run_id, "expires": time.time() + ttl_s}).encode()
    for _ in range(3):
        try:
            storage.write_if(url, body, etag=None)
            return True
        except storage.ConflictError:
            pass
        try:
            data, tag = storage.read_with_etag(url)
        except storage.NotFoundError:
            continue  # released in between: try to create it again
        try:
            held = json.loads(data)
        except ValueError:
            held = {}
        if held.get("run") == run_id:
            return True  # ours: a PUT retried after its first answer was lost
        if float(held.get("expires", 0)) > time.time():
            return False
        try:
            storage.write_if(url, body, etag=tag)
            return True
        except storage.ConflictError:
            return False  # another run took the expired claim first
    return False


def release_claim(url: str, run_id: str) -> None:
    """Drop this run's claim at `url`. One that another run took over (this run's had expired while
    its batch ran) is that run's and stays."""
    try:
        data, _ = storage.read_with_etag(url)
        held = json.loads(data)
    except storage.NotFoundError:
        return
    except ValueError:
        held = {}
    if held.get("run") == run_id:
        storage.remove(url)


def default_task_runner() -> ThreadPoolTaskRunner:
    """A bounded thread pool. Prefect's default pool is unbounded: a run over many inputs would
    start every batch at once on the one shared ONNX Runtime session, so outputs would arrive late
    and all together, and a crash would lose more finished work than it needs to."""
    configured = get_current_settings().tasks.runner.thread_pool_max_workers
    return ThreadPoolTaskRunner(max_workers=configured or DEFAULT_WORKERS)


def _check_run_settings(*, batch_size: int, max_input_bytes: int, claim_ttl_s: float, provider: str,
                        precision: str) -> None:
    """How the run goes, checked before any work (each would otherwise fail, or silently do nothing,
    inside every batch: a batch size of -1 submitted no batch and the run ended Completed)."""
    if batch_size < 1 or max_input_bytes < 1:
        raise ValueError(f"batch_size and max_input_bytes must be 1 or more (got {batch_size}, {max_input_bytes})")
    if not claim_ttl_s > 0:
        raise ValueError(f"claim_ttl_s must be positive (got {claim_ttl_s}): it is what keeps two runs off one input")
    if provider not in ("auto", "cpu", "cuda"):
        raise ValueError(f"provider must be auto, cpu or cuda, not {provider!r}")
    if precision not in ("fp32", "int8", "fp16"):
        raise ValueError(f"precision must be fp32, int8 or fp16 for an exported model, not {precision!r}")


def _plain(url: str) -> str:
    """A local path made absolute and normal (`./x`, `x/../x` and `x` are one place), for comparing
    prefixes; a URL as it is."""
    return os.path.abspath(storage.local_str(url)) if storage.is_local(url) else url


@task(name="resolve-model", **STORAGE_RETRIES)
def resolve_task(registry: str, name: str, version: str) -> str:
    """The concrete version ('latest' resolved) that every batch of this run uses; downloads nothing."""
    resolved, _, _ = resolve_version(registry, name, version)
    return resolved


@task(name="list-inputs", **STORAGE_RETRIES)
def list_task(input_url: str, output_url: str, version: str) -> tuple[list[storage.Entry], set[str]]:
    """Inputs under input_url, and the state keys already written for this model version.

    Only "no state yet" reads as nothing done: any other failure to list `_state/` fails the task
    (and so, after its retries, the run), rather than regenerating every input."""
    try:
        inputs = with_content_hashes(storage.list_files(input_url))
    except storage.NotFoundError:
        if storage.is_local(input_url) or not storage.exists(_bucket_of(input_url)):
            raise
        # an object store has no empty folders: a drained inbox is no prefix at all, and a nightly
        # run over it has nothing to do rather than failing
        get_run_logger().warning("%s holds no object (yet): nothing to generate", input_url)
        inputs = []
    try:
        states = storage.list_files(storage.join(output_url, f"{STATE}/{version}"))
    except storage.NotFoundError:
        states = []
    return inputs, {f"{STATE}/{version}/{e.key}" for e in states}


@task(name="generate-batch", retries=1, retry_delay_seconds=5)
def generate_batch(entries: list[storage.Entry], model: tuple[str, str], version: str, output_url: str,
                   settings: GenerateSettings, *, max_input_bytes: int, provider: str,
                   stale: dict[str, list[str]] | None = None, run_id: str = "",
                   claim_ttl_s: float = DEFAULT_CLAIM_TTL_S) -> list[dict[str, Any]]:
    """Generate, write (one PUT each) and record a batch of inputs; a bad input fails alone.

    `model`: (registry, name) of the model, whose `version` this task fetches itself into its
    machine's cache: a task on another machine needs nothing of the flow's. `settings`: what to
    generate; `provider` and `max_input_bytes` only how.

    `stale` names, per input, the records of other settings whose output this run replaces: they
    are deleted before the new output is written, so a crash in between leaves no record that
    vouches for the wrong output (the input is simply done again next time). An output those
    settings wrote under another key (another extension: a paired target of another modality) is
    deleted once the new one is written, so each input keeps exactly one output.

    Overlapping runs: an input is generated only under this run's claim (`try_claim`); one that
    another run holds, or that another run finished while this one waited, is skipped. The claim
    is dropped once the input's output and state are written (or it failed); a crashed run's
    claims expire after `claim_ttl_s`."""
    sid = settings.settings_id()
    out: list[dict[str, Any]] = []
    mine: list[storage.Entry] = []
    for e in entries:
        claim = storage.join(output_url, claim_key(version, e, sid))
        if not try_claim(claim, run_id or "anonymous", claim_ttl_s):
            out.append({"input": e.key, "status": "skipped", "note": "claimed by another run"})
        elif storage.exists(storage.join(output_url, state_key(version, e, sid))):
            release_claim(claim, run_id or "anonymous")  # another run finished it while this one waited
            note = "already done (by another run, or an earlier try of this batch)"
            out.append({"input": e.key, "status": "skipped", "note": note})
        else:
            mine.append(e)
    try:
        return out + _generate_claimed(mine, model, version, output_url, settings, max_input_bytes=max_input_bytes,
                                       provider=provider, stale=stale or {})
    finally:
        for e in mine:
            release_claim(storage.join(output_url, claim_key(version, e, sid)), run_id or "anonymous")


def _generate_claimed(entries: list[storage.Entry], model: tuple[str, str], version: str, output_url: str,
                      settings: GenerateSettings, *, max_input_bytes: int, provider: str,
                      stale: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Generate, write and record inputs this run holds the claims of."""
    if not entries:
        return []
    backend = _backend(*model, version, provider, settings.precision)
    canon = ingest_config_of(backend)
    prepared = [prepare(e.url, canon, max_input_bytes=max_input_bytes) for e in entries]
    results = generate_files(backend, prepared, settings, batch_size=len(prepared))
    sid, settings_record = settings.settings_id(), settings.record()
    out = []
    for e, r in zip(entries, results, strict=True):
        if r.error is not None:
            out.append({"input": e.key, "status": "failed", "error": r.error})
            continue
        key = output_key(e.key, r.extension)
        url = storage.join(output_url, key)
        old_outputs = set()
        for old in stale.get(e.key, []):
            try:
                old_outputs.add(json.loads(storage.read_bytes(storage.join(output_url, old)))["output"])
            except (storage.StorageError, ValueError, KeyError):
                pass  # a record gone or unreadable names no output to clean up
            storage.remove(storage.join(output_url, old))
        storage.write_bytes_atomic(url, r.output)
        for old_key in old_outputs - {key}:
            storage.remove(storage.join(output_url, old_key))
        rec = {"input": e.key, "fingerprint": fingerprint(e), "output": key, "modality": r.modality,
               "bytes": len(r.output), "kept": r.kept, "generated": r.generated, "model_version": version,
               **settings_record, "status": "ok"}
        state = (json.dumps(rec, sort_keys=True) + "\n").encode()
        storage.write_bytes_atomic(storage.join(output_url, state_key(version, e, sid)), state)
        out.append({"input": e.key, "status": "ok", "output": key, "modality": r.modality})
    return out


@task(name="write-run-manifest", retries=3, retry_delay_seconds=[2, 10, 30])
def manifest_task(output_url: str, run_id: str, manifest: dict[str, Any]) -> str:
    url = storage.join(output_url, f"{RUNS}/{run_id}.json")
    storage.write_bytes_atomic(url, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return url


class OutputPrefixError(ObfError):
    """output_url holds what batch-generate may not write over: files obf did not write, or the
    outputs of another input_url (two inputs would share an output)."""


@task(name="own-output-prefix", **STORAGE_RETRIES)
def own_output_task(input_url: str, output_url: str) -> None:
    """Make sure every object this run may write over is obf's: `output_url` is new or empty, or it
    holds batch-generate's outputs of this `input_url` (its `_obf.json` says so). An output prefix
    written before `_obf.json` existed is recognised by its `_runs/` or `_state/` and adopted.
    Outputs are named after their inputs' keys, so a foreign `x.png.bmp` there would be replaced
    without a word, and two input prefixes sharing one output prefix would replace each other's."""
    url = storage.join(output_url, OWNER)
    for _ in range(3):
        try:
            held = json.loads(storage.read_bytes(url)).get("input_url")
        except storage.NotFoundError:
            held = None
        except (ValueError, AttributeError):
            raise OutputPrefixError(f"{url}: not batch-generate's record; choose another output_url") from None
        if held is not None:
            if held != input_url:
                raise OutputPrefixError(f"{output_url} holds the outputs of {held}, not of {input_url} (inputs of "
                                        f"the same name would share an output); choose another output_url, or "
                                        f"remove {OWNER} if the inputs moved")
            return
        legacy = any(storage.exists(storage.join(output_url, p)) for p in (RUNS, STATE))
        if not legacy:
            try:
                keys = [e.key for e in storage.list_files(output_url)]
            except storage.NotFoundError:
                keys = []
            if OWNER in keys:
                continue  # a run started at the same time wrote it since: read what it says
            foreign = [k for k in keys if not own_key(k)]
            if foreign:
                raise OutputPrefixError(f"{output_url} holds files batch-generate did not write ({foreign[0]}, ...): "
                                        "its outputs would replace them; choose an empty or new output_url")
        try:
            storage.write_if(url, (json.dumps({"input_url": input_url}) + "\n").encode(), etag=None)
            return
        except storage.ConflictError:
            continue  # another run wrote it first: read what it says
    raise OutputPrefixError(f"{url}: could not be read or written")


class BatchGenerateFailed(RuntimeError):
    """Some inputs failed; the others were written. The run manifest lists which and why."""


@flow(name="batch-generate", log_prints=True, task_runner=default_task_runner())
def batch_generate(
    input_url: str,
    output_url: str,
    registry: str,
    name: str = "obf",
    version: str = "latest",
    task_name: str = "continue",
    max_bytes: int = GenerateSettings.max_bytes,  # obf generate's default (params.yaml's generate.max_bytes)
    batch_size: int = 8,
    max_input_bytes: int = 16 * 1024 * 1024,
    seed: int = 0,
    provider: str = "auto",
    precision: str = "fp32",
    target_modality: str | None = None,
    prefix_bytes: int | None = None,
    prefix_fraction: float | None = None,
    claim_ttl_s: float = DEFAULT_CLAIM_TTL_S,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    match_surprise: bool | None = None,
    min_p: float | None = None,
    share_guard: float | None = None,
) -> dict[str, Any]:
    """Generate an output for every input not yet done with this model version and these settings.

    `task_name` continue (the input's start and what the model makes after it; with `prefix_bytes`
    / `prefix_fraction` an image, audio or video file keeps that start and is completed to its
    declared size, without them it is extended by about `max_bytes`) or paired (a target of
    `target_modality`, default the input's, as `obf generate --task paired --target-modality`).
    `precision` int8 runs the model's quantised graphs (published when it was exported with
    `export.int8`) on CPU; fp16 its fp16 graphs (`export.fp16`), made for the CUDA provider.
    `temperature`, `top_k`, `top_p`, `min_p`, `share_guard`, `match_surprise` (a thermostat per output): the
    decoding, by default `obf generate`'s for the task (`obf.generate.sampling.DECODING`); each state
    record names them.
    Runs may overlap on one output prefix (a scheduled run while a manual one goes on): each
    input is generated under a per-input claim (`_claims/`, S3 conditional writes), so no input is
    generated by both; a crashed run's claims expire after `claim_ttl_s` seconds."""
    log = get_run_logger()
    settings = GenerateSettings(task=task_name, target_modality=target_modality, max_bytes=max_bytes,
                                prefix_bytes=prefix_bytes, prefix_fraction=prefix_fraction, temperature=temperature,
                                top_k=top_k, top_p=top_p, min_p=min_p, share_guard=share_guard,
                                match_surprise=match_surprise, seed=seed,
                                precision=precision)
    try:
        settings.validate("batch-generate")  # bad values fail here, before any work
    except ConfigError as e:
        raise ValueError(str(e)) from None
    _check_run_settings(batch_size=batch_size, max_input_bytes=max_input_bytes, claim_ttl_s=claim_ttl_s,
                        provider=provider, precision=precision)
    for url in (input_url, output_url, registry):
        storage.check_url(url)
    inp, out = storage.join(_plain(input_url), ""), storage.join(_plain(output_url), "")
    if out.startswith(inp):
        raise ValueError("output_url must not lie inside input_url (outputs would become inputs)")
    if any(inp.startswith(storage.join(out, p + "/")) for p in (STATE, RUNS, CLAIMS)):
        raise ValueError(f"input_url lies under output_url's {STATE}/, {RUNS}/ or {CLAIMS}/: batch-generate's own "
                         "bookkeeping")
    resolved = resolve_task(registry, name, version)
    entries, done = list_task(input_url, output_url, resolved)
    own_output_task(input_url, output_url)  # after the listing: a run that cannot list its inputs claims nothing
    sid = settings.settings_id()
    statuses: dict[str, dict[str, Any]] = {}
    pending: list[storage.Entry] = []
    for e in entries:
        try:
            storage.safe_key(e.key)
        except storage.StorageError as err:
            statuses[e.key] = {"input": e.key, "status": "failed", "error": str(err)}
            continue
        if own_key(e.key):
            statuses[e.key] = {
                "input": e.key,
                "status": "failed",
                "error": f"under {e.key.split('/', 1)[0]}/, batch-generate's own bookkeeping prefix",
            }
            continue
        if e.size > max_input_bytes:  # known from the listing: never downloaded
            statuses[e.key] = {"input": e.key, "status": "failed",
                               "error": f"input is {e.size} bytes, over the cap of {max_input_bytes}"}
            continue
        if state_key(resolved, e, sid) in done:  # same key, size and ETag, same model and settings
            statuses[e.key] = {"input": e.key, "status": "skipped"}
        else:
            pending.append(e)
    log.info(
        "model %s/%s: %d inputs, %d to do, %d already done",
        name,
        resolved,
        len(entries),
        len(pending),
        sum(s["status"] == "skipped" for s in statuses.values()),
    )
    records_of: dict[str, list[str]] = {}  # an input's state folder -> its records (of other settings)
    for k in done:
        records_of.setdefault(k.rsplit("/", 1)[0], []).append(k)
    stale = {e.key: records_of[d] for e in pending if (d := state_dir(resolved, e)) in records_of}
    run_id = str(flow_run.get_id() or f"local-{uuid.uuid4().hex}")
    futures = [
        generate_batch.submit(
            pending[i : i + batch_size],
            (registry, name),
            resolved,
            output_url,
            settings,
            max_input_bytes=max_input_bytes,
            provider=provider,
            stale={e.key: stale[e.key] for e in pending[i : i + batch_size] if e.key in stale},
            run_id=run_id,
            claim_ttl_s=claim_ttl_s,
        )
        for i in range(0, len(pending), batch_size)
    ]
    for fut, start in zip(futures, range(0, len(pending), batch_size)):
        try:
            for s in fut.result():
                statuses[s["input"]] = s
        except Exception as err:  # the whole batch failed (after retries): record each input
            for e in pending[start : start + batch_size]:
                statuses[e.key] = {"input": e.key, "status": "failed", "error": f"batch failed: {err}"}
    counts = {k: sum(s["status"] == k for s in statuses.values()) for k in ("ok", "skipped", "failed")}
    manifest = {
        "flow_run_id": run_id,
        "model": {"name": name, "version": resolved, "registry": registry, "precision": precision},
        "input_url": input_url,
        "output_url": output_url,
        "counts": counts,
        "inputs": [statuses[k] for k in sorted(statuses)],
    }
    url = manifest_task(output_url, run_id, manifest)
    log.info("done: %(ok)d generated, %(skipped)d skipped, %(failed)d failed", counts)
    if counts["failed"]:
        raise BatchGenerateFailed(f"{counts['failed']} of {len(statuses)} inputs failed; see {url}")
    return {"manifest": url, **counts}
