"""The job's steps and metadata, in-process (no Ray), with a fake search."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from pulse_ray.io import storage
from pulse_ray.io.manifest import write_table
from pulse_ray.job import metadata as md
from pulse_ray.job.in_process import InProcessExecutor
from pulse_ray.job.output import Output
from pulse_ray.job.steps import PrepareStep, Step
from pulse_ray.job.write_step import WriteStep
from pulse_ray.search.options import SearchOptions

from .conftest import FakeSearchStep, bomb_png, png_bytes


def _search(upsample_fn=None, **search):
    step = FakeSearchStep(SearchOptions(**search), upsample_fn=upsample_fn)
    step.setup()
    return step


def _run(table, out, save_restarts=False, skip=frozenset()):
    steps = [PrepareStep(32, skip_ids=skip), _search(restarts=2, steps=3, save_restarts=save_restarts),
             WriteStep(Output(out), save_restarts)]
    return pa.concat_tables(InProcessExecutor(batch_size=len(table)).run([table], steps))


def test_every_step_follows_the_step_protocol(tmp_path):
    for step in (PrepareStep(32), _search(), WriteStep(Output(str(tmp_path)))):
        assert isinstance(step, Step) and step.name in ("prepare", "search", "write")
    assert [s.actor for s in (PrepareStep(32), _search(), WriteStep(Output(str(tmp_path))))] == [False, True, False]


def test_search_step_hands_the_keep_rule_to_the_search():
    seen = []

    def recording(lrs, generator, options):
        seen.append(options.keep)
        from .conftest import fake_upsample

        return fake_upsample(lrs, generator, options)

    table = pa.table({"id": ["a"], "image": [png_bytes(8, 8)]})
    for keep in ("closest", "realistic"):
        t = PrepareStep(32)(table)
        out = _search(recording, restarts=1, steps=1, keep=keep)(t)
        assert out.column("status").to_pylist() == ["ok"]
    assert seen == ["closest", "realistic"]


def test_bad_rows_become_failed_rows_and_good_ones_complete(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes(8, 8, 1))
    (tmp_path / "trunc.png").write_bytes(png_bytes(16, 16, 2)[:60])
    rows = [
        ("good/bytes", png_bytes(16, 16, 0), None),
        ("good/uri", None, str(tmp_path / "ok.png")),
        ("missing", None, str(tmp_path / "nope.png")),
        ("truncated", None, str(tmp_path / "trunc.png")),
        ("garbage", b"not an image", None),
        ("badsize", png_bytes(12, 12), None),
        ("notsquare", png_bytes(8, 16), None),
        ("bomb", bomb_png(), None),
        ("../escape", png_bytes(8, 8), None),
        ("", png_bytes(8, 8), None),
        ("ctl\x07", png_bytes(8, 8), None),
        ("/abs", png_bytes(8, 8), None),
        ("x" * 600, png_bytes(8, 8), None),
        ("noimage", None, None),
    ]
    table = pa.table({
        "id": pa.array([r[0] for r in rows], pa.string()),
        "image": pa.array([r[1] for r in rows], pa.binary()),
        "uri": pa.array([r[2] for r in rows], pa.string()),
        "status": pa.array(["from-manifest"] * len(rows)),  # clashes with a metadata column
        "tag": pa.array(list(range(len(rows))), pa.int16()),
    })
    out = str(tmp_path / "out")
    progress = _run(table, out)
    assert progress.num_rows == len(rows)
    meta = md.read_metadata(out)
    by = {r["id"]: r for r in meta.to_pylist()}
    assert set(by) == {r[0] for r in rows}
    assert by["good/bytes"]["status"] == "ok" and by["good/bytes"]["factor"] == 2
    assert by["good/uri"]["status"] == "ok" and by["good/uri"]["factor"] == 4
    assert by["good/uri"]["sr_uri"] == os.path.join(out, "sr", "good/uri.png")
    assert storage.exists(by["good/bytes"]["sr_uri"])
    expect = {
        "missing": ("missing_image", "no such file"),
        "truncated": (None, "truncated|corrupt"),
        "garbage": ("bad_image", "not a readable image"),
        "badsize": ("bad_size", "12x12"),
        "notsquare": ("bad_size", "square"),
        "bomb": ("too_large", "decompression bomb"),
        "../escape": ("unsafe_id", "'..' path segment"),
        "": ("unsafe_id", "empty"),
        "ctl\x07": ("unsafe_id", "control characters"),
        "/abs": ("unsafe_id", "absolute"),
        "x" * 600: ("unsafe_id", "512-byte limit"),
        "noimage": ("bad_image", "no image"),
    }
    import re

    for rid, (kind, pattern) in expect.items():
        r = by[rid]
        assert r["status"] == "failed" and r["sr_uri"] is None, rid
        assert re.search(pattern, r["error"]), (rid, r["error"])
        if kind:
            assert r["error_kind"] == kind, (rid, r["error_kind"])
    # manifest columns carried untouched; a clashing one renamed
    assert by["bomb"]["tag"] == 7 and meta.schema.field("tag").type == pa.int16()
    assert by["good/uri"]["input_status"] == "from-manifest"
    # nothing outside OUT/sr except metadata; no stray files
    written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert [w for w in written if not w.startswith("metadata/")] == ["sr/good/bytes.png", "sr/good/uri.png"]


def test_save_restarts_and_skip_ids(tmp_path):
    table = pa.table({"id": ["a", "b"], "image": pa.array([png_bytes(8, 8, 1), png_bytes(8, 8, 2)], pa.binary())})
    out = str(tmp_path / "o")
    prog = _run(table, out, save_restarts=True, skip=frozenset({"b"}))
    assert prog.column("id").to_pylist() == ["a"]
    assert sorted(os.listdir(os.path.join(out, "sr", "a"))) == ["r0.png", "r1.png"]
    r = md.read_restarts(out)
    assert sorted(zip(r.column("id").to_pylist(), r.column("restart").to_pylist())) == [("a", 0), ("a", 1)]
    assert r.column("best").to_pylist().count(True) == 1


def test_search_failure_is_isolated_to_its_row(tmp_path):
    from .conftest import fake_upsample

    def flaky(lrs, generator, options):
        if any(lr.shape[-1] == 4 for lr in lrs):
            raise RuntimeError("boom on 4 px")
        return fake_upsample(lrs, generator, options)

    t = pa.table({"id": ["a", "b"], "image": pa.array([png_bytes(8, 8), png_bytes(4, 4)], pa.binary())})
    t = PrepareStep(32)(t)
    t = _search(flaky, restarts=1, steps=1)(t)
    st = dict(zip(t.column("id").to_pylist(), t.column("status").to_pylist()))
    assert st == {"a": "ok", "b": "failed"}
    assert "boom on 4 px" in t.column("error").to_pylist()[1]


def test_dedup_prefers_ok_then_latest_and_compaction(tmp_path):
    out = str(tmp_path)
    now = datetime.now(timezone.utc)

    def part(name, rows):
        t = pa.Table.from_pylist(
            [dict(id=i, status=s, finished_at=now + timedelta(seconds=k), seconds=1.0) for i, s, k in rows],
            schema=pa.schema([md.METADATA_FIELDS[0], md.METADATA_FIELDS[1], md.METADATA_FIELDS[-1],
                              pa.field("seconds", pa.float64())]),
        )
        write_table(t, storage.join(out, "metadata", name))

    part("part-1.parquet", [("a", "failed", 0), ("b", "ok", 0), ("c", "ok", 0)])
    part("part-2.parquet", [("a", "ok", 1), ("b", "failed", 2), ("c", "ok", 5)])
    assert md.done_ids(out) == {"a", "b", "c"}
    t = md.read_metadata(out)
    assert t.num_rows == 3
    by = {r["id"]: r for r in t.to_pylist()}
    assert by["a"]["status"] == "ok" and by["b"]["status"] == "ok"
    assert by["c"]["finished_at"] == now + timedelta(seconds=5)
    assert md.read_metadata(out, dedup_rows=False).num_rows == 6
    assert md.compact(out) == 3
    files = md.metadata_files(out)
    assert len(files) == 1 and md.read_metadata(out, dedup_rows=False).num_rows == 3


def test_part_names_are_deterministic():
    assert md.part_name(["a", "b"]) == md.part_name(["a", "b"]) != md.part_name(["a", "c"])


def test_save_restarts_layout_refuses_ids_that_would_collide(tmp_path):
    """``a`` keeps its restarts at sr/a/r<k>.png; an id ``a/r0`` would be the same file: it fails."""
    from pulse_ray.job.output import is_restart_name

    assert is_restart_name("a/r0") and is_restart_name("x/y/r12")
    assert not any(is_restart_name(i) for i in ("r0", "a/r", "a/r0.png", "a/rx1", "a/b", "ar0"))
    ids = ["a", "a/r0", "a/r7", "b/r1x", "r0"]
    table = pa.table({"id": ids, "image": pa.array([png_bytes(8, 8, k) for k in range(len(ids))], pa.binary())})
    out = str(tmp_path / "o")
    t = PrepareStep(32, reserve_restart_names=True)(table)
    t = _search(restarts=2, steps=1, save_restarts=True)(t)
    WriteStep(Output(out), save_restarts=True)(t)
    by = {r["id"]: r for r in md.read_metadata(out).to_pylist()}
    assert [i for i in ids if by[i]["status"] == "ok"] == ["a", "b/r1x", "r0"]
    for rid in ("a/r0", "a/r7"):
        assert by[rid]["error_kind"] == "unsafe_id" and "restart" in by[rid]["error"] and "'a'" in by[rid]["error"]
    r = md.read_restarts(out)
    uris = dict(zip(zip(r.column("id").to_pylist(), r.column("restart").to_pylist()), r.column("sr_uri").to_pylist()))
    assert uris == {(i, k): os.path.join(out, "sr", i, f"r{k}.png") for i in ("a", "b/r1x", "r0") for k in (0, 1)}
    written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert [w for w in written if w.startswith("sr/")] == sorted(
        ["sr/a.png", "sr/b/r1x.png", "sr/r0.png"] + [os.path.relpath(u, out) for u in uris.values()])
    assert len(set(written)) == len(written) == 9 + len(md.metadata_files(out)) + len(md.metadata_files(out, "restarts"))
    # without restart images in the output the same ids are fine
    t = PrepareStep(32)(table)
    assert t.column("status").to_pylist() == ["ok"] * len(ids)


def test_save_restarts_into_an_output_with_clashing_results_is_a_usage_error(tmp_path, fake_search):
    from pulse_ray.job.submit import JobOptions, UsageError, submit

    out = str(tmp_path / "o")
    table = pa.table({"id": ["a", "a/r1"], "image": pa.array([png_bytes(8, 8, 1), png_bytes(8, 8, 2)], pa.binary())})
    _run(table, out)  # without --save-restarts: both ok, sr/a.png and sr/a/r1.png
    manifest = str(tmp_path / "m.parquet")
    write_table(table, manifest)
    before = sorted(os.listdir(os.path.join(out, "sr", "a")))
    with pytest.raises(UsageError, match=r"--save-restarts: .* 1 id\(s\) ending in /r<number> \(e.g. 'a/r1'\)"):
        submit(manifest, out, JobOptions(search=SearchOptions(save_restarts=True), overwrite=True, progress=False))
    assert sorted(os.listdir(os.path.join(out, "sr", "a"))) == before == ["r1.png"]


def test_dedup_for_an_overwrite_run_keeps_the_redone_rows(tmp_path):
    now = datetime.now(timezone.utc)
    schema = pa.schema([md.METADATA_FIELDS[0], md.METADATA_FIELDS[1], md.METADATA_FIELDS[-1]])
    old = [dict(id=i, status="ok", finished_at=now) for i in ("a", "b", "c")]
    new = [dict(id="a", status="failed", finished_at=now + timedelta(seconds=5)),
           dict(id="b", status="ok", finished_at=now + timedelta(seconds=6))]
    t = pa.Table.from_pylist(old + new, schema=schema)
    plain = {r["id"]: r for r in md.dedup(t).to_pylist()}
    assert plain["a"]["finished_at"] == now  # readers: ok beats failed
    redo = {r["id"]: r for r in md.dedup(t, redone={"a", "b"}).to_pylist()}
    assert redo["a"]["status"] == "failed" and redo["b"]["finished_at"] == now + timedelta(seconds=6)
    assert redo["c"]["finished_at"] == now
    out = str(tmp_path)
    write_table(t, storage.join(out, "metadata", "part-1.parquet"))
    assert md.compact(out, redone=frozenset({"a", "b"})) == 3
    assert {r["id"]: r["status"] for r in md.read_metadata(out).to_pylist()} == {"a": "failed", "b": "ok", "c": "ok"}


def test_metadata_parts_from_before_a_column_existed_read_as_null(tmp_path):
    out = str(tmp_path)
    now = datetime.now(timezone.utc)
    full = pa.schema(md.METADATA_FIELDS)
    row = {**{f.name: None for f in md.METADATA_FIELDS}, "status": "ok", "finished_at": now}
    write_table(pa.Table.from_pylist([{**row, "id": "new", "keep": "closest", "search_loss": 0.3,
                                                   "grey": True}], schema=full),
                storage.join(out, md.METADATA_DIR, "part-new.parquet"))
    old = pa.schema([f for f in md.METADATA_FIELDS if f.name not in ("keep", "search_loss", "grey")])  # before 2026-11-28
    write_table(pa.Table.from_pylist([{k: v for k, v in {**row, "id": "old"}.items() if k in old.names}], schema=old),
                storage.join(out, md.METADATA_DIR, "part-old.parquet"))
    got = {r["id"]: (r["keep"], r["search_loss"], r["grey"]) for r in md.read_metadata(out).to_pylist()}
    assert got == {"new": ("closest", 0.3, True), "old": (None, None, None)}


def test_a_grey_input_is_recorded_and_written_grey(tmp_path):
    """The real search step on the bundled generator: a grey LR comes back grey with grey=True."""
    from pulse_ray.job.search_step import SearchStep

    table = pa.table({"id": ["grey", "colour"], "image": [png_bytes(8, 8, 3, mode="L"), png_bytes(8, 8, 4)]})
    search = SearchStep(SearchOptions(restarts=1, steps=2))
    search.setup()
    steps = [PrepareStep(search.g.resolution), search, WriteStep(Output(str(tmp_path)))]
    list(InProcessExecutor(batch_size=2).run([table], steps))
    rows = {r["id"]: r for r in md.read_metadata(str(tmp_path)).to_pylist()}
    assert rows["grey"]["grey"] is True and rows["colour"]["grey"] is False
    from PIL import Image

    grey = np.asarray(Image.open(rows["grey"]["sr_uri"].removeprefix("file://")).convert("RGB")).astype(int)
    colour = np.asarray(Image.open(rows["colour"]["sr_uri"].removeprefix("file://")).convert("RGB")).astype(int)
    assert (grey.max(2) - grey.min(2)).max() == 0
    assert (colour.max(2) - colour.min(2)).max() > 0
