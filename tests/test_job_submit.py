"""``submit`` end to end: embedded Ray (2 CPUs), the real default generator, few steps."""

from __future__ import annotations

import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pulse_ray.io import storage
from pulse_ray.io.manifest import ManifestError, write_table
from pulse_ray.job import metadata as md
from pulse_ray.job.status import job_status
from pulse_ray.job.submit import UsageError, submit
from pulse_ray.search.options import OptionError

from .conftest import GENERATOR_SOURCE, bomb_png, job_options, png_bytes

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

    s = submit(manifest, out, job_options(**FEW))
    assert (s.total, s.ok, s.failed, s.skipped, s.processed) == (9, 4, 5, 0, 9)
    by = _one_row_per_id(out, [r["id"] for r in rows])
    for rid in ("bytes/one", "bytes/two", "uri-relative", "uri-abs"):
        r = by[rid]
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["sr_uri"] == os.path.join(out, "sr", rid + ".png")
        with Image.open(r["sr_uri"]) as im:
            assert im.size == (R, R)
        assert math.isfinite(r["downscale_mse"]) and r["downscale_mse"] >= 0
        assert math.isfinite(r["output_mse"]) and r["output_mse"] >= 0
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
    runs = [f for f in _files_under(out) if f.startswith("runs/")]
    assert len(runs) == 1 and runs[0].endswith("Z.json"), runs  # one run record per run
    rec = json.loads(open(os.path.join(out, runs[0])).read())
    assert rec["counts"]["processed"] == 9 and rec["counts"]["ok"] == 4 and rec["generator"]["name"] == generator.name
    assert len(rec["generator"]["sha256"]) == 64 and rec["options"]["search"]["restarts"] == 2
    assert rec["options"]["workers"] == 2 and rec["versions"]["ray"] and rec["timings"]["pipeline_seconds"] > 0
    assert [f for f in _files_under(out) if not f.startswith(("metadata/", "runs/"))] == [
        "sr/bytes/one.png", "sr/bytes/two.png", "sr/uri-abs.png", "sr/uri-relative.png"]
    st = job_status(out)
    assert st["rows"] == 9 and st["ok"] == 4 and st["errors"]["unsafe_id"] == 1
    assert st["last_run"]["counts"] == rec["counts"]
    assert st["seconds_per_image"]["p50"] > 0

    # resume: the missing image appears; ok rows are not redone, failed ones are retried
    (src / "imgs" / "later.png").write_bytes(png_bytes(lr, lr, 4))
    before = {k: v["finished_at"] for k, v in by.items() if v["status"] == "ok"}
    s2 = submit(manifest, out, job_options(**FEW))
    assert (s2.skipped, s2.processed, s2.ok, s2.failed) == (4, 5, 5, 4)
    by2 = _one_row_per_id(out, [r["id"] for r in rows])
    assert {k: by2[k]["finished_at"] for k in before} == before
    assert by2["missing"]["status"] == "ok"
    assert len(md.metadata_files(out)) == 1  # compacted


@pytest.mark.slow
def test_s3_end_to_end_with_save_restarts(ray_cluster, generator, s3):
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

    s = submit(s3.uri("manifests/m"), out, job_options(save_restarts=True, **FEW))
    assert (s.total, s.ok, s.failed) == (5, 4, 1)
    keys = s3.keys("results/run1/")
    sr = [k for k in keys if k.startswith("results/run1/sr/")]
    assert sorted(sr) == sorted(
        [f"results/run1/sr/{r}.png" for r in ("s3/img0", "s3/img1", "s3/img2", "inline")]
        + [f"results/run1/sr/{r}/r{k}.png" for r in ("s3/img0", "s3/img1", "s3/img2", "inline") for k in (0, 1)])
    assert all(k.startswith(("results/run1/sr/", "results/run1/metadata/", "results/run1/restarts/",
                             "results/run1/runs/")) for k in keys)
    assert len([k for k in keys if k.startswith("results/run1/runs/")]) == 1
    by = _one_row_per_id(out, [r["id"] for r in rows])
    assert by["inline"]["sr_uri"] == s3.uri("results/run1/sr/inline.png")
    assert by["gone"]["status"] == "failed" and by["gone"]["error_kind"] == "missing_image"
    png = storage.read_bytes(by["s3/img1"]["sr_uri"])
    assert png.startswith(b"\x89PNG")
    rs = md.read_restarts(out)
    assert rs.num_rows == 8 and rs.column("best").to_pylist().count(True) == 4
    assert job_status(out)["ok"] == 4
    # every ok row says which rule kept it, and the kept restart's loss is the row's
    ok = [by[i] for i in ("s3/img0", "s3/img1", "s3/img2", "inline")]
    assert {r["keep"] for r in ok} == {"realistic"} and all(r["search_loss"] > 0 for r in ok)
    best = {r["id"]: r["search_loss"] for r in rs.to_pylist() if r["best"]}
    assert all(best[r["id"]] == r["search_loss"] for r in ok)


