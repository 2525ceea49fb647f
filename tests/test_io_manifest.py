"""Manifest validation: every unusable manifest is refused with what and where."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pulse_ray.io import storage
from pulse_ray.io.manifest import ManifestError, inspect_manifest, manifest_files


def _write(_path, **cols):
    pq.write_table(pa.table(cols), str(_path))
    return str(_path)


def test_good_manifest_single_file_and_folder(tmp_path):
    f = _write(tmp_path / "m.parquet", id=["a", "b"], uri=["x.png", "y.png"], tag=[1, 2])
    info = inspect_manifest(f)
    names = pq.read_schema(info.files[0]).names
    assert info.ids == ["a", "b"] and "uri" in names and "image" not in names and names[2:] == ["tag"]
    d = tmp_path / "many"
    d.mkdir()
    _write(d / "p0.parquet", id=["a"], image=pa.array([b"\x89PNG"], pa.binary()))
    _write(d / "p1.parquet", id=["b"], image=pa.array([None], pa.binary()))
    (d / "_SUCCESS").write_bytes(b"")
    info = inspect_manifest(str(d))
    assert info.ids == ["a", "b"] and "image" in pq.read_schema(info.files[0]).names and len(info.files) == 2


def test_missing_id_column(tmp_path):
    f = _write(tmp_path / "m.parquet", name=["a"], uri=["x"])
    with pytest.raises(ManifestError, match=r"m.parquet: no 'id' column \(columns: name, uri\)"):
        inspect_manifest(f)


def test_no_image_column(tmp_path):
    f = _write(tmp_path / "m.parquet", id=["a"], path=["x"])
    with pytest.raises(ManifestError, match="no image column: needs 'uri' .* or 'image'"):
        inspect_manifest(f)


def test_wrong_types(tmp_path):
    with pytest.raises(ManifestError, match="column 'id' must be a string"):
        inspect_manifest(_write(tmp_path / "a.parquet", id=[1, 2], uri=["x", "y"]))
    with pytest.raises(ManifestError, match="column 'image' must be binary"):
        inspect_manifest(_write(tmp_path / "b.parquet", id=["a"], image=["not bytes"]))


def test_duplicate_ids_within_and_across_files(tmp_path):
    f = _write(tmp_path / "m.parquet", id=["a", "b", "a"], uri=["x", "y", "z"])
    with pytest.raises(ManifestError, match=r"1 duplicate id\(s\): 'a' at .*m.parquet row 0 and .*m.parquet row 2"):
        inspect_manifest(f)
    d = tmp_path / "d"
    d.mkdir()
    _write(d / "p0.parquet", id=["a", "b"], uri=["x", "y"])
    _write(d / "p1.parquet", id=["c", "b"], uri=["x", "y"])
    with pytest.raises(ManifestError, match=r"'b' at .*p0.parquet row 1 and .*p1.parquet row 1"):
        inspect_manifest(str(d))


def test_null_ids(tmp_path):
    f = _write(tmp_path / "m.parquet", id=pa.array(["a", None], pa.string()), uri=["x", "y"])
    with pytest.raises(ManifestError, match=r"1 null id\(s\), first at row 1"):
        inspect_manifest(f)


def test_unreadable_parquet_and_missing(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ManifestError, match="bad.parquet: not a readable Parquet file"):
        inspect_manifest(str(bad))
    with pytest.raises(ManifestError, match="no such file, and no \\*.parquet files under it"):
        inspect_manifest(str(tmp_path / "nothing.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no \\*.parquet files"):
        manifest_files(str(tmp_path / "empty"))


def test_schemas_that_disagree(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    _write(d / "p0.parquet", id=["a"], uri=["x"], tag=[1])
    _write(d / "p1.parquet", id=["b"], uri=["y"], tag=["text"])
    with pytest.raises(ManifestError, match="schemas disagree"):
        inspect_manifest(str(d))


def test_s3_manifest(s3):
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": ["a", "b"], "uri": ["s3://x/a.png", "s3://x/b.png"]}), buf)
    storage.write_bytes(s3.uri("m/part-0.parquet"), buf.getvalue().to_pybytes())
    info = inspect_manifest(s3.uri("m"))
    assert info.files == [s3.uri("m/part-0.parquet")] and info.ids == ["a", "b"]
    assert inspect_manifest(s3.uri("m/part-0.parquet")).ids == ["a", "b"]
    with pytest.raises(ManifestError, match="no such file"):
        inspect_manifest(s3.uri("nope/m.parquet"))


def test_a_failing_store_is_not_an_unusable_manifest(monkeypatch):
    """Network / access errors of the store: StorageError (exit 1, retried by nightly), not ManifestError
    (exit 2, 'fix the manifest'). A missing object or bytes that are not Parquet stay ManifestError."""
    from pulse_ray.io import manifest as mf

    def stat_fails(uri):
        raise storage.StorageError(f"cannot stat {uri}: SlowDown")

    monkeypatch.setattr(storage.Storage, "exists", lambda self, uri: stat_fails(uri))
    with pytest.raises(storage.StorageError, match="SlowDown") as ei:
        manifest_files("s3://bucket/in/m.parquet")
    assert not isinstance(ei.value, ManifestError)

    monkeypatch.setattr(mf, "manifest_files", lambda m, store=None: ["s3://bucket/in/m.parquet"])
    for exc, expect in (
        (OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curl error"), storage.StorageError),
        (pa.ArrowInvalid("Parquet magic bytes not found in footer"), ManifestError),
        (FileNotFoundError("Path does not exist 'bucket/in/m.parquet'"), ManifestError),
    ):
        def read_schema(uri, store, exc=exc):
            raise exc

        monkeypatch.setattr(mf, "_read_schema", read_schema)
        with pytest.raises(expect) as ei:
            inspect_manifest("s3://bucket/in/m.parquet")
        assert "s3://bucket/in/m.parquet" in str(ei.value)
        if expect is storage.StorageError:
            assert not isinstance(ei.value, ManifestError) and "NETWORK_CONNECTION" in str(ei.value)
