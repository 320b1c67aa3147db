"""Where a model came from: the code version, the git commit, and the model card a registry keeps.

A published version's card names the dataset (the sha256 of its manifest and index), the full settings, the
code (obf's version and a hash of its sources; the git commit when there is one), and the
evaluation's headline figures, so a version in the registry can be traced and rebuilt. The same
code version keys the train-flow's persisted builds. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import obf
from obf.core.params import Params

_PACKAGE = Path(obf.__file__).resolve().parent


@functools.cache
def code_version() -> str:
    """obf's version and the sha256 (first 16 hex digits) of its Python sources: any change to the
    code that trains, evaluates or exports a model gives another version."""
    h = hashlib.sha256()
    for p in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(p.relative_to(_PACKAGE)).encode() + b"\0" + p.read_bytes() + b"\0")
    return f"{obf.__version__}+{h.hexdigest()[:16]}"


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the git checkout obf runs from (with `-dirty` when it has uncommitted
    changes), or None: also when obf is installed elsewhere than a checkout of its own (the
    checkout's root must hold this very package)."""
    where = cwd or _PACKAGE

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    root, head = git("rev-parse", "--show-toplevel"), git("rev-parse", "HEAD")
    if not root or not head or cwd is None and Path(root).resolve() / "obf" != _PACKAGE:
        return None
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def settings(params: Params) -> dict[str, Any]:
    """Every section of the params, as plain data."""
    return dataclasses.asdict(params)


def build_key(data_sha256: str, params: Params) -> str:
    """What a trained, evaluated and exported model is a function of: the dataset, the settings of
    the stages that make it, and the code."""
    blob = repr((data_sha256, settings(params)["model"], settings(params)["train"], settings(params)["evaluate"],
                 settings(params)["export"], code_version())).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def card(data_sha256: str, params: Params, metrics: dict[str, Any], *, manifest_sha256: str | None = None
         ) -> dict[str, Any]:
    """A model card: dataset (`dataset_sha256`: its manifest and index, `obf.data.dataset.dataset_sha256`;
    and its manifest.json's own sha256), settings, code and the evaluation's headline figures."""
    overall = metrics.get("overall", {})
    return {"dataset_sha256": data_sha256, "dataset_manifest_sha256": manifest_sha256,
            "settings": settings(params), "obf_version": obf.__version__,
            "code_version": code_version(), "git_commit": git_commit(),
            "evaluation": {"split": metrics.get("split"), "bpb": overall.get("bpb"),
                           "network_bpb": overall.get("network_bpb"),
                           "best_compressor_bpb": overall.get("baselines", {}).get("best"),
                           "modalities": {m: {"bpb": v.get("bpb"),
                                              "best_compressor_bpb": v.get("baselines", {}).get("best")}
                                          for m, v in metrics.get("modalities", {}).items()},
                           "conversions": {c: {"exact": v.get("exact")}
                                           for c, v in metrics.get("conversions", {}).items()}}}
