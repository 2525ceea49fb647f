"""``pulse-ray nightly`` / ``scripts/nightly.py``: discovery, ledger, idempotence, resume.

The end-to-end tests run the real ``submit`` (embedded Ray, the bundled generator, a tiny search)
against a real S3 endpoint on loopback (conftest's moto server, fake credentials); the fast ones
drive the ledger logic with a stand-in ``submit`` on local folders.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pulse_ray.io import storage
from pulse_ray.job import nightly
from pulse_ray.job.nightly import find_manifests, manifest_key, run_nightly
from pulse_ray.job.options import JobOptions
from pulse_ray.job.submit import ManifestError, SubmitSummary, UsageError, submit
from pulse_ray.search.options import SearchOptions

from .conftest import GENERATOR_SOURCE, job_options

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def _png(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    base = np.stack([0.6 + 0.3 * yy, 0.45 + 0.2 * xx, 0.35 + 0.1 * yy * xx], -1)
    arr = np.clip(base + 0.05 * rng.standard_normal((size, size, 3)), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((arr * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _manifest_bytes(ids: list[str], uris: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ids, "uri": uris}), buf)
    return buf.getvalue()


def _ledger(output_root: str, key: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(output_root, "_ledger", key + ".json")))


class FakeSubmit:
    """Stands in for ``submit`` in the ledger-logic tests: records calls, returns a summary."""

    def __init__(self, failed=0, raise_for=None):
        self.calls = []
        self.failed = failed
        self.raise_for = raise_for or {}

    def __call__(self, manifest, output, options):
        self.calls.append((manifest, output, options))
        for needle, exc in self.raise_for.items():
            if needle in manifest:
                raise exc
        return SubmitSummary(total=3, ok=3 - self.failed, failed=self.failed, skipped=0, converged=2,
                             seconds=0.1, processed=3)


def _touch_manifest(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_manifest_bytes(["a"], ["a.png"]))


def _quiet(*_a, **_k):
    pass


# ----------------------------------------------------------------------------- keys and discovery


def test_manifest_key_is_stable_safe_and_distinct():
    k = manifest_key("2024-06-01/batch.parquet")
    assert k == manifest_key("2024-06-01/batch.parquet")
    assert k.startswith("2024-06-01--batch-") and len(k.rsplit("-", 1)[1]) == 8
    keys = {manifest_key(r) for r in ("a/b.parquet", "a--b.parquet", "a b.parquet", "a_b.parquet", "A/b.parquet")}
    assert len(keys) == 5
    for r in ("../../etc/passwd.parquet", "x/.hidden/..parquet", "ünïcode/名前.parquet", "_x.parquet"):
        key = manifest_key(r)
        assert key and not key.startswith(("-", ".", "_")) and all(c.isalnum() or c in "-._" for c in key), key
        assert ".." not in key.replace("...", "")


def test_find_manifests_local_layouts(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _touch_manifest(inp / "a.parquet")
    _touch_manifest(inp / "2024-06-01" / "b.parquet")
    _touch_manifest(inp / "ds.parquet" / "part-0.parquet")  # a dataset folder named *.parquet
    _touch_manifest(inp / "ds.parquet" / "part-1.parquet")
    _touch_manifest(inp / "spark" / "part-00000.parquet")  # a folder with a _SUCCESS marker
    _touch_manifest(inp / "spark" / "part-00001.parquet")
    (inp / "spark" / "_SUCCESS").write_bytes(b"")
    _touch_manifest(inp / "loose" / "p0.parquet")  # no marker: each file on its own
    _touch_manifest(inp / "loose" / "p1.parquet")
    _touch_manifest(inp / "_tmp" / "x.parquet")  # hidden
    _touch_manifest(inp / ".staging.parquet")
    (inp / "notes.txt").write_text("not a manifest")
    found = find_manifests(str(inp), str(out))
    rels = [m.rel for m in found]
    assert rels == ["2024-06-01/b.parquet", "a.parquet", "ds.parquet", "loose/p0.parquet", "loose/p1.parquet", "spark"]
    by_rel = {m.rel: m for m in found}
    assert by_rel["spark"].uri == str(inp / "spark")
    assert by_rel["a.parquet"].output == str(out / by_rel["a.parquet"].key)
    assert by_rel["a.parquet"].ledger == str(out / "_ledger" / (by_rel["a.parquet"].key + ".json"))
    assert len({m.key for m in found}) == len(found)


def test_output_root_inside_input_prefix_is_not_read_as_manifests(tmp_path):
    inp = tmp_path / "in"
    _touch_manifest(inp / "a.parquet")
    _touch_manifest(inp / "results" / "a-123" / "metadata" / "part-1.parquet")  # a previous output
    found = find_manifests(str(inp), str(inp / "results"))
    assert [m.rel for m in found] == ["a.parquet"]


# ----------------------------------------------------------------------------- ledger logic (stand-in submit)


def test_ledger_lifecycle_with_failures_errors_and_retries(tmp_path):
    inp, out = tmp_path / "in", str(tmp_path / "out")
    for name in ("good", "broken", "flaky", "rows"):
        _touch_manifest(inp / f"{name}.parquet")
    keys = {m.rel.split(".")[0]: m.key for m in find_manifests(str(inp), out)}

    # nightly, 1st run: good ok; broken unusable; flaky raises (cluster gone); rows has failed rows
    fake = FakeSubmit(raise_for={"broken": ManifestError("no 'id' column"), "flaky": ConnectionError("ray down")})

    def submit_fn(m, o, opts):
        s = fake(m, o, opts)
        if "rows" in m:
            s.failed, s.ok = 1, 2
        return s

    res = run_nightly(str(inp), out, JobOptions(search=SearchOptions(steps=7)), submit_fn=submit_fn, log=_quiet)
    assert res.exit_code == 1
    assert len(fake.calls) == 4 and all(c[2].search.steps == 7 for c in fake.calls)
    e = {k: _ledger(out, key) for k, key in keys.items()}
    assert (e["good"]["status"], e["good"]["exit_status"]) == ("finished", 0)
    assert e["good"]["counts"]["ok"] == 3 and e["good"]["counts"]["total"] == 3
    assert e["good"]["started"] and e["good"]["finished"] and e["good"]["attempts"] == 1
    assert e["good"]["manifest"] == str(inp / "good.parquet") and e["good"]["output"] == f"{out}/{keys['good']}"
    assert (e["broken"]["status"], e["broken"]["exit_status"]) == ("failed", 2)
    assert "no 'id' column" in e["broken"]["error"]
    assert (e["flaky"]["status"], e["flaky"]["exit_status"]) == ("error", 1)
    assert "ray down" in e["flaky"]["error"]
    assert (e["rows"]["status"], e["rows"]["exit_status"]) == ("finished", 1)

    # 2nd run: only the errored one is run again (resumed), and now it works
    fake2 = FakeSubmit()
    res = run_nightly(str(inp), out, JobOptions(), submit_fn=fake2, log=_quiet)
    assert [c[0] for c in fake2.calls] == [str(inp / "flaky.parquet")]
    assert res.exit_code == 0
    flaky = _ledger(out, keys["flaky"])
    assert flaky["status"] == "finished" and flaky["attempts"] == 2 and flaky["resumed"] is True
    assert flaky["history"][0]["status"] == "error"

    # 3rd run: nothing to do
    fake3 = FakeSubmit()
    assert run_nightly(str(inp), out, JobOptions(), submit_fn=fake3, log=_quiet).exit_code == 0
    assert fake3.calls == []

    # --retry-failed: the unusable manifest and the one with failed rows, nothing else
    fake4 = FakeSubmit()
    run_nightly(str(inp), out, JobOptions(overwrite=True), retry_failed=True, submit_fn=fake4, log=_quiet)
    assert sorted(Path(c[0]).name for c in fake4.calls) == ["broken.parquet", "rows.parquet"]
    assert all(c[2].overwrite is False for c in fake4.calls), "a rerun never overwrites what is done"


def test_usage_error_stops_the_run_and_leaves_the_rest(tmp_path):
    inp, out = tmp_path / "in", str(tmp_path / "out")
    for name in ("a", "b", "c"):
        _touch_manifest(inp / f"{name}.parquet")
    fake = FakeSubmit(raise_for={"a.parquet": UsageError("--gpus-per-worker 1 but the cluster has 0 GPUs")})
    res = run_nightly(str(inp), out, JobOptions(), submit_fn=fake, log=_quiet)
    assert res.exit_code == 2 and "0 GPUs" in res.aborted
    assert len(fake.calls) == 1
    plan = {Path(it.manifest.uri).name: it.action for it in nightly.plan(str(inp), out)}
    assert plan == {"a.parquet": "resume", "b.parquet": "new", "c.parquet": "new"}


def test_dry_run_lists_and_writes_nothing(tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    _touch_manifest(inp / "x.parquet")
    fake = FakeSubmit()
    res = run_nightly(str(inp), str(out), JobOptions(), dry_run=True, submit_fn=fake)
    assert fake.calls == [] and not out.exists()
    assert [it.action for it in res.items] == ["new"]
    text = capsys.readouterr().out
    assert "would run" in text and str(inp / "x.parquet") in text


def test_command_line_passes_submit_options(tmp_path, monkeypatch):
    captured = {}

    def fake_run(input_prefix, output_root, options, **kw):
        captured.update(input=input_prefix, output=output_root, options=options, **kw)
        return nightly.NightlyResult(exit_code=0)

    monkeypatch.setattr(nightly, "run_nightly", fake_run)
    code = nightly.main(["s3://b/in/", "s3://b/out/", "--dry-run", "--steps", "2", "--restarts", "1",
                         "--gpus-per-worker", "1", "--workers", "8", "--address", "auto", "--keep-restarts",
                         "--generator", "colour64", "--eps", "0.01", "--no-progress", "--retry-failed"])
    assert code == 0
    o = captured["options"]
    assert isinstance(o, JobOptions)
    assert (o.search.steps, o.search.restarts, o.gpus_per_worker, o.workers, o.address) == (2, 1, 1.0, 8, "auto")
    assert (o.search.save_restarts, o.generator, o.search.eps, o.progress, o.dry_run) == (
        True, "colour64", 0.01, False, False)  # --keep-restarts: the old spelling of --save-restarts still works
    assert captured["dry_run"] is True and captured["retry_failed"] is True
    with pytest.raises(SystemExit) as ei:
        nightly.main(["in", "out", "--no-such-option"])
    assert ei.value.code == 2


def test_jobs_script_runs(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _touch_manifest(inp / "one.parquet")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "nightly.py"), str(inp), str(out), "--dry-run"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1 manifest(s): 1 new" in r.stdout and "one.parquet" in r.stdout
    assert not out.exists()


def test_pulse_ray_cli_has_nightly(tmp_path):
    from typer.testing import CliRunner

    from pulse_ray.cli import app

    inp, out = tmp_path / "in", tmp_path / "out"
    _touch_manifest(inp / "one.parquet")
    r = CliRunner().invoke(app, ["nightly", str(inp), str(out), "--dry-run", "--steps", "2"])
    assert r.exit_code == 0, r.output
    assert "1 new" in r.output
    r = CliRunner().invoke(app, ["nightly", "--help"])
    assert r.exit_code == 0 and "INPUT_PREFIX" in r.output and "--retry-failed" in r.output


# ----------------------------------------------------------------------------- end to end: real submit, S3 on loopback


def _upload_batch(bucket: str, prefix: str, name: str, ids: list[str], size: int, as_dataset: bool = False) -> None:
    """Images under ``s3://BUCKET/<prefix>/images/<name>/`` and a manifest naming them."""
    uris = []
    for i, rid in enumerate(ids):
        key = f"{prefix}/images/{name}/{rid}.png"
        storage.write_bytes(f"s3://{bucket}/{key}", _png(hash((name, i)) % 1000, size))
        uris.append(f"s3://{bucket}/{key}")
    if as_dataset:  # a Spark-style folder: parts + _SUCCESS
        half = len(ids) // 2
        storage.write_bytes(f"s3://{bucket}/{prefix}/{name}/part-0.parquet", _manifest_bytes(ids[:half], uris[:half]))
        storage.write_bytes(f"s3://{bucket}/{prefix}/{name}/part-1.parquet", _manifest_bytes(ids[half:], uris[half:]))
        storage.write_bytes(f"s3://{bucket}/{prefix}/{name}/_SUCCESS", b"")
    else:
        storage.write_bytes(f"s3://{bucket}/{prefix}/{name}.parquet", _manifest_bytes(ids, uris))


