"""A versioned model registry on any fsspec URL (a folder, `s3://bucket/models`, ...). No torch.

Layout::

    <registry>/<name>/<version>/encoder.onnx, decoder.onnx, obf.json, manifest.json
    <registry>/<name>/latest.json        {"name", "version", "manifest_sha256"}

`publish` first claims its version (`<version>/.claim`, created with a conditional write, so of
two concurrent publishers only one gets a version number; the other takes the next), uploads the
files of an exported ONNX dir, then their `manifest.json` (sha256 and size of each, also a
conditional create), and moves `latest.json` last, with a compare-and-swap that never moves it
back to an older version. A reader never resolves a half-published version.
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

from obf.core import storage
from obf.core.errors import ObfError

MANIFEST, LATEST, CLAIM = "manifest.json", "latest.json", ".claim"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(ObfError):
    """A model name/version is missing, malformed, or its files fail verification."""


def check_name(kind: str, value: str) -> str:
    if not _NAME.match(value or "") or value in (".", ".."):
        raise RegistryError(f"bad {kind} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


def default_cache() -> Path:
    return Path(os.environ.get("OBF_CACHE", Path.home() / ".cache" / "obf" / "models"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_versions(registry: str, name: str) -> list[str]:
    base = storage.join(registry, check_name("name", name))
    try:
        entries = storage.list_files(base)
    except storage.NotFoundError:
        return []
    return sorted({e.key.split("/", 1)[0] for e in entries if e.key.endswith("/" + MANIFEST)})


def _next_version(registry: str, name: str) -> str:
    """One past the highest version that is published or claimed by a publish in progress."""
    base = storage.join(registry, name)
    try:
        keys = [e.key for e in storage.list_files(base)]
    except storage.NotFoundError:
        keys = []
    taken = {k.split("/", 1)[0] for k in keys if k.endswith(("/" + MANIFEST, "/" + CLAIM))}
    nums = [int(v[1:]) for v in taken if re.fullmatch(r"v\d+", v)]
    return f"v{(max(nums) + 1) if nums else 1:04d}"


def _version_number(version: str) -> int | None:
    return int(version[1:]) if re.fullmatch(r"v\d+", version) else None


def publish(onnx_dir: str | Path, registry: str, name: str, version: str | None = None,
            card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publish an exported ONNX dir as `<registry>/<name>/<version>/`; returns the manifest, which
    carries `card` (`obf.provenance.card`: the dataset, settings, code and figures it came from).

    Safe to run concurrently: each publish gets a version of its own, and `latest.json` only
    ever moves forward (to a higher `vNNNN`; a named version other than `vNNNN` moves it when
    published)."""
    src = Path(onnx_dir)
    if not (src / "obf.json").is_file():
        raise RegistryError(f"{src}: not an exported ONNX dir (no obf.json)")
    check_name("name", name)
    if version is not None and check_name("version", version) == "latest":
        raise RegistryError("version 'latest' is reserved")
    root = storage.join(registry, name)
    token = json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "at": time.time(),
                        "nonce": os.urandom(8).hex()}).encode()
    for _ in range(100):
        candidate = version or _next_version(registry, name)
        base = storage.join(root, candidate)
        if storage.exists(storage.join(base, MANIFEST)):
            if version:
                raise RegistryError(f"{name}/{candidate} is already published; versions are immutable")
            continue
        try:
            storage.write_if(storage.join(base, CLAIM), token, etag=None)
            break
        except storage.ConflictError:
            if _read_or_none(storage.join(base, CLAIM)) == token:
                break  # ours: the PUT was retried after its first answer was lost
            if version:
                raise RegistryError(f"{name}/{candidate} is being or was published by another process") from None
    else:
        raise RegistryError(f"{name}: no free version after 100 tries")
    files = {}
    for p in sorted(src.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            data = p.read_bytes()
            storage.write_bytes_atomic(storage.join(base, p.name), data)
            files[p.name] = {"sha256": _sha(data), "bytes": len(data)}
    manifest = {"name": name, "version": candidate, "files": files,
                "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **({"card": card} if card else {})}
    blob = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    try:
        storage.write_if(storage.join(base, MANIFEST), blob, etag=None)
    except storage.ConflictError:
        # our own PUT, retried after its first answer was lost, finds its own manifest there
        if storage.read_bytes(storage.join(base, MANIFEST)) != blob:
            raise RegistryError(f"{name}/{candidate} was published by another process meanwhile") from None
    _move_latest(root, name, candidate, _sha(blob))
    return manifest


def _read_or_none(url: str) -> bytes | None:
    try:
        return storage.read_bytes(url)
    except storage.NotFoundError:
        return None


def _move_latest(root: str, name: str, version: str, manifest_sha: str) -> None:
    """Point latest.json at `version` unless it already names a higher one (compare-and-swap)."""
    url = storage.join(root, LATEST)
    blob = (json.dumps({"name": name, "version": version, "manifest_sha256": manifest_sha}, indent=2,
                       sort_keys=True) + "\n").encode()
    mine = _version_number(version)
    for _ in range(100):
        try:
            current, tag = storage.read_with_etag(url)
        except storage.NotFoundError:
            current, tag = None, None
        if current is not None:
            try:
                theirs = _version_number(str(json.loads(current).get("version", "")))
            except ValueError:
                theirs = None
            if mine is not None and theirs is not None and theirs >= mine:
                return  # a newer version is latest already: never move back
        try:
            storage.write_if(url, blob, etag=tag)
            return
        except storage.ConflictError:
            continue  # someone moved it meanwhile: look again
    raise RegistryError(f"{name}: latest.json kept changing; left as it is")


def _read_json(url: str, what: str) -> tuple[dict[str, Any], bytes]:
    try:
        blob = storage.read_bytes(url)
        return json.loads(blob), blob
    except storage.NotFoundError:
        raise RegistryError(f"{what} not found ({url})") from None
    except storage.StorageError as err:  # there, maybe, but not readable: say why
        raise RegistryError(f"{what} unreadable: {err}") from None
    except ValueError:
        raise RegistryError(f"{what} is corrupt ({url})") from None


def _cache_ok(d: Path, manifest: dict[str, Any]) -> bool:
    try:
        files = manifest["files"].items()
        return all((d / n).is_file() and _sha((d / n).read_bytes()) == f["sha256"] for n, f in files)
    except OSError:
        return False


def describe(registry: str, name: str, version: str = "latest") -> dict[str, Any]:
    """The manifest of a published version ('latest' or pinned): its files and its model card."""
    return resolve_version(registry, name, version)[1]


def resolve_version(registry: str, name: str, version: str = "latest") -> tuple[str, dict[str, Any], bytes]:
    """The published version `version` names ('latest' or pinned), with its manifest (parsed and
    as stored), verified against latest.json; nothing is downloaded."""
    check_name("name", name)
    root = storage.join(registry, name)
    expect_manifest_sha = None
    if version == "latest":
        latest, _ = _read_json(storage.join(root, LATEST), f"model {name!r} (latest.json)")
        version, expect_manifest_sha = str(latest.get("version", "")), latest.get("manifest_sha256")
    check_name("version", version)
    manifest, blob = _read_json(storage.join(storage.join(root, version), MANIFEST), f"model {name}/{version}")
    if expect_manifest_sha and _sha(blob) != expect_manifest_sha:
        raise RegistryError(f"{name}/{version}: manifest does not match latest.json")
    return version, manifest, blob


def resolve(
    registry: str, name: str, version: str = "latest", *, cache_dir: str | Path | None = None
) -> tuple[Path, str]:
    """Local, verified dir of `name` at `version` ('latest' or pinned) and the resolved version.
    The cache is `cache_dir`, else $OBF_CACHE of this process (each machine keeps its own)."""
    version, manifest, blob = resolve_version(registry, name, version)
    root = storage.join(registry, name)
    dest = Path(cache_dir or default_cache()) / name / version
    if _cache_ok(dest, manifest):
        return dest, version
    with storage.cache_lock(dest):  # processes sharing this cache download it once
        if _cache_ok(dest, manifest):  # another process fetched it while this one waited
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
