"""Load (issue 17): a manifest of many tiny rows through a real ``pulse-ray submit`` process.

    python benchmarks/bench_load.py --rows 10000 100000 --cap 1500 --json load.json

For each size: a manifest of that many rows (unique ids; ``uri`` values pointing at 256 distinct
8x8 PNG files written once to a temp folder), then ``pulse-ray submit --restarts 1 --steps 1``
in a process of its own (embedded Ray, ``--num-cpus 2``) with the test suite's fake search
(``tests/conftest.py``: nearest-neighbour, instant), so the figures are the job's own overhead,
not the search's. Reported:

* seconds from the start to the first metadata part on disk;
* rows per second (rows with a metadata row / seconds from the start; at the cap if it stopped there);
* peak RSS of the driver and of the whole process tree (Ray's processes included), sampled
  from ``/proc`` every ``--sample`` seconds;
* then a re-run of the same command (every row done): its wall time, the resume scan.

A run still going at ``--cap`` seconds is stopped (SIGINT, then its process group killed) and
reported with what it reached.
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

DISTINCT_IMAGES = 256
PAGE = os.sysconf("SC_PAGE_SIZE")


def child(manifest: str, out: str) -> None:
    """``pulse-ray submit`` with the fake search."""
    import importlib

    from tests.conftest import FakeSearchStep

    importlib.import_module("pulse_ray.job.submit").SearchStep = FakeSearchStep
    from pulse_ray.cli import main

    sys.argv = ["pulse-ray", "submit", manifest, "--output", out, "--restarts", "1", "--steps", "1",
                "--num-cpus", "2", "--quiet"]
    main()


def write_manifest(work: str, rows: int) -> str:
    import pyarrow as pa

    from pulse_ray.io.manifest import write_table
    from tests.conftest import png_bytes

    folder = os.path.join(work, "lr")
    os.makedirs(folder, exist_ok=True)
    for k in range(DISTINCT_IMAGES):
        path = os.path.join(folder, f"{k:03d}.png")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(png_bytes(8, 8, k))
    manifest = os.path.join(work, f"m{rows}.parquet")
    write_table(pa.table({"id": [f"row{k:06d}" for k in range(rows)],
                          "uri": [os.path.join(folder, f"{k % DISTINCT_IMAGES:03d}.png") for k in range(rows)]}),
                manifest)
    return manifest


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _tree(root: int) -> list[int]:
    """``root`` and every descendant (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _any_part(out: str) -> bool:
    try:
        with os.scandir(os.path.join(out, "metadata")) as it:
            return any(e.name.endswith(".parquet") and not e.name.startswith((".", "_")) for e in it)
    except OSError:
        return False


def run_submit(manifest: str, out: str, cap: float, sample: float) -> dict:
    """One submit process, watched: first part, peak RSS, exit, wall time."""
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", manifest, out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    first = None
    peak_driver = peak_tree = 0
    capped = False
    while proc.poll() is None:
        now = time.monotonic() - t0
        if first is None and _any_part(out):
            first = now
        peak_driver = max(peak_driver, _rss(proc.pid))
        peak_tree = max(peak_tree, sum(_rss(p) for p in _tree(proc.pid)))
        if now > cap:
            capped = True
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
            break
        time.sleep(sample)
    err = proc.communicate()[1] if proc.poll() is not None else ""
    seconds = time.monotonic() - t0
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return {"exit": proc.returncode, "seconds": round(seconds, 1), "capped": capped,
            "first_row_seconds": None if first is None else round(first, 1),
            "peak_driver_mb": round(peak_driver / 2**20), "peak_tree_mb": round(peak_tree / 2**20),
            "stderr_tail": (err or "").strip().splitlines()[-2:]}


def one_size(rows: int, work: str, cap: float, sample: float) -> dict:
    from pulse_ray.job import metadata as md

    t0 = time.monotonic()
    manifest = write_manifest(work, rows)
    made = time.monotonic() - t0
    out = os.path.join(work, f"out{rows}")
    first = run_submit(manifest, out, cap, sample)
    done = md.read_metadata(out, columns=["id", "status"])
    ok = sum(1 for s in done.column("status").to_pylist() if s == "ok")
    res = {"rows": rows, "manifest_seconds": round(made, 1), **first, "rows_done": done.num_rows, "ok": ok,
           "rows_per_second": round(done.num_rows / first["seconds"], 1)}
    if not first["capped"] and first["exit"] == 0:
        again = run_submit(manifest, out, cap, sample)
        res["rerun"] = {k: again[k] for k in ("exit", "seconds", "peak_driver_mb", "peak_tree_mb")}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--cap", type=float, default=1800.0, help="seconds a submit may run before it is stopped")
    ap.add_argument("--sample", type=float, default=0.5, help="seconds between RSS samples")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--child", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(*a.child)
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="load-") as work:
        for rows in a.rows:
            results.append(one_size(rows, work, a.cap, a.sample))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print("| rows | first row (s) | rows/s | peak RSS driver / tree (MB) | wall (s) | re-run, all done (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        wall = f"{r['seconds']}" + (f" (capped: {r['rows_done']} rows done)" if r["capped"] else "")
        rerun = r.get("rerun", {}).get("seconds", "-")
        print(f"| {r['rows']} | {r['first_row_seconds']} | {r['rows_per_second']} | {r['peak_driver_mb']} / "
              f"{r['peak_tree_mb']} | {wall} | {rerun} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
