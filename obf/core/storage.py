"""Storage over fsspec URLs: list, read, atomic write, and safe relative keys.

Local paths, `s3://` (endpoint and credentials from the standard AWS environment, e.g.
`AWS_ENDPOINT_URL`), `memory://` and every other fsspec protocol go through the same functions.
Writes are atomic: a temp file + rename locally, a single PUT per object on object stores.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fsspec.core import url_to_fs

from obf.core.errors import ConflictError, NotFoundError, ObfError, StorageError  # noqa: F401 (storage.*Error)

# A fsspec protocol and a colon without two slashes (`s3:/bucket`): as a path, a local folder `s3:`.
_MISTYPED_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(?!//)")


@functools.cache
def _protocols() -> frozenset[str]:
    import fsspec

    return frozenset(p.lower() for p in fsspec.available_protocols())


def is_local(url: str) -> bool:
    """True for plain paths and `file://` URLs. A URL mistyped with one slash or none after its
    protocol (`s3:/bucket`) is a StorageError, not a local path."""
    if "://" in url:
        return url.startswith("file://")
    if (m := _MISTYPED_URL.match(url)) and m.group(1).lower() in _protocols():
        raise StorageError(f"{url}: a mistyped URL? {m.group(1)}: needs two slashes ({m.group(1)}://...)")
    return True


def check_url(url: str) -> None:
    """Refuse, with one line, a mistyped URL (`is_local`) or one without a bucket (`s3://`)."""
    if not is_local(url) and not url.split("://", 1)[1].strip("/"):
        raise StorageError(f"{url}: no bucket or path after the protocol")


def local_str(url: str) -> str:
    """The filesystem path of a local URL, as a string (cheaper than a Path, per file)."""
    return url[len("file://"):] if url.startswith("file://") else url


def local_path(url: str) -> Path:
    return Path(local_str(url))


def join(base: str, key: str) -> str:
    """Join a base URL/path and a relative key with exactly one '/'."""
    return base.rstrip("/") + "/" + key.lstrip("/")


# Unicode's control characters (category Cc: C0, DEL, C1) and lone surrogates (Cs: what
# undecodable bytes in a file name become); one regex scan, not a category lookup per character.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def safe_key(key: str) -> str:
    """Validate a relative key and return it normalised ('a/b.txt').

    Rejects empty keys, absolute paths, `..` or `.` segments, backslashes, NUL and control
    characters, so a key taken from one bucket can never escape the prefix it is written under.
    """
    if not isinstance(key, str) or not key:
        raise StorageError("unsafe key: empty")
    if _CONTROL.search(key):
        raise StorageError(f"unsafe key {key!r}: control or undecodable character")
    if "\\" in key:
        raise StorageError(f"unsafe key {key!r}: backslash")
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise StorageError(f"unsafe key {key!r}: absolute path")
    parts = [p for p in key.split("/") if p != ""]
    if not parts or any(p in (".", "..") for p in parts):
        raise StorageError(f"unsafe key {key!r}: '.' or '..' segment")
    return "/".join(parts)


@dataclass(frozen=True)
class Entry:
    """One listed object. `error` is set for entries that cannot be read as a regular file."""

    key: str  # relative to the listed root, '/'-separated (may be unsafe; check with safe_key)
    url: str  # full URL or path to read it
    size: int
    error: str | None = None
    etag: str | None = None


def _walk_local(root: Path) -> list[Entry]:
    """Walk a local folder without following directory symlinks; classify every entry."""
    out: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=None, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        names = sorted(filenames)
        # os.walk lists symlinks to directories in dirnames; treat them as entries, not folders.
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                dirnames.remove(d)
                names.append(d)
        for name in sorted(names):
            full = os.path.join(dirpath, name)
            key = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            out.append(_classify_local(full, key))
        # Unreadable directories: os.walk silently skips them, so report them here.
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.access(full, os.R_OK | os.X_OK):
                key = d if rel_dir == "." else f"{rel_dir}/{d}"
                out.append(Entry(key=key, url=full, size=0, error="unreadable directory"))
    return out


def _classify_local(full: str, key: str) -> Entry:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return Entry(key=key, url=full, size=0, error="file name is not valid UTF-8")
    try:
        lst = os.lstat(full)
    except OSError as e:
        return Entry(key=key, url=full, size=0, error=f"cannot stat: {e.strerror}")
    if stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(full)
        except OSError:
            return Entry(key=key, url=full, size=0, error="broken symlink")
        if stat.S_ISDIR(st.st_mode):
            return Entry(key=key, url=full, size=0, error="symlink to a directory (not followed)")
    else:
        st = lst
    if not stat.S_ISREG(st.st_mode):
        kind = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
                stat.S_IFBLK: "block device"}.get(stat.S_IFMT(st.st_mode), "special file")
        return Entry(key=key, url=full, size=0, error=f"not a regular file ({kind})")
    if not os.access(full, os.R_OK):
        return Entry(key=key, url=full, size=st.st_size, error="unreadable (permission denied)")
    return Entry(key=key, url=full, size=st.st_size)


def _remote(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and path of a remote URL, without a listings cache.

    Other processes write into the prefixes obf lists (concurrent publishes, overlapping
    batch-generate runs), and s3fs would answer "not found" for an object missing from a listing
    it cached earlier in this process. Every remote call asks the store itself. A protocol that
    fsspec does not know, or whose package is not installed, is a StorageError."""
    try:
        return url_to_fs(url, use_listings_cache=False)
    except (ValueError, ImportError) as err:
        raise StorageError(f"{url}: {_first_line(err)}") from None


