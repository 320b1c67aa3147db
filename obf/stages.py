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
