import pytest

from obf.core import storage
from obf.core.storage import StorageError, safe_key


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