@pytest.mark.slow
def test_interrupt_then_resume_then_overwrite(ray_cluster, generator, tmp_path, interrupt_after):
    lr = generator.resolution // 4
    ids = [f"i{k}" for k in range(6)]
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"id": ids, "image": pa.array([png_bytes(lr, lr, k) for k in range(6)], pa.binary())}),
                   manifest)
    out = str(tmp_path / "out")
    opts = job_options(restarts=1, steps=2, workers=1, batch_size=1, progress=False, generator=GENERATOR_SOURCE)
    with interrupt_after(2), pytest.raises(KeyboardInterrupt):
        submit(manifest, out, opts)
    first = md.read_metadata(out)
    done = {r["id"]: r["finished_at"] for r in first.to_pylist() if r["status"] == "ok"}
    assert 2 <= len(done) < 6

    s = submit(manifest, out, opts)
    # a task already running when the interrupt came may still land its rows: skipped >= done
    assert s.skipped >= len(done) and s.processed == 6 - s.skipped and s.ok == 6
    by = _one_row_per_id(out, ids)
    assert {k: by[k]["finished_at"] for k in done} == done  # no re-work of ok rows

    s3_ = submit(manifest, out, job_options(restarts=1, steps=2, workers=1, batch_size=3, overwrite=True,
                                              progress=False, generator=GENERATOR_SOURCE))
    assert s3_.processed == 6 and s3_.skipped == 0
    by = _one_row_per_id(out, ids)
    assert all(by[k]["finished_at"] > done[k] for k in done)


@pytest.mark.slow
def test_actor_killed_mid_job_loses_and_duplicates_nothing(ray_cluster, generator, tmp_path, kill_first_search_batch):
    lr = generator.resolution // 4
    ids = [f"k{k}" for k in range(4)]
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"id": ids, "image": pa.array([png_bytes(lr, lr, k) for k in range(4)], pa.binary())}),
                   manifest)
    out = str(tmp_path / "out")
    marker = kill_first_search_batch
    s = submit(manifest, out, job_options(**FEW))
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
        submit(manifest, str(out), job_options(progress=False))
    pq.write_table(pa.table({"id": ["a"], "uri": ["x.png"]}), manifest)
    with pytest.raises(OptionError, match="--steps"):  # refused when the options are made
        submit(manifest, str(out), job_options(steps=0, progress=False))
    with pytest.raises(UsageError, match="cannot load generator"):
        submit(manifest, str(out), job_options(generator=str(tmp_path / "no-such-generator.pt"), progress=False))
    with pytest.raises(UsageError, match="--threads-per-worker"):
        submit(manifest, str(out), job_options(threads_per_worker=0, progress=False))
    with pytest.raises(OptionError, match="--keep must be one of realistic, closest"):
        submit(manifest, str(out), job_options(keep="prettiest", progress=False))
    assert not out.exists()


def test_cpu_plan_splits_the_cores_between_actors_unless_told():
    from pulse_ray.job.cluster import plan_resources

    # (workers, gpus, logical CPUs per actor, torch threads per actor, batch): one core stays for read/write
    assert plan_resources(2, 0, job_options(), 100) == (2, 0.0, 0.5, 1, 4)
    assert plan_resources(2, 0, job_options(workers=1), 100) == (1, 0.0, 1.0, 2, 4)
    assert plan_resources(2, 0, job_options(workers=1, threads_per_worker=1), 100)[3] == 1
    assert plan_resources(8, 0, job_options(), 6) == (6, 0.0, 1.167, 1, 1)  # no idle replica for 6 rows


