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


# ----------------------------------------------------------------------------- item 3: carried columns


def test_carried_column_names_are_one_to_one_and_never_metadata_or_internal():
    from pulse_ray.job.metadata import METADATA_NAMES, carried_name

    names = ["status", "input_status", "input_input_status", "error", "_relpath", "__fragment_index", "tag", "uri"]
    carried = [carried_name(c) for c in names]
    assert carried == ["input_status", "input_input_status", "input_input_input_status", "input_error",
                       "input__relpath", "input___fragment_index", "tag", "uri"]
    assert len(set(carried)) == len(carried)
    assert not set(carried) & set(METADATA_NAMES) and not any(c.startswith("_") for c in carried)


def test_clashing_and_reader_columns_never_reach_the_metadata_as_they_are(tmp_path):
    table = pa.table({"id": ["a", "b"], "image": [png_bytes(8, 8, 0), png_bytes(8, 8, 1)],
                      "status": ["s-a", "s-b"], "input_status": ["is-a", "is-b"], "_relpath": ["r", "r"],
                      "tag": [1, 2], "__batch_index": [0, 0]})
    out = str(tmp_path / "out")
    manifest_columns = ("id", "image", "status", "input_status", "_relpath", "tag")  # __batch_index: the reader's
    _run(table, out, columns=manifest_columns)
    meta = md.read_metadata(out)
    extra = meta.column_names[len(md.METADATA_NAMES):]
    assert extra == ["input_status", "input_input_status", "input__relpath", "tag"]
    by = {r["id"]: r for r in meta.to_pylist()}
    assert by["a"]["status"] == "ok" and by["a"]["input_status"] == "s-a" and by["b"]["input_input_status"] == "is-b"
    assert by["a"]["input__relpath"] == "r" and by["b"]["tag"] == 2


def test_columns_the_readers_reserve_are_refused_up_front(tmp_path):
    from pulse_ray.io.manifest import ManifestError, inspect_manifest, write_table

    man = tmp_path / "m.parquet"
    write_table(pa.table({"id": ["a"], "image": [png_bytes(8, 8)], "__fragment_index": [0]}), str(man))
    with pytest.raises(ManifestError, match="'__fragment_index' start with '__'"):
        inspect_manifest(str(man))


@pytest.mark.slow
def test_a_manifest_with_clashing_columns_compacts_and_resumes(ray_cluster, tmp_path, fake_search):
    from pulse_ray.io.manifest import write_table
    from pulse_ray.job.status import job_status
    from pulse_ray.job.submit import submit

    from .conftest import job_options

    man = tmp_path / "m.parquet"
    n = 5
    write_table(pa.table({"id": [f"i{k}" for k in range(n)], "image": [png_bytes(8, 8, k) for k in range(n)],
                          "status": ["x"] * n, "input_status": ["y"] * n, "_batch": list(range(n))}),
                str(man))
    out = str(tmp_path / "out")
    first = submit(str(man), out, job_options(restarts=1, steps=1, num_cpus=2, progress=False))
    assert (first.ok, first.failed) == (n, 0)
    second = submit(str(man), out, job_options(restarts=1, steps=1, num_cpus=2, progress=False, overwrite=True))
    assert (second.ok, second.processed) == (n, n)
    meta = md.read_metadata(out, dedup_rows=False)
    assert meta.num_rows == n and len(md.metadata_files(out)) == 1  # compacted
    names = meta.column_names
    assert len(set(names)) == len(names) and not any(c.startswith("_") for c in names)
    assert names[len(md.METADATA_NAMES):] == ["input_status", "input_input_status", "input__batch"]
    s = job_status(out)
    assert (s["rows"], s["ok"]) == (n, n)


# ----------------------------------------------------------------------------- item 4: a corrupt part


