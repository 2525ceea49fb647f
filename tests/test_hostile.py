"""Hostile input and faults (issue 17): non-regular files, oversized objects, unsafe
schemes, ids that would share a file, clashing columns, corrupt parts, signals, hung S3."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pytest

from pulse_ray.io import storage
from pulse_ray.job import metadata as md
from pulse_ray.job.in_process import InProcessExecutor
from pulse_ray.job.output import Output
from pulse_ray.job.steps import PrepareStep
from pulse_ray.job.write_step import WriteStep
from pulse_ray.search.options import SearchOptions

from .conftest import FakeSearchStep, png_bytes


def _in_thread(fn, timeout=60):
    """``fn()`` in a daemon thread; fails the test (instead of hanging it) past ``timeout``."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout}s (hung)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _search():
    step = FakeSearchStep(SearchOptions(restarts=1, steps=1))
    step.setup()
    return step


def _run(table, out, **prepare):
    steps = [PrepareStep(32, **prepare), _search(), WriteStep(Output(out))]
    return pa.concat_tables(InProcessExecutor(batch_size=max(1, len(table))).run([table], steps))


# ----------------------------------------------------------------------------- item 2: what is read


def test_only_regular_files_are_read_and_never_past_the_limit(tmp_path):
    store = storage.Storage()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(storage.StorageError, match="not a regular file \\(a FIFO\\)"):
        _in_thread(lambda: store.read_bytes(str(fifo)), timeout=20)
    with pytest.raises(storage.StorageError, match="not a regular file \\(a character device\\)"):
        _in_thread(lambda: store.read_bytes("/dev/zero", max_bytes=1024), timeout=20)
    with pytest.raises(storage.StorageError, match="is a directory"):
        store.read_bytes(str(tmp_path))
    sparse = tmp_path / "sparse.png"
    with open(sparse, "wb") as f:
        f.truncate(2 * 1024**3)  # 2 GiB, no blocks on disk
    with pytest.raises(storage.TooLarge, match=f"{2 * 1024**3} bytes, over the 1048576-byte limit"):
        store.read_bytes(str(sparse), max_bytes=1024**2)
    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * 1000)
    assert store.read_bytes(str(exact), max_bytes=1000) == b"x" * 1000
    with pytest.raises(storage.TooLarge):
        store.read_bytes(str(exact), max_bytes=999)
    assert store.read_bytes("file://" + str(exact)) == b"x" * 1000


def test_s3_objects_are_refused_by_size_before_the_body(s3):
    store = storage.Storage(s3.endpoint)
    s3.client.put_object(Bucket=s3.bucket, Key="big.png", Body=b"y" * 5000)
    assert store.read_bytes(s3.uri("big.png"), max_bytes=5000) == b"y" * 5000
    with pytest.raises(storage.TooLarge, match="5000 bytes, over the 4999-byte limit"):
        store.read_bytes(s3.uri("big.png"), max_bytes=4999)


def test_bad_uris_fail_their_rows_and_the_good_rows_complete(tmp_path):
    (tmp_path / "good.png").write_bytes(png_bytes(8, 8, 1))
    os.mkfifo(tmp_path / "fifo.png")
    with open(tmp_path / "sparse.png", "wb") as f:
        f.truncate(2 * 1024**3)
    rows = {"good": str(tmp_path / "good.png"), "fifo": str(tmp_path / "fifo.png"), "zero": "/dev/zero",
            "sparse": str(tmp_path / "sparse.png"), "web": "http://example.invalid/a.png",
            "folder": str(tmp_path)}
    table = pa.table({"id": list(rows), "uri": list(rows.values())})
    out = str(tmp_path / "out")
    _in_thread(lambda: _run(table, out), timeout=120)
    by = {r["id"]: r for r in md.read_metadata(out).to_pylist()}
    assert set(by) == set(rows)
    assert by["good"]["status"] == "ok"
    expect = {"fifo": ("read_error", "not a regular file \\(a FIFO\\)"),
              "zero": ("read_error", "not a regular file \\(a character device\\)"),
              "sparse": ("too_large", "over the 67108864-byte limit"),
              "web": ("bad_uri", "unsupported URI scheme 'http'"),
              "folder": ("read_error", "is a directory")}
    import re

    for rid, (kind, pattern) in expect.items():
        r = by[rid]
        assert r["status"] == "failed" and r["error_kind"] == kind, (rid, r["error_kind"], r["error"])
        assert re.search(pattern, r["error"]), (rid, r["error"])


# ----------------------------------------------------------------------------- item 1: ids are names


def test_a_percent_encoded_id_names_exactly_that_file_on_a_file_uri_output(tmp_path):
    out_dir = tmp_path / "out"
    out = "file://" + str(out_dir)
    ids = ["%2e%2e/%2e%2e/escaped", "a%2Fb", "a/b", "q?x#y"]
    table = pa.table({"id": ids, "image": [png_bytes(8, 8, k) for k in range(len(ids))]})
    _run(table, out)
    by = {r["id"]: r for r in md.read_metadata(out).to_pylist()}
    assert [by[i]["status"] for i in ids] == ["ok"] * len(ids)
    written = sorted(os.path.relpath(os.path.join(d, f), out_dir) for d, _, fs in os.walk(out_dir) for f in fs
                     if not d.endswith("metadata"))
    assert written == sorted(f"sr/{i}.png" for i in ids)
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path.parent / "escaped.png").exists()
    for i in ids:  # each row's sr_uri names its own file
        assert storage.local_path(by[i]["sr_uri"]) == str(out_dir / "sr" / f"{i}.png")
        assert storage.exists(by[i]["sr_uri"])


def test_path_clashes_are_found_case_insensitively_and_between_files_and_folders():
    from pulse_ray.io.images import path_clashes

    assert path_clashes(["a", "b", "a/b", "A.png", "x/../y"]) == []
    pairs = {(a, b) for a, b, _ in path_clashes(["Face", "face", "a", "a.png/inner", "caf\u00e9", "cafe\u0301"])}
    assert pairs == {("Face", "face"), ("a", "a.png/inner"), ("caf\u00e9", "cafe\u0301")}
    assert path_clashes(["a", "a/r0.png/x"]) == []
    assert {(a, b) for a, b, _ in path_clashes(["a", "a/r0.png/x"], restarts=True)} == {("a", "a/r0.png/x")}


def test_submit_refuses_ids_that_would_share_a_file_naming_the_pair(tmp_path, fake_search):
    from pulse_ray.io.manifest import write_table
    from pulse_ray.job.submit import ManifestError, submit

    from .conftest import job_options

    man = tmp_path / "m.parquet"
    write_table(pa.table({"id": ["ok1", "Face", "face"], "image": [png_bytes(8, 8, k) for k in range(3)]}), str(man))
    out = tmp_path / "out"
    with pytest.raises(ManifestError, match="'Face' and 'face'"):
        submit(str(man), str(out), job_options(restarts=1, steps=1))
    assert not out.exists()
