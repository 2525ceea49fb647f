"""The ``pulse-ray`` command line: exit codes, make-manifest, downscale, upsample, submit, status."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pulse_ray.cli import app

from .conftest import GENERATOR_SOURCE, png_bytes

runner = CliRunner()
GEN = ["--generator", GENERATOR_SOURCE] if GENERATOR_SOURCE else []


def _invoke(args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize(
    "cols, message",
    [
        ({"name": ["a"], "uri": ["x"]}, "no 'id' column"),
        ({"id": ["a"], "path": ["x"]}, "no image column"),
        ({"id": ["a", "a"], "uri": ["x", "y"]}, "duplicate id"),
    ],
)
def test_submit_bad_manifest_exits_2_and_writes_nothing(tmp_path, cols, message):
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table(cols), str(m))
    r = _invoke(["submit", m, "--output", tmp_path / "out"])
    assert r.exit_code == 2, r.output
    assert message in r.output and "m.parquet" in r.output
    assert not (tmp_path / "out").exists()


def test_submit_unreadable_manifest_and_bad_usage_exit_2(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"garbage")
    r = _invoke(["submit", bad, "-o", tmp_path / "out"])
    assert r.exit_code == 2 and "not a readable Parquet file" in r.output
    assert _invoke(["submit", bad]).exit_code == 2  # missing --output
    assert _invoke(["submit", bad, "-o", tmp_path / "o", "--steps", "x"]).exit_code == 2
    assert not (tmp_path / "out").exists()


def test_downscale_factor_that_is_not_a_power_of_two_exits_2(tmp_path):
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "a.png").write_bytes(png_bytes(24, 24, 1))
    r = _invoke(["downscale", tmp_path / "hr", "-o", tmp_path / "lr", "--factor", 3])
    assert r.exit_code == 2 and "power of two" in r.output, r.output
    assert not (tmp_path / "lr").exists()


def test_make_manifest_downscale_dry_run_and_upsample(tmp_path, generator):
    R = generator.resolution
    hr = tmp_path / "hr"
    (hr / "sub").mkdir(parents=True)
    for i, rel in enumerate(("a.png", "sub/b.png", "sub/c.jpg")):
        (hr / rel).write_bytes(png_bytes(R, R, i, fmt="JPEG" if rel.endswith("jpg") else "PNG"))
    (hr / "odd.png").write_bytes(png_bytes(R + 2, R + 2, 9))
    r = _invoke(["downscale", hr, "-o", tmp_path / "lr", "--factor", 4])
    assert r.exit_code == 0, r.output
    assert "wrote 3 LR image(s)" in r.output and "not divisible by factor 4" in r.output
    with Image.open(tmp_path / "lr" / "sub" / "b.png") as im:
        assert im.size == (R // 4, R // 4)

    r = _invoke(["make-manifest", tmp_path / "lr", "-o", tmp_path / "m.parquet"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(str(tmp_path / "m.parquet"))
    assert sorted(t.column("id").to_pylist()) == ["a", "sub/b", "sub/c"]
    assert all(os.path.isabs(u) for u in t.column("uri").to_pylist())

    # --align: random pictures hold no face -> skipped and reported, not a crash
    r = _invoke(["make-manifest", hr, "-o", tmp_path / "aligned.parquet", "--align", "--lr-size", R // 4])
    assert r.exit_code == 0, r.output
    assert "no face found" in r.output
    assert pq.read_table(str(tmp_path / "aligned.parquet")).column_names == ["id", "image", "source_uri"]

    r = _invoke(["submit", tmp_path / "m.parquet", "-o", tmp_path / "out", "--dry-run", *GEN])
    assert r.exit_code == 0, r.output
    assert "dry run" in r.output and "to do      3 rows" in r.output
    assert not (tmp_path / "out").exists()
    # --keep-restarts, the old spelling of --save-restarts, still works and says so
    r = _invoke(["submit", tmp_path / "m.parquet", "-o", tmp_path / "out", "--dry-run", "--keep-restarts", *GEN])
    assert r.exit_code == 0, r.output
    assert "--keep-restarts is deprecated; use --save-restarts" in r.output and "dry run" in r.output
    r = _invoke(["submit", tmp_path / "m.parquet", "-o", tmp_path / "out", "--dry-run", "--workers", 0, *GEN])
    assert r.exit_code == 2 and "--workers must be >= 1" in r.output

    r = _invoke(["upsample", tmp_path / "lr" / "a.png", "--output", tmp_path / "up", "--keep", "prettiest", *GEN])
    assert r.exit_code == 2 and "--keep must be one of realistic, closest" in r.output
    r = _invoke(["upsample", tmp_path / "lr" / "a.png", tmp_path / "lr" / "sub", tmp_path / "missing.png",
                 "--output", tmp_path / "up", "--restarts", 1, "--steps", 2, "--keep", "closest", *GEN])
    assert r.exit_code == 0, r.output
    assert "a: downscale_mse=" in r.output and "converged=" in r.output
    assert "missing: FAILED" in r.output
    assert sorted(os.listdir(tmp_path / "up")) == ["a.png", "b.png", "c.png", "metadata.parquet"]
    meta = pq.read_table(str(tmp_path / "up" / "metadata.parquet"))
    assert meta.num_rows == 4 and meta.column("status").to_pylist().count("ok") == 3


@pytest.mark.slow
def test_submit_and_status_commands(ray_cluster, generator, tmp_path):
    lr = generator.resolution // 4
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["p", "q", "../bad"],
                             "image": pa.array([png_bytes(lr, lr, 1), png_bytes(lr, lr, 2), png_bytes(lr, lr, 3)],
                                               pa.binary())}), str(m))
    out = tmp_path / "out"
    r = _invoke(["submit", m, "-o", out, "--restarts", 1, "--steps", 2, "--workers", 2, "--batch-size", 1, *GEN])
    assert r.exit_code == 0, r.output  # failed rows do not fail the job
    assert "ok 2, failed 1 of 3" in r.output and "unsafe_id: 1" in r.output
    assert "img/min" in r.output  # progress / summary
    r = _invoke(["status", out])
    assert r.exit_code == 0 and "rows       3" in r.output and "unsafe_id" in r.output
    r = _invoke(["status", out, "--json"])
    s = json.loads(r.output)
    assert s["by_status"] == {"ok": 2, "failed": 1} and s["seconds_per_image"]["p90"] > 0
    r = _invoke(["submit", m, "-o", out, "--restarts", 1, "--steps", 2, "--json", *GEN])
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["skipped"] == 2
