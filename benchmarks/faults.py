"""The fault table (issue 17): each fault injected into a real ``pulse-ray submit`` process, then one
plain re-run; counts of what was lost, doubled or redone, and the re-run's wall time.

    python benchmarks/faults.py --rows 12 --json faults.json

Each submit runs in a process of its own (embedded Ray, 2 CPUs) with the test suite's fake
search (``tests/conftest.py``: the nearest-neighbour ``FakeSearchStep``, slowed by ``--pause``
seconds a batch so that a signal lands mid-job); the faults come from the test suite's seams,
never from production arguments:

* ``actor killed``: ``KillOnceSearchStep`` kills the search actor's process on its first batch;
* ``SIGINT`` / ``SIGTERM`` / ``SIGKILL``: sent to the driver once its first metadata part exists
  (after SIGKILL the rest of its process group, Ray's processes, is killed too);
* ``corrupt part``: a run stopped by SIGINT, then one of its metadata parts cut in half.

Columns: rows in the manifest; ok / failed after the fault plus one re-run; lost (no row);
doubled (an id with two metadata rows, or an SR file for no ok row); ok rows redone (an id whose
readable ``ok`` row from before the re-run was replaced); unreadable rows redone (the rows of a
corrupt part, which must be redone); the re-run's exit code and wall time (Ray start included).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

FAULTS = ("actor killed", "SIGINT", "SIGTERM", "SIGKILL", "corrupt part")


def child(manifest: str, out: str, pause: float, kill_marker: str | None) -> None:
    """``pulse-ray submit`` with the test suite's fake search (and its actor-killing wrapper)."""
    import dataclasses
    import functools
    import importlib

    from tests.conftest import FakeSearchStep, KillOnceSearchStep, fake_upsample

    def slow(lrs, generator, options):
        time.sleep(pause)
        return fake_upsample(lrs, generator, options)

    step = FakeSearchStep
    if kill_marker:
        @dataclasses.dataclass
        class KillOnceFake(KillOnceSearchStep, FakeSearchStep):
            pass

        step = functools.partial(KillOnceFake, marker=kill_marker)
    importlib.import_module("pulse_ray.job.submit").SearchStep = functools.partial(step, upsample_fn=slow)
    from pulse_ray.cli import main

    sys.argv = ["pulse-ray", "submit", manifest, "--output", out, "--restarts", "1", "--steps", "1",
                "--num-cpus", "2", "--workers", "1", "--batch-size", "1", "--quiet"]
    main()


def _spawn(manifest, out, pause, kill_marker=None) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", manifest, out, str(pause)]
    if kill_marker:
        cmd += ["--kill-marker", kill_marker]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _wait_for_a_part(proc, out, timeout=300.0) -> None:
    from pulse_ray.job import metadata as md

    deadline = time.monotonic() + timeout
    while not md.metadata_files(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)


def _snapshot(out) -> dict[str, object]:
    """id -> finished_at of the readable ok rows."""
    from pulse_ray.job import metadata as md

    t = md.read_metadata(out, dedup_rows=False, corrupt=[])
    return {i: f for i, s, f in zip(t.column("id").to_pylist(), t.column("status").to_pylist(),
                                    t.column("finished_at").to_pylist()) if s == "ok"}


def one_fault(fault: str, rows: int, pause: float, work: str) -> dict:
    import pyarrow as pa

    from pulse_ray.io.manifest import write_table
    from pulse_ray.job import metadata as md
    from tests.conftest import png_bytes

    manifest, out = os.path.join(work, "m.parquet"), os.path.join(work, "out")
    ids = [f"i{k:03d}" for k in range(rows)]
    write_table(pa.table({"id": ids, "image": [png_bytes(8, 8, k) for k in range(rows)]}), manifest)
    unreadable: list[str] = []
    if fault == "actor killed":
        marker = os.path.join(work, "killed")
        proc = _spawn(manifest, out, pause, kill_marker=marker)
        proc.communicate(timeout=600)
        assert os.path.exists(marker), "the search actor was never killed"
    else:
        proc = _spawn(manifest, out, pause)
        _wait_for_a_part(proc, out)
        if fault == "corrupt part":  # a second part, so that one is cut and the other stays readable
            while len(md.metadata_files(out)) < 2 and proc.poll() is None:
                time.sleep(0.2)
        sig = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}.get(fault,
                                                                                                  signal.SIGINT)
        assert proc.poll() is None, "the job ended before the signal"
        proc.send_signal(sig)
        proc.communicate(timeout=300)
        if fault == "SIGKILL":
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes started by that driver
            except ProcessLookupError:
                pass
        if fault == "corrupt part":
            part = md.metadata_files(out)[0]
            unreadable = md.read_part(part).column("id").to_pylist()
            data = open(part, "rb").read()
            with open(part, "wb") as f:
                f.write(data[: len(data) // 2])
    fault_rc = proc.returncode
    before = _snapshot(out)
    t0 = time.monotonic()
    rerun = _spawn(manifest, out, 0.0)
    _, err = rerun.communicate(timeout=600)
    seconds = time.monotonic() - t0
    meta = md.read_metadata(out, dedup_rows=False)
    got = meta.column("id").to_pylist()
    status = dict(zip(got, meta.column("status").to_pylist()))
    fin = dict(zip(got, meta.column("finished_at").to_pylist()))
    sr = [os.path.relpath(os.path.join(d, f), os.path.join(out, "sr"))[: -len(".png")]
          for d, _, fs in os.walk(os.path.join(out, "sr")) for f in fs if f.endswith(".png")]
    ok_ids = {i for i, s in status.items() if s == "ok"}
    return {
        "fault": fault, "rows": rows, "fault_exit": fault_rc, "rerun_exit": rerun.returncode,
        "ok": sum(1 for i in ids if status.get(i) == "ok"),
        "failed": sum(1 for i in ids if status.get(i) not in (None, "ok")),
        "lost": sum(1 for i in ids if i not in status),
        "doubled": (len(got) - len(set(got))) + sum(1 for s in sr if s not in ok_ids) + (len(sr) - len(set(sr))),
        "ok_redone": sum(1 for i, f in before.items() if fin.get(i) != f),
        "unreadable_redone": len(unreadable),
        "ok_before_rerun": len(before),
        "recover_seconds": round(seconds, 1),
        "rerun_stderr_tail": err.strip().splitlines()[-1:] if rerun.returncode else [],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds each fake search batch sleeps")
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--child", nargs=3, metavar=("MANIFEST", "OUT", "PAUSE"), help=argparse.SUPPRESS)
    ap.add_argument("--kill-marker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child[0], a.child[1], float(a.child[2]), a.kill_marker)
        return 0
    results = []
    for fault in [f.strip() for f in a.faults.split(",") if f.strip()]:
        with tempfile.TemporaryDirectory(prefix="faults-") as work:
            results.append(one_fault(fault, a.rows, a.pause, work))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print("| fault | rows in | ok / failed after fault + 1 re-run | lost | doubled | ok rows redone "
          "| unreadable rows redone | re-run: exit, seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['fault']} (exit {r['fault_exit']}) | {r['rows']} | {r['ok']} / {r['failed']} | {r['lost']} "
              f"| {r['doubled']} | {r['ok_redone']} | {r['unreadable_redone']} | {r['rerun_exit']}, "
              f"{r['recover_seconds']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