# ----------------------------------------------------------------------------- GPUs on an autoscaling cluster


def test_plan_on_an_autoscaling_cluster():
    from pulse_ray.job.cluster import plan_resources

    gpu = job_options(gpus_per_worker=1)
    with pytest.raises(UsageError, match="has 0 GPU"):  # embedded Ray: the machine's GPUs are all there is
        plan_resources(2, 0, gpu, 100)
    # joined cluster with no GPU node yet: planned anyway (the caller waits for the autoscaler)
    assert plan_resources(0, 0, gpu, 100, autoscale=True)[:2] == (1, 1.0)  # max(1, GPUs present)
    assert plan_resources(0, 3, gpu, 100, autoscale=True)[0] == 3
    assert plan_resources(0, 0, job_options(gpus_per_worker=1, workers=8), 1000, autoscale=True)[0] == 8
    assert plan_resources(0, 0, job_options(gpus_per_worker=1, workers=8), 3, autoscale=True)[0] == 3  # <= rows


def test_wait_for_gpus_asks_the_autoscaler_and_starts_when_they_join(monkeypatch):
    import importlib
    import io
    import time

    sub = importlib.import_module("pulse_ray.job.cluster")
    requests, looks = [], []
    t0 = time.monotonic()

    def cluster():  # a GPU node joins 0.3 s after the request
        gpus = 1.0 if time.monotonic() - t0 >= 0.3 else 0.0
        looks.append(gpus)
        return {"CPU": 6.0 * gpus, "GPU": gpus}

    monkeypatch.setattr(sub, "request_resources", requests.append)
    monkeypatch.setattr(sub, "cluster_resources", cluster)
    bundles = [{"GPU": 1, "CPU": 1}] * 4
    buf = io.StringIO()
    res = sub.wait_for_gpus(1, bundles, 30, stream=buf, poll=0.05)
    waited = time.monotonic() - t0
    assert res["GPU"] == 1 and 0.3 <= waited < 5
    assert looks[0] == 0 and looks[-1] == 1 and looks.count(1) == 1  # polled until the GPU joined, no longer
    assert requests and all(r == bundles for r in requests)  # the request is re-sent while waiting
    assert len(requests) == len(looks)
    text = buf.getvalue()
    assert "waiting for GPUs: the cluster has 0, the job needs 1" in text
    assert "4 x {GPU 1, CPU 1}" in text and "1 GPU(s) in the cluster after" in text

    # it never comes: a clear error once the time is up, not before
    monkeypatch.setattr(sub, "cluster_resources", lambda: {"CPU": 0.0})
    t1 = time.monotonic()
    with pytest.raises(sub.ResourcesUnavailable, match=r"still has 0 GPU\(s\) after waiting .* for 1 .*--wait-for-resources"):
        sub.wait_for_gpus(1, bundles, 0.4, stream=io.StringIO(), poll=0.05)
    assert 0.4 <= time.monotonic() - t1 < 5


