"""What this process may use of the machine. Imports nothing heavy (the serving path uses it)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on (its affinity, e.g. a container's cpuset), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def require_torch(what: str) -> None:
    """Raise a one-line ObfError where torch is not installed: the serving install (`pip install
    .`) runs ONNX exports without it, and a checkpoint, training or export there would otherwise
    end in an import traceback."""
    import importlib.util

    from obf.core.errors import ObfError

    if importlib.util.find_spec("torch") is None:
        raise ObfError(f"{what} needs torch, which this install lacks: pip install \".[train]\" (or torch alone)")