def _corrupt(path: str) -> bytes:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return data[: len(data) // 2]


def test_a_corrupt_part_is_named_by_readers_and_status(tmp_path):
    from typer.testing import CliRunner

    from pulse_ray.cli import app
    from pulse_ray.job.status import job_status

    out = str(tmp_path / "out")
    for k in range(2):  # two parts
        _run(pa.table({"id": [f"p{k}a", f"p{k}b"], "image": [png_bytes(8, 8, k)] * 2}), out)
    parts = md.metadata_files(out)
    assert len(parts) == 2
    bad = next(p for p in parts if "p1a" in md.read_part(p).column("id").to_pylist())
    _corrupt(bad)
    with pytest.raises(md.CorruptPart, match=bad):
        md.read_metadata(out)
    s = job_status(out)
    assert s["rows"] == 2 and [c["part"] for c in s["corrupt_parts"]] == [bad]
    r = CliRunner().invoke(app, ["status", out])
    assert r.exit_code == 1 and bad in r.output and "rows       2" in r.output


@pytest.mark.slow
def test_submit_sets_a_corrupt_part_aside_and_redoes_only_its_rows(ray_cluster, tmp_path, fake_search):
    from pulse_ray.io.manifest import write_table
    from pulse_ray.job.submit import submit

    from .conftest import job_options

    def manifest(name, ids):
        path = str(tmp_path / name)
        write_table(pa.table({"id": ids, "image": [png_bytes(8, 8, k) for k in range(len(ids))]}), path)
        return path

    out = str(tmp_path / "out")
    opts = dict(restarts=1, steps=1, num_cpus=2, progress=False)
    submit(manifest("a.parquet", ["a0", "a1", "a2"]), out, job_options(compact=False, **opts))
    submit(manifest("b.parquet", ["b0", "b1"]), out, job_options(compact=False, **opts))
    bad = [p for p in md.metadata_files(out) if "b0" in md.read_part(p).column("id").to_pylist()]
    assert len(bad) == 1
    held = md.read_part(bad[0]).column("id").to_pylist()
    kept = _corrupt(bad[0])
    both = manifest("ab.parquet", ["a0", "a1", "a2", "b0", "b1"])
    dry = submit(both, out, job_options(dry_run=True, **opts))
    assert dry.set_aside == bad and os.path.exists(bad[0])  # a dry run names it, moves nothing
    s = submit(both, out, job_options(**opts))
    assert s.set_aside == bad and (s.processed, s.skipped, s.ok) == (len(held), 5 - len(held), 5)
    quarantined = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(out, "quarantine")) for f in fs]
    assert len(quarantined) == 1 and open(quarantined[0], "rb").read() == kept
    meta = md.read_metadata(out, dedup_rows=False)
    assert sorted(meta.column("id").to_pylist()) == ["a0", "a1", "a2", "b0", "b1"]
    assert set(meta.column("status").to_pylist()) == {"ok"}


# ----------------------------------------------------------------------------- item 7: smaller holes


def test_status_of_a_missing_or_unusable_output_is_a_usage_error(tmp_path):
    from typer.testing import CliRunner

    from pulse_ray.cli import app

    r = CliRunner().invoke(app, ["status", str(tmp_path / "typo")])
    assert r.exit_code == 2 and "no such output" in r.output
    r = CliRunner().invoke(app, ["status", "http://example.invalid/out"])
    assert r.exit_code == 2 and "unsupported URI scheme 'http'" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(app, ["status", str(tmp_path / "empty")])
    assert r.exit_code == 0 and "no metadata yet" in r.output


def test_submit_to_an_http_output_is_a_usage_error_and_steps_are_bounded(tmp_path):
    from typer.testing import CliRunner

    from pulse_ray.cli import app
    from pulse_ray.io.manifest import write_table
    from pulse_ray.search.options import OptionError

    man = str(tmp_path / "m.parquet")
    write_table(pa.table({"id": ["a"], "image": [png_bytes(8, 8)]}), man)
    r = CliRunner().invoke(app, ["submit", man, "--output", "http://example.invalid/out"])
    assert r.exit_code == 2 and "unsupported URI scheme 'http'" in r.output
    top = SearchOptions.__dataclass_fields__["steps"].metadata["max"]
    assert SearchOptions(steps=top).steps == top
    with pytest.raises(OptionError, match=f"--steps must be between 1 and {top}"):
        SearchOptions(steps=top + 1)
    r = CliRunner().invoke(app, ["submit", man, "--output", str(tmp_path / "out"), "--steps", str(10**9)])
    assert r.exit_code == 2 and "--steps must be between 1 and" in r.output and not (tmp_path / "out").exists()


def test_written_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        out = str(tmp_path / "out")
        _run(pa.table({"id": ["a"], "image": [png_bytes(8, 8)]}), out)
    finally:
        os.umask(old)
    files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
    assert len(files) == 2  # the SR image and the metadata part
    assert {oct(os.stat(f).st_mode & 0o777) for f in files} == {oct(0o640)}


# ----------------------------------------------------------------------------- item 6: SIGTERM