# Where the errors of an object store's client come from: they are not OSErrors (botocore's
# NoCredentialsError, EndpointConnectionError, ...), and s3fs lets some through as they are.
_STORE_CLIENTS = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "adlfs", "azure")
_F = TypeVar("_F", bound=Callable[..., Any])


def _first_line(err: BaseException) -> str:
    """One line for a failure of the store or its client (no credentials, no endpoint, a refused call)."""
    if type(err).__name__ == "NoCredentialsError":
        return "no credentials for the object store (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
    text = (err.args[0] if err.args and isinstance(err.args[0], str) else str(err)).strip().splitlines()
    if not text:
        return type(err).__name__
    return text[0] if isinstance(err, (ValueError, ImportError)) else f"{type(err).__name__}: {text[0]}"


def _one_line_store_errors(func: _F) -> _F:
    """A remote URL's call ends in a StorageError with one line when the store's client fails
    (missing credentials, an unreachable endpoint, a refused request), not in a client library's
    traceback: a bad bucket or environment is the user's input, as a bad path is. Local paths
    keep their errors; obf's own errors pass as they are."""

    @functools.wraps(func)
    def call(url: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(url, *args, **kwargs)
        except ObfError:
            raise
        except Exception as err:
            from_store = isinstance(err, OSError) or type(err).__module__.split(".")[0] in _STORE_CLIENTS
            if is_local(url) or not from_store:
                raise
            raise StorageError(f"{url}: {_first_line(err)}") from None

    return call  # type: ignore[return-value]


@_one_line_store_errors
def list_files(url: str) -> list[Entry]:
    """Every file under `url` (a folder or prefix), sorted by key. A single file lists itself.

    Raises StorageError when `url` does not exist.
    """
    if is_local(url):
        root = local_path(url)
        if root.is_file():
            return [_classify_local(str(root), root.name)]
        if not root.is_dir():
            raise NotFoundError(f"{url}: no such file or directory")
        return sorted(_walk_local(root), key=lambda e: e.key)
    fs, path = _remote(url)
    path = path.rstrip("/")
    try:
        if fs.isfile(path):
            info = fs.info(path)
            return [Entry(key=path.rsplit("/", 1)[-1], url=url, size=int(info.get("size") or 0),
                          etag=_etag(info))]
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        raise NotFoundError(f"{url}: no such file or prefix") from None
    except PermissionError as e:
        raise StorageError(f"{url}: permission denied ({e})") from None
    if not found and not fs.exists(path):
        raise NotFoundError(f"{url}: no such file or prefix")
    protocol = url.split("://", 1)[0]
    out = []
    for p, info in found.items():
        if info.get("type") == "directory":
            continue
        key = p[len(path):].lstrip("/")
        if not key:
            continue
        out.append(Entry(key=key, url=f"{protocol}://{p}", size=int(info.get("size") or 0), etag=_etag(info)))
    return sorted(out, key=lambda e: e.key)


def _etag(info: dict) -> str | None:
    tag = info.get("ETag") or info.get("etag")
    return str(tag).strip('"') if tag else None


@_one_line_store_errors
def read_bytes(url: str) -> bytes:
    """Read a whole object. Raises StorageError with a one-line reason."""
    try:
        if is_local(url):
            return local_path(url).read_bytes()
        fs, path = _remote(url)
        return fs.cat_file(path)
    except FileNotFoundError:
        raise NotFoundError(f"{url}: not found") from None
    except PermissionError:
        raise StorageError(f"{url}: permission denied") from None
    except IsADirectoryError:
        raise StorageError(f"{url}: is a directory") from None
    except NotADirectoryError:
        raise NotFoundError(f"{url}: not found (a folder on its path is a file)") from None


@_one_line_store_errors
def download(url: str, dest: Path, chunk: int = 8 << 20) -> None:
    """Copy one object to the local file `dest`, streamed in chunks (a shard does not pass through
    memory whole). Raises StorageError with a one-line reason."""
    try:
        if is_local(url):
            import shutil

            shutil.copyfile(local_path(url), dest)
            return
        fs, path = _remote(url)
        with fs.open(path, "rb") as src, open(dest, "wb") as out:
            while block := src.read(chunk):
                out.write(block)
    except FileNotFoundError:
        raise NotFoundError(f"{url}: not found") from None
    except PermissionError:
        raise StorageError(f"{url}: permission denied") from None


@_one_line_store_errors
def exists(url: str) -> bool:
    if is_local(url):
        return local_path(url).exists()
    fs, path = _remote(url)
    return fs.exists(path)


@_one_line_store_errors
def remove(url: str) -> None:
    """Delete one file or object; one that is not there is fine."""
    if is_local(url):
        local_path(url).unlink(missing_ok=True)
        return
    fs, path = _remote(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


@_one_line_store_errors
def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write `data` so that readers see the old object or the whole new one, never a part.

    Local: a temp file in the same folder, fsync, then `os.replace`. Object stores: one PUT.
    """
    if is_local(url):
        path = local_path(url)
        tmp = write_temp_beside(path, lambda p: Path(p).write_bytes(data))
        try:
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)  # gone after a rename; left only by a failed one
        return
    fs, path = _remote(url)
    fs.pipe_file(path, data)


@_one_line_store_errors
def read_with_etag(url: str) -> tuple[bytes, str]:
    """An object's bytes and a tag of that version, for a later `write_if(url, ..., etag=tag)`.

    Object stores: the ETag is read first, then the body, so that any change after the tag was
    read makes the later conditional write fail. Local files: the tag is the content's sha256."""
    if is_local(url):
        data = read_bytes(url)
        return data, "sha256:" + hashlib.sha256(data).hexdigest()
    fs, path = _remote(url)
    try:
        tag = _etag(fs.info(path))
        # one plain GET: a file object would insist that the object keep the tag it opened with,
        # and fail when a concurrent writer replaced it, which is exactly the case to read here
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise NotFoundError(f"{url}: not found") from None
    return data, tag or ""


@_one_line_store_errors
def write_if(url: str, data: bytes, *, etag: str | None) -> None:
    """Write `data` only if the object is absent (`etag` None) or still the version `etag` names.
    Raises ConflictError otherwise; the object is then left as it was.

    Object stores: one PUT with If-None-Match: * or If-Match: <etag> (S3 conditional writes), so
    two writers racing for the same key cannot both succeed. Local files: creation is atomic
    (a hard link of a finished temp file, which fails if the name exists); a swap compares the
    content hash right before the rename, which narrows but does not close the race between
    two local processes."""
    if is_local(url):
        path = local_path(url)
        tmp = write_temp_beside(path, lambda p: Path(p).write_bytes(data))
        try:
            if etag is None:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ConflictError(f"{url}: exists") from None
            else:
                try:
                    current = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
                except FileNotFoundError:
                    raise ConflictError(f"{url}: gone since it was read") from None
                if current != etag:
                    raise ConflictError(f"{url}: changed since it was read")
                os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    fs, path = _remote(url)
    try:
        if etag is None:
            fs.pipe_file(path, data, mode="create")
        else:
            fs.pipe_file(path, data, IfMatch=f'"{etag}"')
    except FileExistsError:
        raise ConflictError(f"{url}: exists") from None
    except OSError as e:
        if "pre-condition" in str(e).lower() or "precondition" in str(e).lower():
            raise ConflictError(f"{url}: changed since it was read") from None
        raise


def temp_dir_beside(dest: Path) -> Path:
    """A new temp dir next to `dest` (same filesystem, so it can be renamed into place), with the
    permissions a plain `mkdir` would give."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_temp_beside(path: Path, write: Callable[[str], None], *, durable: bool = True) -> str:
    """Write a new temp file in `path`'s folder with `write(temp_path)`, fsync it (unless not
    `durable`), and return its path: what every atomic writer of obf (files, conditional writes,
    checkpoints) renames into place. The mode is what a plain `open()` would give (mkstemp's is
    0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


OUTPUT_MARK = ".obf-output"  # in every dir an obf command builds: {"command": ...}


def _within(a: Path, b: Path) -> bool:
    """True when `a` is `b` or lies inside it."""
    return a == b or b in a.parents


def check_output_dir(dest: str | Path, command: str, inputs: Sequence[str | Path | None] = ()) -> None:
    """Refuse, with one line, an output dir that a command may not replace: one that equals, holds
    or lies inside one of its (local) inputs, or an existing dir that is neither empty nor marked
    (`OUTPUT_MARK`) as written by the same obf command. Nothing is touched."""
    out = Path(dest).resolve()
    for inp in inputs:
        if inp is None or not is_local(str(inp)):
            continue
        src = local_path(str(inp)).resolve()
        if _within(out, src) or _within(src, out):
            relation = "is" if out == src else ("holds" if _within(src, out) else "lies inside")
            raise StorageError(f"{dest}: the output dir {relation} the input {inp}; choose another output")
    if not out.exists():
        return
    if not out.is_dir():
        raise StorageError(f"{dest}: exists and is not a directory; obf writes its output dir there")
    if not any(out.iterdir()):
        return
    mark = out / OUTPUT_MARK
    try:
        owner = json.loads(mark.read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StorageError(f"{dest}: exists and was not written by obf {command}; remove it or choose another "
                           "output (obf replaces only what it wrote)") from None
    if owner != command:
        raise StorageError(f"{dest}: was written by obf {owner}, not obf {command}; choose another output")


def mark_output_dir(tmp: Path, command: str) -> None:
    """Mark a dir being built as the output of `command`, so a later run may replace it."""
    (tmp / OUTPUT_MARK).write_text(json.dumps({"command": command}) + "\n")


@contextmanager
def cache_lock(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on `dest` across the processes of this machine (`fcntl.flock` on
    `<dest>.lock`), so that processes sharing a cache (Dask workers, torchrun ranks) fill an entry
    once: the first downloads and verifies, the others wait and find it done."""
    import fcntl

    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def replace_dir(new: Path, dest: Path) -> None:
    """Move the finished dir `new` to `dest`, replacing what was there (old one removed after)."""
    import shutil

    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
