"""A versioned model registry on any fsspec URL (a folder, `s3://bucket/models`, ...). No torch.

Layout::

    <registry>/<name>/<version>/encoder.onnx, decoder.onnx, obf.json, manifest.json
    <registry>/<name>/latest.json        {"name", "version", "manifest_sha256"}

`publish` uploads the files of an exported ONNX dir, then their `manifest.json` (sha256 and size
of each), and writes `latest.json` last, so a reader never resolves a half-published version.
`resolve` reads `latest.json` (or a pinned version), downloads into a local cache, verifies
every sha256, and returns the cached dir; a verified cache is reused without downloading.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from obf import storage
from obf.errors import ObfError

MANIFEST, LATEST = "manifest.json", "latest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(ObfError):
    """A model name/version is missing, malformed, or its files fail verification."""


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value or "") or value in (".", ".."):
        raise RegistryError(f"bad {kind} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


def default_cache() -> Path:
    return Path(os.environ.get("OBF_CACHE", Path.home() / ".cache" / "obf" / "models"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_versions(registry: str, name: str) -> list[str]:
    base = storage.join(registry, _check_name("name", name))
    try:
        entries = storage.list_files(base)
    except storage.NotFoundError:
        return []
    return sorted({e.key.split("/", 1)[0] for e in entries if e.key.endswith("/" + MANIFEST)})


def _next_version(registry: str, name: str) -> str:
    nums = [int(v[1:]) for v in list_versions(registry, name) if re.fullmatch(r"v\d+", v)]
    return f"v{(max(nums) + 1) if nums else 1:04d}"


def publish(onnx_dir: str | Path, registry: str, name: str, version: str | None = None) -> dict[str, Any]:
    """Publish an exported ONNX dir as `<registry>/<name>/<version>/`; returns the manifest."""
    src = Path(onnx_dir)
    if not (src / "obf.json").is_file():
        raise RegistryError(f"{src}: not an exported ONNX dir (no obf.json)")
    _check_name("name", name)
    version = _check_name("version", version or _next_version(registry, name))
    if version == "latest":
        raise RegistryError("version 'latest' is reserved")
    base = storage.join(storage.join(registry, name), version)
    if storage.exists(storage.join(base, MANIFEST)):
        raise RegistryError(f"{name}/{version} is already published; versions are immutable")
    files = {}
    for p in sorted(src.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            data = p.read_bytes()
            storage.write_bytes_atomic(storage.join(base, p.name), data)
            files[p.name] = {"sha256": _sha(data), "bytes": len(data)}
    manifest = {"name": name, "version": version, "files": files,
                "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    blob = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    storage.write_bytes_atomic(storage.join(base, MANIFEST), blob)
    latest = {"name": name, "version": version, "manifest_sha256": _sha(blob)}
    storage.write_bytes_atomic(storage.join(storage.join(registry, name), LATEST),
                               (json.dumps(latest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def _read_json(url: str, what: str) -> tuple[dict[str, Any], bytes]:
    try:
        blob = storage.read_bytes(url)
        return json.loads(blob), blob
    except storage.StorageError:
        raise RegistryError(f"{what} not found ({url})") from None
    except ValueError:
        raise RegistryError(f"{what} is corrupt ({url})") from None


def _cache_ok(d: Path, manifest: dict[str, Any]) -> bool:
    try:
        return all((d / n).is_file() and _sha((d / n).read_bytes()) == f["sha256"] for n, f in manifest["files"].items())
    except OSError:
        return False


def resolve(registry: str, name: str, version: str = "latest", *, cache_dir: str | Path | None = None
            ) -> tuple[Path, str]:
    """Local, verified dir of `name` at `version` ('latest' or pinned) and the resolved version."""
    _check_name("name", name)
    root = storage.join(registry, name)
    expect_manifest_sha = None
    if version == "latest":
        latest, _ = _read_json(storage.join(root, LATEST), f"model {name!r} (latest.json)")
        version, expect_manifest_sha = str(latest.get("version", "")), latest.get("manifest_sha256")
    _check_name("version", version)
    manifest, blob = _read_json(storage.join(storage.join(root, version), MANIFEST), f"model {name}/{version}")
    if expect_manifest_sha and _sha(blob) != expect_manifest_sha:
        raise RegistryError(f"{name}/{version}: manifest does not match latest.json")
    dest = Path(cache_dir or default_cache()) / name / version
    if _cache_ok(dest, manifest):
        return dest, version
    tmp = storage.temp_dir_beside(dest)
    try:
        for fname, info in sorted(manifest["files"].items()):
            storage.safe_key(fname)
            data = storage.read_bytes(storage.join(storage.join(root, version), fname))
            if _sha(data) != info["sha256"]:
                raise RegistryError(f"{name}/{version}/{fname}: sha256 mismatch; refusing a corrupt download")
            (tmp / fname).write_bytes(data)
        (tmp / MANIFEST).write_bytes(blob)
        storage.replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, version
