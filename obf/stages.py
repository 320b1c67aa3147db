"""One function per pipeline stage: URLs and params in, outputs out.

`dvc.yaml` (through the `obf` CLI) and the Prefect flows both call these, so a stage behaves the
same wherever it runs. Heavy imports (torch) happen inside the stages that need them.
"""

from __future__ import annotations

from pathlib import Path

from obf.core.config import GenerateSettings
from obf.core.errors import ObfError
from obf.core.params import Params


def ingest(source: str, out_dir: str | Path, params: Params, *, progress: bool = True, dask: str | None = None
           ) -> dict:
    """Raw files at `source` (folder or fsspec URL) -> byte dataset at `out_dir` (a dir or a URL);
    returns the manifest. `dask`: a Dask scheduler's address to spread the work over."""
    from obf.data.ingest import ingest as _ingest

    return _ingest(source, out_dir, params.ingest, progress=progress, dask=dask)


def train(data_dir: str | Path, model_dir: str | Path, params: Params, *, resume: bool = False,
          live_dir: str | Path | None = None, progress: bool = True, sample_log: str | None = None) -> dict:
    """Ingested dataset (a local dir or any fsspec URL, read through a verified local cache:
    `obf.data.dataset.local_dataset`) -> trained model dir (model.safetensors, config.json, train_state.pt)."""
    from obf.core import storage
    from obf.core.system import require_torch

    require_torch("obf train")
    from obf.data.dataset import local_dataset
    from obf.model.checkpoint import check_fresh_output
    from obf.train import train as _train

    if not resume:  # before the dataset is fetched or anything is written
        local_data = storage.local_path(str(data_dir)) if storage.is_local(str(data_dir)) else None
        check_fresh_output(Path(model_dir), local_data)
    return _train(local_dataset(data_dir), model_dir, params, resume=resume, live_dir=live_dir, progress=progress,
                  sample_log=sample_log)


def evaluate(model_dir: str, data: str, out: str | Path, params: Params, *, per_file: bool = False,
             provider: str = "auto", precision: str = "fp32", progress: bool = True) -> dict:
    """Model (checkpoint or ONNX dir) + data (dataset dir, folder or URL) -> metrics.json, report.md, bpb.csv."""
    from obf.evaluate.run import evaluate as _evaluate

    return _evaluate(model_dir, data, out, params, per_file=per_file, provider=provider, precision=precision,
                     progress=progress)


def export(model_dir: str | Path, out_dir: str | Path, params: Params, *, data: str | Path | None = None,
           progress: bool = True) -> dict:
    """Training checkpoint -> ONNX dir (encoder.onnx, decoder.onnx, obf.json), parity-checked on
    random bytes and, given a dataset `data`, on a few of its validation files."""
    from obf.core import storage
    from obf.core.system import require_torch

    require_torch("obf export")
    from obf.export.onnx_export import dataset_samples
    from obf.export.onnx_export import export as _export

    storage.check_output_dir(out_dir, "export", [str(model_dir), None if data is None else str(data)])
    real = dataset_samples(data) if data is not None else None
    return _export(model_dir, out_dir, params.export, real=real, progress=progress)


def generate(model_dir: str, inputs: list[str], out_dir: str, params: Params,
             settings: GenerateSettings | None = None, *, provider: str = "auto", batch_size: int = 8,
             max_input_bytes: int | None = None, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Input files -> one valid output file each in `out_dir`, named `output_name`; returns a status per input.

    `settings`: what to generate (default `params.generate`); `provider`, `batch_size` and
    `max_input_bytes` change how it runs, not what it writes.

    An output file that exists and that obf did not write (the dir's ledger, `obf.generate.ledger.LEDGER`,
    has no matching sha256 for it) is refused for its input unless `overwrite`; of two inputs
    with the same base name, the second is refused. Nothing is ever deleted."""
    from tqdm import tqdm

    from obf.core import storage
    from obf.formats.sniff import EXTENSIONS
    from obf.generate.files import Prepared, generate_files, ingest_config_of, output_name, prepare
    from obf.generate.ledger import read_ledger, record_outputs, written_by_obf
    from obf.runtime.backend import open_backend

    settings = settings or params.generate
    settings.validate()
    if batch_size < 1 or (max_input_bytes is not None and max_input_bytes < 1):
        raise ObfError(f"batch_size and max_input_bytes must be positive (got {batch_size}, {max_input_bytes})")
    if storage.is_local(out_dir) and storage.local_path(out_dir).exists() and not storage.local_path(out_dir).is_dir():
        raise storage.StorageError(f"{out_dir}: exists and is not a folder (the outputs' --out)")  # before any work
    task, target_modality = settings.task, settings.target_modality
    backend = open_backend(model_dir, provider=provider, precision=settings.precision)
    cap = max_input_bytes or params.ingest.max_file_bytes
    canon = ingest_config_of(backend)  # the forms the model was trained on
    prepared = [prepare(src, canon, max_input_bytes=cap) for src in inputs]
    ledger = read_ledger(out_dir)
    owners: dict[str, str] = {}  # base name -> the input that has it
    for i, p in enumerate(prepared):
        if p.error is not None:
            continue
        base = output_name(p.source, "")
        name = output_name(p.source, EXTENSIONS[target_modality or p.modality if task == "paired" else p.modality])
        dest = storage.join(out_dir, name)
        if base in owners:
            prepared[i] = Prepared(p.source, error=f"same file name as {owners[base]}: their outputs would collide")
        elif not overwrite and storage.exists(dest) and not written_by_obf(ledger, out_dir, name):
            prepared[i] = Prepared(p.source, error=f"{dest} exists and obf did not write it; --overwrite replaces it")
        else:
            owners[base] = p.source
    with tqdm(total=len(inputs), desc="generate", unit="file", disable=not progress) as bar:
        bar.update(sum(p.error is not None for p in prepared))
        results = generate_files(backend, prepared, settings, batch_size=batch_size, on_batch=bar.update)
    status, written = [], {}
    for r in results:
        if r.error is not None:
            status.append({"input": r.source, "status": "failed", "error": r.error})
            continue
        name = output_name(r.source, r.extension)
        dest = storage.join(out_dir, name)
        if name != output_name(r.source, EXTENSIONS[r.modality]) and storage.exists(dest) and not overwrite \
                and not written_by_obf(ledger, out_dir, name):  # a paired output kept in its own format (.png)
            status.append({"input": r.source, "status": "failed",
                           "error": f"{dest} exists and obf did not write it; --overwrite replaces it"})
            continue
        storage.write_bytes_atomic(dest, r.output)
        written[name] = r.output
        status.append({"input": r.source, "status": "ok", "output": dest, "modality": r.modality,
                       "bytes": len(r.output), "kept": r.kept, "generated": r.generated, "note": r.note})
    if written:
        record_outputs(out_dir, written)
    return status
