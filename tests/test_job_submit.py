"""``submit`` end to end: embedded Ray (2 CPUs), the real default generator, few steps."""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pulse_ray.io import storage
from pulse_ray.io.manifest import ManifestError, write_table
from pulse_ray.job import metadata as md
from pulse_ray.job.status import job_status
from pulse_ray.job.submit import SubmitOptions, UsageError, submit

from .conftest import GENERATOR_SOURCE, bomb_png, png_bytes

FEW = dict(restarts=2, steps=3, workers=2, batch_size=2, progress=False, generator=GENERATOR_SOURCE)


def _one_row_per_id(out, ids):
    raw = md.read_metadata(out, dedup_rows=False)
    assert sorted(raw.column("id").to_pylist()) == sorted(ids), "exactly one metadata row per manifest row"
    return {r["id"]: r for r in raw.to_pylist()}


def _files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.slow
def test_local_end_to_end_mixed_rows_bad_inputs_then_resume(ray_cluster, generator, tmp_path):
    R = generator.resolution
    lr = R // 4
    src = tmp_path / "in"
    (src / "imgs").mkdir(parents=True)
    (src / "imgs" / "u1.png").write_bytes(png_bytes(lr, lr, 1))
    (src / "imgs" / "u2.jpg").write_bytes(png_bytes(lr // 2, lr // 2, 2, fmt="JPEG"))
    (src / "imgs" / "trunc.png").write_bytes(png_bytes(lr, lr, 3)[:40])
    rows = [
        dict(id="bytes/one", image=png_bytes(lr, lr, 10), uri=None, tag="b1"),
        dict(id="bytes/two", image=png_bytes(lr, lr, 11), uri=None, tag="b2"),
        dict(id="uri-relative", image=None, uri="imgs/u1.png", tag="u1"),  # relative to the manifest
        dict(id="uri-abs", image=None, uri="file://" + str(src / "imgs" / "u2.jpg"), tag="u2"),
        dict(id="missing", image=None, uri=str(src / "imgs" / "later.png"), tag="m"),
        dict(id="../outside", image=png_bytes(lr, lr, 12), uri=None, tag="e"),
        dict(id="truncated", image=None, uri="imgs/trunc.png", tag="t"),
        dict(id="badsize", image=png_bytes(lr + 1, lr + 1, 13), uri=None, tag="s"),
        dict(id="bomb", image=bomb_png(), uri=None, tag="x"),
    ]
    manifest = str(src / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(
        [("id", pa.string()), ("image", pa.binary()), ("uri", pa.string()), ("tag", pa.string())])), manifest)
    out = str(tmp_path / "out")

    s = submit(manifest, out, SubmitOptions(**FEW))
    assert (s.total, s.ok, s.failed, s.skipped, s.processed) == (9, 4, 5, 0, 9)
    by = _one_row_per_id(out, [r["id"] for r in rows])
    for rid in ("bytes/one", "bytes/two", "uri-relative", "uri-abs"):
        r = by[rid]
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["sr_uri"] == os.path.join(out, "sr", rid + ".png")
        with Image.open(r["sr_uri"]) as im:
            assert im.size == (R, R)
        assert math.isfinite(r["downscale_mse"]) and r["downscale_mse"] >= 0
        assert r["steps"] is not None and 1 <= r["steps"] <= 3 and r["restart"] in (0, 1)
        assert r["generator"] == generator.name and r["seconds"] > 0 and r["restarts"] == 2
        assert isinstance(r["converged"], bool)
    assert by["uri-abs"]["factor"] == 8 and by["uri-abs"]["lr_width"] == lr // 2
    assert by["bytes/one"]["tag"] == "b1" and by["bomb"]["tag"] == "x"
    assert "no such file" in by["missing"]["error"] and by["missing"]["error_kind"] == "missing_image"
    assert "'..' path segment" in by["../outside"]["error"]
    assert by["truncated"]["status"] == "failed" and "imgs/trunc.png" in by["truncated"]["error"]
    assert "power of two" in by["badsize"]["error"] or "divide" in by["badsize"]["error"]
    assert "decompression bomb" in by["bomb"]["error"]
    # nothing outside OUT, nothing but sr/ and metadata/ inside
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]
    assert [f for f in _files_under(out) if not f.startswith("metadata/")] == [
        "sr/bytes/one.png", "sr/bytes/two.png", "sr/uri-abs.png", "sr/uri-relative.png"]
    st = job_status(out)
    assert st["rows"] == 9 and st["ok"] == 4 and st["errors"]["unsafe_id"] == 1
    assert st["seconds_per_image"]["p50"] > 0

    # resume: the missing image appears; ok rows are not redone, failed ones are retried
    (src / "imgs" / "later.png").write_bytes(png_bytes(lr, lr, 4))
    before = {k: v["finished_at"] for k, v in by.items() if v["status"] == "ok"}
    s2 = submit(manifest, out, SubmitOptions(**FEW))
    assert (s2.skipped, s2.processed, s2.ok, s2.failed) == (4, 5, 5, 4)
    by2 = _one_row_per_id(out, [r["id"] for r in rows])
    assert {k: by2[k]["finished_at"] for k in before} == before
    assert by2["missing"]["status"] == "ok"
    assert len(md.metadata_files(out)) == 1  # compacted