# A tiny search with the generator the end-to-end tests use (the bundled default unless CI sets
# PULSE_RAY_TEST_GENERATOR; see conftest.py).
TINY = dict(steps=2, restarts=1, workers=1, progress=False, generator=GENERATOR_SOURCE)


class CountingSubmit:
    def __init__(self, fn=submit):
        self.fn, self.calls = fn, []

    def __call__(self, manifest, output, options):
        self.calls.append(manifest)
        return self.fn(manifest, output, options)


@pytest.mark.slow
def test_nightly_on_s3_processes_new_manifests_once(s3, ray_cluster, generator):
    """Two new manifests (a file, and a Spark-style folder) -> both processed, ledger written;
    the second run has nothing to do."""
    BUCKET = s3.bucket
    size = generator.resolution // 4
    _upload_batch(BUCKET, "incoming", "2024-06-01-a", ["a1", "a2"], size)
    _upload_batch(BUCKET, "incoming", "batch-b", ["b1", "b2", "b3"], size, as_dataset=True)
    inp, out = f"s3://{BUCKET}/incoming/", f"s3://{BUCKET}/results"
    assert nightly.main([inp, out, "--dry-run"] + [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()
                                                   if v is not None and not isinstance(v, bool)]) == 0
    assert storage.list_uris(out) == [] and not storage.isdir(storage.join(out, "_ledger"))

    counting = CountingSubmit()
    res = run_nightly(inp, out, job_options(**TINY), submit_fn=counting, log=_quiet)
    assert res.exit_code == 0, res.entries
    assert sorted(counting.calls) == [f"s3://{BUCKET}/incoming/2024-06-01-a.parquet", f"s3://{BUCKET}/incoming/batch-b"]
    found = {m.rel: m for m in find_manifests(inp, out)}
    assert set(found) == {"2024-06-01-a.parquet", "batch-b"}
    for rel, ids in (("2024-06-01-a.parquet", ["a1", "a2"]), ("batch-b", ["b1", "b2", "b3"])):
        m = found[rel]
        e = _ledger(out, m.key)
        assert e["manifest"] == m.uri and e["output"] == m.output
        assert (e["status"], e["exit_status"], e["attempts"]) == ("finished", 0, 1)
        assert e["started"] <= e["finished"]
        c = e["counts"]
        assert (c["total"], c["ok"], c["failed"], c["skipped"], c["processed"]) == (len(ids), len(ids), 0, 0, len(ids))
        assert e["options"]["steps"] == 2 and e["options"]["restarts"] == 1
        for rid in ids:  # the results are really there
            img = Image.open(io.BytesIO(storage.read_bytes(storage.join(m.output, "sr", rid + ".png"))))
            assert img.size == (size * 4, size * 4)
    ledger_before = {u: storage.read_bytes(u) for u in storage.list_uris(storage.join(out, "_ledger"))}
    assert len(ledger_before) == 2

    # second run: nothing to do, nothing rewritten
    counting2 = CountingSubmit()
    res = run_nightly(inp, out, job_options(**TINY), submit_fn=counting2, log=_quiet)
    assert res.exit_code == 0 and counting2.calls == [] and res.entries == {}
    assert [it.action for it in res.items] == ["done", "done"]
    assert {u: storage.read_bytes(u) for u in storage.list_uris(storage.join(out, "_ledger"))} == ledger_before