def test_joined_cluster_without_gpus_asks_waits_then_fails_clearly(ray_cluster, tmp_path, monkeypatch):
    """Embedded Ray (2 CPUs, no GPU) joined as if it were an autoscaling cluster: the real request
    goes to the autoscaler channel, the wait is bounded, the error is clear, the request is withdrawn."""
    import importlib
    import io
    import time

    from typer.testing import CliRunner

    from pulse_ray.cli import app
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    sub = importlib.import_module("pulse_ray.job.cluster")
    lr = 8
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"id": [f"g{k}" for k in range(4)],
                             "image": pa.array([png_bytes(lr, lr, k) for k in range(4)], pa.binary())}), manifest)
    out = tmp_path / "out"
    sent = []
    real = sub.request_resources

    def spy(bundles):
        real(bundles)
        sent.append((bundles, _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)))

    monkeypatch.setattr(sub, "request_resources", spy)
    monkeypatch.setattr(sub, "WAIT_POLL_SECONDS", 0.2)
    opts = job_options(address="auto", gpus_per_worker=1, workers=2, batch_size=2, wait_for_resources=1.0,
                         progress=False, generator=GENERATOR_SOURCE)
    buf = io.StringIO()
    t0 = time.monotonic()
    with pytest.raises(sub.ResourcesUnavailable, match=r"still has 0 GPU\(s\)") as ei:
        submit(manifest, str(out), opts, stream=buf)
    assert time.monotonic() - t0 >= 1.0
    assert "2 x {GPU 1, CPU 1}" in str(ei.value) and "--gpus-per-worker 0" in str(ei.value)
    assert "waiting for GPUs" in buf.getvalue()
    assert sent[0] == ([{"GPU": 1, "CPU": 1}] * 2, b'[{"GPU": 1, "CPU": 1}, {"GPU": 1, "CPU": 1}]')
    assert len(sent) >= 3 and sent[-1] == ([], b"[]"), "re-sent while waiting, withdrawn at the end"
    assert not out.exists()

    # embedded Ray (no --address): no autoscaler to wait for, an immediate usage error
    sent.clear()
    t0 = time.monotonic()
    with pytest.raises(UsageError, match="has 0 GPU"):
        submit(manifest, str(out), job_options(gpus_per_worker=1, progress=False, generator=GENERATOR_SOURCE,
                                                 wait_for_resources=30))
    assert time.monotonic() - t0 < 20 and sent == []

    # the command line: exit 1 (infrastructure), the reason on stderr
    gen = ["--generator", GENERATOR_SOURCE] if GENERATOR_SOURCE else []
    r = CliRunner().invoke(app, ["submit", manifest, "-o", str(out), "--address", "auto", "--gpus-per-worker", "1",
                                 "--wait-for-resources", "0.5", "-q", *gen])
    assert r.exit_code == 1, r.output
    assert "still has 0 GPU(s)" in r.output and "--wait-for-resources" in r.output
    assert not out.exists()