@pytest.mark.slow
def test_s3_end_to_end_with_keep_restarts(ray_cluster, generator, s3):
    lr = generator.resolution // 4
    rows = []
    for i in range(3):
        storage.write_bytes(s3.uri(f"lr/img{i}.png"), png_bytes(lr, lr, 20 + i))
        rows.append(dict(id=f"s3/img{i}", image=None, uri=s3.uri(f"lr/img{i}.png")))
    rows.append(dict(id="inline", image=png_bytes(lr, lr, 30), uri=None))
    rows.append(dict(id="gone", image=None, uri=s3.uri("lr/gone.png")))
    t = pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("image", pa.binary()), ("uri", pa.string())]))
    write_table(t.slice(0, 3), s3.uri("manifests/m/part-0.parquet"))
    write_table(t.slice(3), s3.uri("manifests/m/part-1.parquet"))
    out = s3.uri("results/run1")

    s = submit(s3.uri("manifests/m"), out, SubmitOptions(keep_restarts=True, **FEW))
    assert (s.total, s.ok, s.failed) == (5, 4, 1)
    keys = s3.keys("results/run1/")
    sr = [k for k in keys if k.startswith("results/run1/sr/")]
    assert sorted(sr) == sorted(
        [f"results/run1/sr/{r}.png" for r in ("s3/img0", "s3/img1", "s3/img2", "inline")]
        + [f"results/run1/sr/{r}/r{k}.png" for r in ("s3/img0", "s3/img1", "s3/img2", "inline") for k in (0, 1)])
    assert all(k.startswith(("results/run1/sr/", "results/run1/metadata/", "results/run1/restarts/")) for k in keys)
    by = _one_row_per_id(out, [r["id"] for r in rows])
    assert by["inline"]["sr_uri"] == s3.uri("results/run1/sr/inline.png")
    assert by["gone"]["status"] == "failed" and by["gone"]["error_kind"] == "missing_image"
    png = storage.read_bytes(by["s3/img1"]["sr_uri"])
    assert png.startswith(b"\x89PNG")
    rs = md.read_restarts(out)
    assert rs.num_rows == 8 and rs.column("best").to_pylist().count(True) == 4
    assert job_status(out)["ok"] == 4


@pytest.mark.slow
def test_interrupt_then_resume_then_overwrite(ray_cluster, generator, tmp_path):
    lr = generator.resolution // 4
    ids = [f"i{k}" for k in range(6)]
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"id": ids, "image": pa.array([png_bytes(lr, lr, k) for k in range(6)], pa.binary())}),
                   manifest)
    out = str(tmp_path / "out")
    opts = SubmitOptions(restarts=1, steps=2, workers=1, batch_size=1, progress=False, generator=GENERATOR_SOURCE)
    with pytest.raises(KeyboardInterrupt):
        submit(manifest, out, opts, _interrupt_after=2)
    first = md.read_metadata(out)
    done = {r["id"]: r["finished_at"] for r in first.to_pylist() if r["status"] == "ok"}
    assert 2 <= len(done) < 6

    s = submit(manifest, out, opts)
    assert s.skipped == len(done) and s.processed == 6 - len(done) and s.ok == 6
    by = _one_row_per_id(out, ids)
    assert {k: by[k]["finished_at"] for k in done} == done  # no re-work of ok rows

    s3_ = submit(manifest, out, SubmitOptions(restarts=1, steps=2, workers=1, batch_size=3, overwrite=True,
                                              progress=False, generator=GENERATOR_SOURCE))
    assert s3_.processed == 6 and s3_.skipped == 0
    by = _one_row_per_id(out, ids)
    assert all(by[k]["finished_at"] > done[k] for k in done)


@pytest.mark.slow
def test_actor_killed_mid_job_loses_and_duplicates_nothing(ray_cluster, generator, tmp_path):
    lr = generator.resolution // 4
    ids = [f"k{k}" for k in range(4)]
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"id": ids, "image": pa.array([png_bytes(lr, lr, k) for k in range(4)], pa.binary())}),
                   manifest)
    out = str(tmp_path / "out")
    marker = tmp_path / "killed"
    s = submit(manifest, out, SubmitOptions(**FEW), _kill_once_marker=str(marker))
    assert marker.exists(), "the fault was injected"
    killed_pid = int(marker.read_text())
    assert (s.ok, s.failed, s.processed) == (4, 0, 4)
    by = _one_row_per_id(out, ids)
    assert all(r["status"] == "ok" for r in by.values())
    assert all(not r["worker"].endswith(f":{killed_pid}") for r in by.values())
    assert sorted(os.listdir(os.path.join(out, "sr"))) == [f"{i}.png" for i in ids]


def test_unusable_manifest_or_options_write_nothing(tmp_path):
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"id": ["a", "a"], "uri": ["x.png", "y.png"]}), manifest)
    out = tmp_path / "out"
    with pytest.raises(ManifestError, match="duplicate"):
        submit(manifest, str(out), SubmitOptions(progress=False))
    pq.write_table(pa.table({"id": ["a"], "uri": ["x.png"]}), manifest)
    with pytest.raises(UsageError, match="--steps"):
        submit(manifest, str(out), SubmitOptions(steps=0, progress=False))
    with pytest.raises(UsageError, match="cannot load generator"):
        submit(manifest, str(out), SubmitOptions(generator=str(tmp_path / "no-such-generator.pt"), progress=False))
    assert not out.exists()
