"""One function per pipeline stage: URLs and params in, outputs out.

`dvc.yaml` (through the `obf` CLI) and the Prefect flows both call these, so a stage behaves the
same wherever it runs. Heavy imports (torch) happen inside the stages that need them.
"""

from __future__ import annotations

from pathlib import Path

from obf.config import Params


def ingest(source: str, out_dir: str | Path, params: Params, *, progress: bool = True) -> dict:
    """Raw files at `source` (folder or fsspec URL) -> byte dataset in `out_dir`; returns the manifest."""
    from obf.data import ingest as _ingest

    return _ingest(source, out_dir, params.ingest, progress=progress)


def train(data_dir: str | Path, model_dir: str | Path, params: Params, *, resume: bool = False,
          live_dir: str | Path | None = None, progress: bool = True, sample_log: str | None = None) -> dict:
    """Ingested dataset -> trained model dir (model.safetensors, config.json, train_state.pt)."""
    from obf.train import train as _train

    return _train(data_dir, model_dir, params, resume=resume, live_dir=live_dir, progress=progress,
                  sample_log=sample_log)