# A driver joins a 2-node Ray cluster whose GPU node only arrives while the job is already waiting
# (as KubeRay's autoscaler adds one): run in its own process, since this module's embedded Ray is up.
_JOINING_GPU_NODE = r"""
import io, json, os, sys, threading, time
import pyarrow as pa, pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster
from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.experimental.internal_kv import _internal_kv_get
from tests.conftest import FakeSearchStep, job_options, png_bytes
from pulse_ray.job.submit import submit
import importlib
importlib.import_module("pulse_ray.job.submit").SearchStep = FakeSearchStep  # the fake_search fixture's seam
importlib.import_module("pulse_ray.job.cluster").WAIT_POLL_SECONDS = 0.5
tmp = sys.argv[1]
cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, object_store_memory=100 * 1024**2,
                                                            include_dashboard=False))
ray.init(address=cluster.address, logging_level="WARNING")
manifest = os.path.join(tmp, "m.parquet")
pq.write_table(pa.table({"id": [f"i{k}" for k in range(4)],
                         "image": pa.array([png_bytes(8, 8, k) for k in range(4)], pa.binary())}), manifest)
buf, result = io.StringIO(), {}
def run():
    try:
        result["s"] = submit(manifest, os.path.join(tmp, "out"), job_options(
            address=cluster.address, gpus_per_worker=1, workers=2, batch_size=2, restarts=1, steps=1,
            wait_for_resources=120, progress=False), stream=buf)
    except BaseException as exc:
        result["e"] = repr(exc)
try:
    th = threading.Thread(target=run)
    th.start()
    time.sleep(3)
    waiting_before = buf.getvalue()
    cluster.add_node(num_cpus=2, num_gpus=1, object_store_memory=100 * 1024**2)  # the "GPU" node joins
    th.join(240)
    s = result.get("s")
    print("RESULT " + json.dumps(dict(
        error=result.get("e"), waiting_before=waiting_before, log=buf.getvalue(),
        ok=s and s.ok, failed=s and s.failed, workers=s and s.workers, gpus=s and s.gpus_per_worker,
        request_after=(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL) or b"").decode())), flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_job_waits_for_a_gpu_node_that_joins_then_runs(tmp_path):
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    from .conftest import REPO

    # its own Ray temp dir: the cluster's address file must not send anyone else's ray.init() to it
    ray_tmp = tempfile.mkdtemp(prefix="prt", dir="/tmp")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), RAY_TMPDIR=ray_tmp)
    env.pop("RAY_ADDRESS", None)
    try:
        r = subprocess.run([sys.executable, "-c", _JOINING_GPU_NODE, str(tmp_path)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=400)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["error"] is None, res
    assert "waiting for GPUs: the cluster has 0, the job needs 1" in res["waiting_before"]  # it was waiting
    assert "1 GPU(s) in the cluster after" in res["log"]
    # 2 workers planned, 1 GPU came: the job ran on the one there (the other actor stays pending)
    assert (res["ok"], res["failed"], res["workers"], res["gpus"]) == (4, 0, 2, 1.0)
    assert res["request_after"] == "[]", "the request to the autoscaler is withdrawn at the end"
    assert len(md.read_metadata(str(tmp_path / "out"))) == 4


def _inline_a_and_file_b(tmp_path):
    """A manifest of two rows, ``a`` inline and ``b`` from tmp_path/b.png; the output folder.
    Returns (manifest, out)."""
    (tmp_path / "b.png").write_bytes(png_bytes(8, 8, 2))
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"id": ["a", "b"], "image": pa.array([png_bytes(8, 8, 1), None], pa.binary()),
                             "uri": [None, str(tmp_path / "b.png")]}), manifest)
    out = str(tmp_path / "out")
    return manifest, out


@pytest.mark.slow
def test_overwrite_keeps_this_runs_result_even_when_it_failed(ray_cluster, tmp_path, fake_search):
    manifest, out = _inline_a_and_file_b(tmp_path)
    opts = dict(restarts=1, steps=1, workers=1, batch_size=2, progress=False)
    s = submit(manifest, out, job_options(**opts))
    assert (s.ok, s.failed) == (2, 0)
    first = _one_row_per_id(out, ["a", "b"])
    (tmp_path / "b.png").unlink()  # b's input is gone; --overwrite redoes everything

    s = submit(manifest, out, job_options(overwrite=True, **opts))
    assert (s.processed, s.skipped, s.ok, s.failed) == (2, 0, 1, 1)
    by = _one_row_per_id(out, ["a", "b"])
    assert by["a"]["status"] == "ok" and by["a"]["finished_at"] > first["a"]["finished_at"]
    assert by["b"]["status"] == "failed" and by["b"]["error_kind"] == "missing_image"  # not the old ok row
    assert _files_under(os.path.join(out, "sr")) == ["a.png"], "no stale image of the failed row"


@pytest.mark.slow
def test_overwrite_drops_the_restarts_of_results_it_replaced(ray_cluster, tmp_path, fake_search):
    """Restart rows and images always describe the kept result: an --overwrite run with fewer
    restarts, a redone id that now fails, or a run without --save-restarts leaves none of the old ones."""
    manifest, out = _inline_a_and_file_b(tmp_path)
    opts = dict(steps=1, workers=1, batch_size=2, progress=False)

    submit(manifest, out, job_options(restarts=3, save_restarts=True, **opts))
    assert _files_under(os.path.join(out, "sr")) == ["a.png", "a/r0.png", "a/r1.png", "a/r2.png",
                                                     "b.png", "b/r0.png", "b/r1.png", "b/r2.png"]
    (tmp_path / "b.png").unlink()

    s = submit(manifest, out, job_options(restarts=2, save_restarts=True, overwrite=True, **opts))
    assert (s.ok, s.failed) == (1, 1)
    assert _files_under(os.path.join(out, "sr")) == ["a.png", "a/r0.png", "a/r1.png"]
    rs = md.read_restarts(out)
    assert sorted(zip(rs.column("id").to_pylist(), rs.column("restart").to_pylist())) == [("a", 0), ("a", 1)]
    a_row = _one_row_per_id(out, ["a", "b"])["a"]
    assert set(rs.column("finished_at").to_pylist()) == {a_row["finished_at"]}, "this run's restarts"
    assert len(md.metadata_files(out, md.RESTARTS_DIR)) == 1
    assert md.read_restarts(out).num_rows == pq.read_table(md.metadata_files(out, md.RESTARTS_DIR)[0]).num_rows

    submit(manifest, out, job_options(restarts=2, overwrite=True, **opts))  # no --save-restarts
    assert _files_under(os.path.join(out, "sr")) == ["a.png"]
    assert md.read_restarts(out).num_rows == 0
