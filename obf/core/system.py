"""What this process may use of the machine. Imports nothing heavy (the serving path uses it)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on (its affinity, e.g. a container's cpuset), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
