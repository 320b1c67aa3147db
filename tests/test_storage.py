import subprocess
import sys

import pytest

from obf.core import storage
from obf.core.storage import NotFoundError, StorageError, safe_key

from .conftest import no_aws_credentials


@pytest.mark.parametrize("key", ["a.txt", "a/b/c.bin", "dir//x.wav", "ünïcode/файл.txt"])
def test_safe_key_accepts(key):
    assert safe_key(key) == "/".join(p for p in key.split("/") if p)


@pytest.mark.parametrize("key", ["", "../x", "a/../../x", "/etc/passwd", "a/./b", "a\x00b", "a\nb", "a\x7fb",
                                 "a\\b", "C:evil", "bad\udcff.txt", "."])
def test_safe_key_rejects(key):
    with pytest.raises(StorageError):
        safe_key(key)


def test_atomic_write_local_and_memory(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    storage.write_bytes_atomic(str(target), b"abc")
    storage.write_bytes_atomic(str(target), b"defg")
    assert target.read_bytes() == b"defg"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]  # no temp files left
    storage.write_bytes_atomic("memory://obf-test/a/b.bin", b"xyz")
    assert storage.read_bytes("memory://obf-test/a/b.bin") == b"xyz"
    assert [e.key for e in storage.list_files("memory://obf-test")] == ["a/b.bin"]


def test_list_missing_is_an_error(tmp_path):
    with pytest.raises(StorageError, match="no such"):
        storage.list_files(str(tmp_path / "nope"))
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(str(tmp_path / "nope"))


def test_a_path_through_a_file_and_an_unknown_protocol_are_one_line_errors(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(NotFoundError, match="a folder on its path is a file"):
        storage.read_bytes(str(tmp_path / "a.txt" / "latest.json"))
    with pytest.raises(StorageError, match="Protocol not known"):
        storage.list_files("nosuchprotocol://bucket/x")


def test_a_store_that_fails_is_one_line_not_a_client_traceback(tmp_path):
    """Without credentials, every command that reads an S3 URL ends in one line naming the URL and
    what to set (botocore's NoCredentialsError used to surface as a 40-line traceback). A mistyped
    registry or name lists nothing and says so."""
    obf = [sys.executable, "-m", "obf.cli"]
    for args in (["ingest", "s3://obf-no-such-bucket/raw", "--out", str(tmp_path / "ds"), "--params", "none"],
                 ["registry", "list", "s3://obf-no-such-bucket/models", "obf"],
                 ["registry", "show", "s3://obf-no-such-bucket/models", "obf"]):
        r = subprocess.run([*obf, *args], capture_output=True, text=True, env=no_aws_credentials(), timeout=120)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "no credentials for the object store (set AWS_ACCESS_KEY_ID" in r.stderr, (args, r.stderr)
    (tmp_path / "reg").mkdir()
    r = subprocess.run([*obf, "registry", "list", str(tmp_path / "reg"), "obf"], capture_output=True, text=True)
    assert r.returncode == 1 and "no published versions of 'obf'" in r.stderr, r.stderr
    (tmp_path / "reg" / "a.txt").write_text("x")
    r = subprocess.run([*obf, "registry", "show", str(tmp_path / "reg"), "a.txt"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not found" in r.stderr, r.stderr


def test_s3_list_read_write(s3_bucket):
    storage.write_bytes_atomic(f"{s3_bucket}/in/x.txt", b"hello")
    storage.write_bytes_atomic(f"{s3_bucket}/in/deep/y.bin", b"\x00\xff")
    entries = storage.list_files(f"{s3_bucket}/in")
    assert [(e.key, e.size) for e in entries] == [("deep/y.bin", 2), ("x.txt", 5)]
    assert all(e.etag for e in entries)
    assert storage.read_bytes(entries[1].url) == b"hello"


def test_s3_a_listing_never_hides_an_object_written_after_it(s3_bucket):
    """Another process writes into a prefix this process listed: reads must see the new object.

    s3fs caches listings per instance; a cached listing of `v/` without `m.json` used to make
    `read_bytes` and `exists` of `v/m.json` fail with "not found" (a flaky concurrent-publish
    test on CI showed it)."""
    import s3fs

    storage.write_bytes_atomic(f"{s3_bucket}/v/a.txt", b"a")
    assert [e.key for e in storage.list_files(s3_bucket)] == ["v/a.txt"]
    other = s3fs.S3FileSystem(skip_instance_cache=True)  # another process, as far as caches go
    other.pipe_file(f"{s3_bucket[5:]}/v/m.json", b"{}")
    assert storage.exists(f"{s3_bucket}/v/m.json")
    assert storage.read_bytes(f"{s3_bucket}/v/m.json") == b"{}"
    assert [e.key for e in storage.list_files(f"{s3_bucket}/v")] == ["a.txt", "m.json"]


def test_without_torch_a_checkpoint_training_and_export_say_so_in_one_line(tmp_path):
    """The serving install has no torch: `obf generate` on a checkpoint dir, `obf train` and `obf
    export` end in one line naming what to install, not in an import traceback."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "in.txt").write_text("hello\n")
    no_torch = "import sys; sys.modules['torch'] = None; from obf.cli import main; sys.exit(main(sys.argv[1:]))"
    for args in (["generate", str(tmp_path / "model"), str(tmp_path / "in.txt"), "--out", str(tmp_path / "o")],
                 ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "m")],
                 ["export", str(tmp_path / "model"), "--out", str(tmp_path / "x")]):
        r = subprocess.run([sys.executable, "-c", no_torch, *args, "-q", "--params", "none"], capture_output=True,
                           text=True)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "needs torch, which this install lacks" in r.stderr, (args, r.stderr)
