"""The ledger of an output dir: which files `obf generate` wrote there, by name and sha256.

A command replaces only what obf wrote, never a user's file; the ledger is how it knows.
"""

from __future__ import annotations

import hashlib
import json

from obf.core import storage
from obf.core.errors import ObfError

LEDGER = ".obf-generate.json"  # in an output dir: {name: sha256} of the files `obf generate` wrote there


def read_ledger(out_dir: str) -> dict[str, str]:
    """Which files of `out_dir` obf generate wrote, by name and sha256 ({} when none)."""
    url = storage.join(out_dir, LEDGER)
    if not storage.exists(url):
        return {}
    try:
        return dict(json.loads(storage.read_bytes(url))["outputs"])
    except (ValueError, KeyError, TypeError) as e:
        raise ObfError(f"{url}: unreadable ({e}); move it away to continue") from None


def written_by_obf(ledger: dict[str, str], out_dir: str, name: str) -> bool:
    """True when `name` in `out_dir` is still the file obf generate wrote (same sha256)."""
    want = ledger.get(name)
    return want is not None and hashlib.sha256(storage.read_bytes(storage.join(out_dir, name))).hexdigest() == want


def record_outputs(out_dir: str, written: dict[str, bytes]) -> None:
    """Add the files just written to the ledger of `out_dir` (read again, so others' entries stay)."""
    ledger = read_ledger(out_dir)
    ledger.update({name: hashlib.sha256(data).hexdigest() for name, data in written.items()})
    storage.write_bytes_atomic(storage.join(out_dir, LEDGER),
                               (json.dumps({"outputs": ledger}, indent=1, sort_keys=True) + "\n").encode())