_SUBMIT_WITH_SLOW_FAKE_SEARCH = '''
import functools, importlib, sys, time
sys.path.insert(0, {repo!r})
from tests.conftest import FakeSearchStep, fake_upsample

def slow(lrs, generator, options):
    time.sleep({pause})
    return fake_upsample(lrs, generator, options)

importlib.import_module("pulse_ray.job.submit").SearchStep = functools.partial(FakeSearchStep, upsample_fn=slow)
from pulse_ray.cli import main
sys.argv = ["pulse-ray", "submit", {manifest!r}, "--output", {out!r}, "--restarts", "1", "--steps", "1",
            "--num-cpus", "2", "--workers", "1", "--batch-size", "1", "--quiet"]
main()
'''


def _submit_process(tmp_path, manifest, out, pause):
    """``pulse-ray submit`` in a process of its own (its search: the fake one, ``pause`` s a batch)."""
    import subprocess
    import sys

    from .conftest import REPO

    script = tmp_path / f"submit_{pause}.py"
    script.write_text(_SUBMIT_WITH_SLOW_FAKE_SEARCH.format(repo=REPO, pause=pause, manifest=manifest, out=out))
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(tmp_path))


@pytest.mark.slow
def test_sigterm_saves_finished_rows_exits_143_and_a_rerun_resumes(tmp_path):
    import signal
    import time

    from pulse_ray.io.manifest import write_table

    n = 12
    manifest = str(tmp_path / "m.parquet")
    write_table(pa.table({"id": [f"i{k:02d}" for k in range(n)], "image": [png_bytes(8, 8, k) for k in range(n)]}),
                manifest)
    out = str(tmp_path / "out")
    proc = _submit_process(tmp_path, manifest, out, pause=2.0)
    deadline = time.monotonic() + 240
    while not md.metadata_files(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert md.metadata_files(out), proc.communicate()[1][-2000:]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stop_seconds = time.monotonic() - t0
    assert proc.returncode == 143, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("error: interrupted (SIGTERM)") and "re-run the same command to resume" in last
    assert "Traceback" not in err and "execution finished" not in err.lower(), err[-3000:]
    assert "SIGTERM received" not in err and "*** " not in err, err[-3000:]  # no C++ stack dump
    saved = md.read_metadata(out, dedup_rows=False)
    done = saved.column("id").to_pylist()
    assert 0 < len(done) < n and len(set(done)) == len(done) and set(saved.column("status").to_pylist()) == {"ok"}
    print(f"SIGTERM to exit: {stop_seconds:.1f} s; {len(done)} of {n} rows saved")

    rerun = _submit_process(tmp_path, manifest, out, pause=0.0)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    meta = md.read_metadata(out, dedup_rows=False)
    assert sorted(meta.column("id").to_pylist()) == [f"i{k:02d}" for k in range(n)]  # nothing lost or doubled
    assert set(meta.column("status").to_pylist()) == {"ok"}
    kept = {r["id"]: r["finished_at"] for r in meta.to_pylist()}
    first = {r["id"]: r["finished_at"] for r in saved.to_pylist()}
    assert all(kept[i] == first[i] for i in first)  # rows done before the signal were not redone


# ----------------------------------------------------------------------------- item 5: a hung S3 endpoint


def test_status_against_an_s3_endpoint_that_never_answers_fails_in_bounded_time(tmp_path, monkeypatch):
    import glob
    import socket
    import tempfile
    import time

    from typer.testing import CliRunner

    from pulse_ray.cli import app

    monkeypatch.setattr(storage, "S3_CONNECT_TIMEOUT", 1.0)  # the same bounds, shortened for the test
    monkeypatch.setattr(storage, "S3_READ_TIMEOUT", 1.0)
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the kernel; nothing ever answers
    try:
        endpoint = "http://127.0.0.1:%d" % silent.getsockname()[1]
        t0 = time.monotonic()
        r = _in_thread(lambda: CliRunner().invoke(app, ["status", "s3://bucket/out", "--s3-endpoint-url", endpoint]),
                       timeout=60)
        seconds = time.monotonic() - t0
    finally:
        silent.close()
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith("error: cannot read the metadata of s3://bucket/out") and "timeout" in lines[0].lower()
    logs = glob.glob(str(tmp_path / "pulse-ray-error-*.log"))
    assert len(logs) == 1 and logs[0] in lines[0] and "Traceback" in open(logs[0]).read()
    assert seconds < 30, seconds  # 2 attempts x 1 s, not minutes