@pytest.mark.slow
def test_nightly_on_s3_resumes_a_run_that_died(s3, ray_cluster, generator):
    """A ledger entry left "started" by a run that died half-way -> that manifest is resumed."""
    BUCKET = s3.bucket
    size = generator.resolution // 4
    _upload_batch(BUCKET, "landing", "batch-c", ["c1", "c2", "c3"], size)
    inp, out = f"s3://{BUCKET}/landing/", f"s3://{BUCKET}/results-resume"
    manifest = f"s3://{BUCKET}/landing/batch-c.parquet"

    class Killed(BaseException):
        """The process dying mid-run (e.g. SIGKILL of the pod): no handler runs."""

    def dies_half_way(m, o, options):
        # the run gets through the first image, then the process is killed
        first = f"s3://{BUCKET}/scratch/first-of-batch-c.parquet"
        storage.write_bytes(first, _manifest_bytes(["c1"], [f"s3://{BUCKET}/landing/images/batch-c/c1.png"]))
        submit(first, o, options)
        raise Killed()

    with pytest.raises(Killed):
        run_nightly(inp, out, job_options(**TINY), submit_fn=dies_half_way, log=_quiet)
    key = manifest_key("batch-c.parquet")
    left = _ledger(out, key)
    assert left["status"] == "started" and left["finished"] is None and left["manifest"] == manifest
    assert [it.action for it in nightly.plan(inp, out) if it.manifest.key == key] == ["resume"]

    counting = CountingSubmit()
    res = run_nightly(inp, out, job_options(**TINY), submit_fn=counting, log=_quiet)
    assert counting.calls == [manifest] and res.exit_code == 0
    e = _ledger(out, key)
    assert (e["status"], e["exit_status"], e["attempts"], e["resumed"]) == ("finished", 0, 2, True)
    c = e["counts"]
    assert (c["total"], c["ok"], c["skipped"], c["processed"]) == (3, 3, 1, 2), "resumed, not restarted"
    assert e["history"][0]["status"] == "started"
    for rid in ("c1", "c2", "c3"):
        assert storage.exists(storage.join(out, key, "sr", rid + ".png"))

    # and after that, it is done
    counting2 = CountingSubmit()
    run_nightly(inp, out, job_options(**TINY), submit_fn=counting2, log=_quiet)
    assert counting2.calls == []
