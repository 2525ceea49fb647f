"""pulse_ray.io.storage: local paths, file:// and s3:// (moto server on loopback)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pulse_ray.io import storage


def test_local_write_is_atomic_and_overwrites(tmp_path):
    uri = str(tmp_path / "a" / "b" / "c.bin")
    storage.write_bytes(uri, b"one")
    storage.write_bytes(uri, b"two")
    assert storage.read_bytes(uri) == b"two"
    assert storage.read_bytes("file://" + uri) == b"two"
    # no temporary files left behind
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["c.bin"]
    assert storage.exists(uri) and not storage.exists(uri + ".x")


def test_local_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    uri = str(tmp_path / "x.bin")
    storage.write_bytes(uri, b"old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        storage.write_bytes(uri, b"new-but-broken")
    assert storage.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_missing_local_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        storage.read_bytes(str(tmp_path / "nope"))


def test_list_join_and_hidden_files(tmp_path):
    for rel in ("a.png", "sub/b.PNG", "sub/c.txt", ".hidden.png", "_tmp/d.png", "sub/.tmp-x.png"):
        storage.write_bytes(str(tmp_path / rel), b"x")
    got = storage.list_uris(str(tmp_path), suffix=".png")
    assert got == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.PNG")]
    assert storage.list_uris("file://" + str(tmp_path), suffix=(".txt",)) == ["file://" + str(tmp_path / "sub" / "c.txt")]
    assert storage.list_uris(str(tmp_path / "missing")) == []
    assert storage.join("s3://b/p/", "x", "y.png") == "s3://b/p/x/y.png"
    assert storage.join(str(tmp_path), "x/y") == os.path.join(str(tmp_path), "x/y")


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.read_bytes("gs://bucket/key")


def test_s3_roundtrip_list_exists_delete(s3):
    base = s3.uri("data")
    storage.write_bytes(storage.join(base, "x/1.png"), b"one")
    storage.write_bytes(storage.join(base, "x/2.png"), b"two")
    storage.write_bytes(s3.uri("database/3.png"), b"not under data/")
    storage.write_bytes(storage.join(base, "_tmp/4.png"), b"hidden")
    assert storage.read_bytes(storage.join(base, "x/2.png")) == b"two"
    assert storage.list_uris(base, suffix=".png") == [s3.uri("data/x/1.png"), s3.uri("data/x/2.png")]
    assert storage.exists(s3.uri("data/x/1.png")) and not storage.exists(s3.uri("data/x/9.png"))
    assert storage.isdir(base) and not storage.isdir(s3.uri("nothing"))
    storage.delete(s3.uri("data/x/1.png"))
    assert not storage.exists(s3.uri("data/x/1.png"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(s3.uri("data/x/1.png"))


def test_s3_endpoint_override_and_arrow_filesystem(s3, monkeypatch):
    # the explicit endpoint (--s3-endpoint-url) works without AWS_ENDPOINT_URL, and sets nothing process-wide
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    store = storage.Storage(s3_endpoint_url=s3.endpoint)
    uri = s3.uri("tables/t.parquet")
    fs, path = store.arrow_filesystem(uri)
    pq.write_table(pa.table({"id": ["a", "b"]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("id").to_pylist() == ["a", "b"]
    assert s3.keys("tables/") == ["tables/t.parquet"]
    assert store.exists(uri)
    assert "AWS_ENDPOINT_URL" not in os.environ and storage.Storage().endpoint() is None
    # frozen and picklable: it travels to Ray workers with the steps
    import pickle

    assert pickle.loads(pickle.dumps(store)) == store and pickle.loads(pickle.dumps(store)).exists(uri)


def test_s3_errors_do_not_leak_credentials(s3):
    with pytest.raises(storage.StorageError) as exc:
        storage.read_bytes("s3://no-such-bucket-xyz/k")
    assert "testing" not in str(exc.value)


def test_a_local_write_that_fails_is_one_storage_error_naming_the_file_and_leaves_no_temp(tmp_path):
    store = storage.Storage()
    (tmp_path / "a_file").write_bytes(b"x")
    target = tmp_path / "a_file" / "part.parquet"  # its folder is a file: makedirs fails
    with pytest.raises(storage.StorageError, match=r"cannot write .*a_file/part\.parquet"):
        store.write_bytes(str(target), b"data")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "taken").mkdir()  # os.replace onto a folder fails after the temporary file was written
    with pytest.raises(storage.StorageError, match=r"cannot write .*out/taken"):
        store.write_bytes(str(folder / "taken"), b"data")
    assert sorted(p.name for p in folder.iterdir()) == ["taken"]  # the temporary file is gone
