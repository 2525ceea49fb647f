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
* ``corrupt part``: a run stopped by SIGINT, then one of its metadata parts cut in half;
* ``write dies``: ``DieAfterImagesWriteStep`` writes its first batch's SR images, then SIGKILLs the
  driver before that batch's metadata part (the harness then kills the rest of its process group);
* ``read-only output``: once the first part exists, OUT is bind-mounted read-only onto itself (a
  mode does not stop root, a read-only mount does: EROFS), then unmounted before the re-run;
* ``S3 restarted``: OUT on a moto S3 server (``ThreadedMotoServer`` on loopback, boto3 over HTTP)
  that is stopped once the first part exists, then started again on the same port (moto keeps its
  buckets in the process, so the restarted endpoint still holds what was written);
* ``S3 never answers``: the same moto server behind a TCP proxy on loopback (``HangingProxy``);
  once the first part exists the proxy keeps accepting connections and reading requests but answers
  nothing, so every S3 call waits for its bounded timeouts; before the re-run it forwards again;
* ``node removed``: the job runs on a 2-node ``ray.cluster_utils.Cluster`` (3 + 2 CPUs, a search
  actor on each); once the first part exists the non-head node is removed (its processes killed).

Columns: rows in the manifest; ok / failed after the fault plus one re-run; lost (no row);
doubled (an id with two metadata rows, or an SR file for no ok row); ok rows redone (an id whose
readable ``ok`` row from before the re-run was replaced); unreadable rows redone (the rows of a
corrupt part, which must be redone); the re-run's exit code and wall time (Ray start included).
The JSON also gives, where the harness injects the fault into a running job, the seconds from the
fault to the faulted run's exit (``fault_to_exit_seconds``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

FAULTS = ("actor killed", "SIGINT", "SIGTERM", "SIGKILL", "corrupt part", "write dies", "read-only output",
          "S3 restarted", "S3 never answers", "node removed")
# "node removed": the head node hosts one search actor and the light tasks, the second node one actor
# (the plan gives each of the 2 actors (3 + 2 - 1) / 2 = 2 CPUs)
CLUSTER_HEAD_CPUS, CLUSTER_NODE_CPUS = 3, 2
CLUSTER_OBJECT_STORE = 150 * 1024**2


def child(manifest: str, out: str, pause: float, *, kill_marker: str | None = None, write_marker: str | None = None,
          s3_endpoint: str | None = None, node_marker: str | None = None) -> None:
    """``pulse-ray submit`` with the test suite's fake search, and the seam of the fault asked for:
    the actor-killing search (``kill_marker``), the write that dies after its images (``write_marker``),
    a 2-node cluster whose second node is removed once a part exists (``node_marker``)."""
    import dataclasses
    import functools
    import importlib

    from tests.conftest import DieAfterImagesWriteStep, FakeSearchStep, KillOnceSearchStep, fake_upsample

    def slow(lrs, generator, options):
        time.sleep(pause)
        return fake_upsample(lrs, generator, options)

    submit_module = importlib.import_module("pulse_ray.job.submit")
    step = FakeSearchStep
    if kill_marker:
        @dataclasses.dataclass
        class KillOnceFake(KillOnceSearchStep, FakeSearchStep):
            pass

        step = functools.partial(KillOnceFake, marker=kill_marker)
    submit_module.SearchStep = functools.partial(step, upsample_fn=slow)
    if write_marker:
        submit_module.WriteStep = functools.partial(DieAfterImagesWriteStep, marker=write_marker,
                                                    driver_pid=os.getpid())
    ray_args = ["--num-cpus", "2", "--workers", "1"]
    if node_marker:  # the job joins the cluster (--address), one search actor per node
        ray_args = ["--address", _two_node_cluster(out, node_marker), "--workers", "2"]
    from pulse_ray.cli import main

    sys.argv = ["pulse-ray", "submit", manifest, "--output", out, "--restarts", "1", "--steps", "1",
                *ray_args, "--batch-size", "1", "--quiet"]
    if s3_endpoint:
        sys.argv += ["--s3-endpoint-url", s3_endpoint]
    main()


def _two_node_cluster(out: str, marker: str) -> str:
    """A 2-node ``Cluster`` started from this process, and a thread that removes the non-head node
    once the first metadata part exists, then writes ``marker``. Returns the cluster's address."""
    import threading

    from ray.cluster_utils import Cluster

    from pulse_ray.job import metadata as md

    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=CLUSTER_HEAD_CPUS, object_store_memory=CLUSTER_OBJECT_STORE, include_dashboard=False))
    second = cluster.add_node(num_cpus=CLUSTER_NODE_CPUS, object_store_memory=CLUSTER_OBJECT_STORE)
    cluster.wait_for_nodes()
    with open(marker + ".address", "w") as f:
        f.write(cluster.address)

    def remove_when_a_part_exists():
        while not md.metadata_files(out):
            time.sleep(0.2)
        cluster.remove_node(second)
        with open(marker, "w") as f:
            f.write(f"removed at {time.time()}\n")

    threading.Thread(target=remove_when_a_part_exists, daemon=True).start()
    return cluster.address


def _spawn(manifest, out, pause, env_extra=None, **seam) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", manifest, out, str(pause)]
    for name, value in seam.items():
        if value:
            cmd += [f"--{name.replace('_', '-')}", value]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _kill_group(proc) -> None:
    """SIGKILL what is left of a driver's process group (Ray's processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for_a_part(proc, out, store, timeout=300.0) -> None:
    from pulse_ray.job import metadata as md

    deadline = time.monotonic() + timeout
    while not md.metadata_files(out, store=store) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)


def _snapshot(out, store) -> dict[str, object]:
    """id -> finished_at of the readable ok rows."""
    from pulse_ray.job import metadata as md

    t = md.read_metadata(out, dedup_rows=False, corrupt=[], store=store)
    return {i: f for i, s, f in zip(t.column("id").to_pylist(), t.column("status").to_pylist(),
                                    t.column("finished_at").to_pylist()) if s == "ok"}


def _sr_ids(out, store) -> list[str]:
    """The id of every SR image under OUT/sr/ (one entry per file)."""
    from pulse_ray.io import storage

    root = storage.join(out, "sr")
    return [u[len(root):].strip("/")[: -len(".png")] for u in store.list_uris(root, suffix=".png")]


def _forget_cluster(address_file: str) -> None:
    """Ray notes the last cluster started on this machine in ``/tmp/ray/ray_current_cluster``; once
    the 2-node cluster (its address in ``address_file``) is gone, a note naming it would send the next
    embedded ``ray.init`` there."""
    note = "/tmp/ray/ray_current_cluster"
    try:
        with open(address_file) as f, open(note) as g:
            if f.read().strip() == g.read().strip():
                os.unlink(note)
    except OSError:
        pass


def _read_only_mount(path: str) -> None:
    """``path`` bind-mounted read-only onto itself: writes fail with EROFS, for root too."""
    subprocess.run(["mount", "--bind", path, path], check=True, capture_output=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(["umount", path], check=False, capture_output=True)
        raise


def read_only_mount_works(work: str) -> str | None:
    """None when this machine lets us bind-mount a folder read-only, else why not."""
    probe = os.path.join(work, "ro-probe")
    os.makedirs(probe, exist_ok=True)
    try:
        _read_only_mount(probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"mount -o bind,ro is not permitted here: {getattr(exc, 'stderr', b'') or exc}"
    subprocess.run(["umount", probe], check=True, capture_output=True)
    return None


FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}


def one_fault(fault: str, rows: int, pause: float, work: str) -> dict:
    """Inject ``fault`` into a submit of ``rows`` rows, re-run once, count (see the module docstring).
    ``fault_stderr`` is the faulted run's stderr (for the one-line checks)."""
    import pyarrow as pa

    from pulse_ray.io import storage
    from pulse_ray.io.manifest import write_table
    from pulse_ray.job import metadata as md
    from tests.conftest import png_bytes

    manifest, out = os.path.join(work, "m.parquet"), os.path.join(work, "out")
    ids = [f"i{k:03d}" for k in range(rows)]
    write_table(pa.table({"id": ids, "image": [png_bytes(8, 8, k) for k in range(rows)]}), manifest)
    unreadable: list[str] = []
    store, env, seam, server = storage.Storage(), None, {}, None
    marker = os.path.join(work, "marker")
    saved_env = {k: os.environ.get(k) for k in [*FAKE_AWS, "AWS_ENDPOINT_URL"]}
    proxy, injected = None, None
    if fault in ("S3 restarted", "S3 never answers"):
        server, endpoint = _start_moto(0)
        if fault == "S3 never answers":
            proxy = HangingProxy(endpoint)
            endpoint = proxy.endpoint
        env = {**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint}
        os.environ.update(env)  # this process's S3 client too; put back below
        store = storage.Storage(endpoint)
        store.client().create_bucket(Bucket="faults")
        out, seam = "s3://faults/out", {"s3_endpoint": endpoint}
    try:
        if fault == "actor killed":
            proc = _spawn(manifest, out, pause, kill_marker=marker)
            _, fault_err = proc.communicate(timeout=600)
            assert os.path.exists(marker), "the search actor was never killed"
        elif fault == "write dies":
            proc = _spawn(manifest, out, pause, write_marker=marker)
            _, fault_err = proc.communicate(timeout=600)
            _kill_group(proc)
            assert os.path.exists(marker), "the write step never died"
        elif fault == "node removed":
            proc = _spawn(manifest, out, pause, node_marker=marker)
            _, fault_err = proc.communicate(timeout=600)
            _kill_group(proc)
            _forget_cluster(marker + ".address")
            assert os.path.exists(marker), "no node was removed"
        else:
            proc = _spawn(manifest, out, pause, env, **seam)
            _wait_for_a_part(proc, out, store)
            if fault == "corrupt part":  # a second part, so that one is cut and the other stays readable
                while len(md.metadata_files(out)) < 2 and proc.poll() is None:
                    time.sleep(0.2)
            assert proc.poll() is None, "the job ended before the fault"
            injected = time.monotonic()
            if fault == "read-only output":
                _read_only_mount(out)
                try:
                    _, fault_err = proc.communicate(timeout=300)
                finally:
                    subprocess.run(["umount", out], check=True, capture_output=True)
            elif fault == "S3 restarted":
                port = int(endpoint.rsplit(":", 1)[1])
                server.stop()
                _, fault_err = proc.communicate(timeout=300)
                server, _ = _start_moto(port)
            elif fault == "S3 never answers":
                proxy.hang()
                _, fault_err = proc.communicate(timeout=600)
                proxy.resume()
            else:
                sig = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}.get(
                    fault, signal.SIGINT)
                proc.send_signal(sig)
                _, fault_err = proc.communicate(timeout=300)
                if fault == "SIGKILL":
                    _kill_group(proc)  # Ray's processes started by that driver
            if fault == "corrupt part":
                part = md.metadata_files(out)[0]
                unreadable = md.read_part(part).column("id").to_pylist()
                data = open(part, "rb").read()
                with open(part, "wb") as f:
                    f.write(data[: len(data) // 2])
        fault_seconds = None if injected is None else round(time.monotonic() - injected, 1)
        _kill_group(proc)
        fault_rc = proc.returncode
        before = _snapshot(out, store)
        t0 = time.monotonic()
        rerun = _spawn(manifest, out, 0.0, env, **seam)
        _, err = rerun.communicate(timeout=600)
        seconds = time.monotonic() - t0
        _kill_group(rerun)
        meta = md.read_metadata(out, dedup_rows=False, store=store)
        sr = _sr_ids(out, store)
    finally:
        if proxy is not None:
            proxy.close()
        if server is not None:
            server.stop()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    got = meta.column("id").to_pylist()
    status = dict(zip(got, meta.column("status").to_pylist()))
    fin = dict(zip(got, meta.column("finished_at").to_pylist()))
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
        "images_before_row": (open(marker).read().split() if fault == "write dies" else []),
        "recover_seconds": round(seconds, 1),
        "fault_to_exit_seconds": fault_seconds,
        "fault_stderr": fault_err,
        "rerun_stderr_tail": err.strip().splitlines()[-1:] if rerun.returncode else [],
    }


def _start_moto(port: int):
    """A moto S3 server on loopback (``port`` 0: any free one); returns ``(server, endpoint)``."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


class HangingProxy:
    """A TCP proxy on loopback in front of ``target`` (``http://host:port``). After :meth:`hang` it
    still accepts connections and reads what is sent, but forwards and answers nothing (an endpoint
    that never answers); after :meth:`resume` new connections are forwarded again."""

    def __init__(self, target: str):
        host, port = target.rsplit("/", 1)[-1].rsplit(":", 1)
        self.target = (host, int(port))
        self.hanging = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        self.hanging.set()

    def resume(self) -> None:
        self.hanging.clear()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.hanging.is_set():
            self._pipe(client, None)
            return
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    def _pipe(self, src: socket.socket, dst: socket.socket | None) -> None:
        """Copy ``src`` to ``dst`` until either closes; while hanging, read and drop."""
        try:
            while data := src.recv(65536):
                if dst is not None and not self.hanging.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                        sock.close()
                    except OSError:
                        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds each fake search batch sleeps")
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--child", nargs=3, metavar=("MANIFEST", "OUT", "PAUSE"), help=argparse.SUPPRESS)
    for seam in ("--kill-marker", "--write-marker", "--node-marker", "--s3-endpoint"):
        ap.add_argument(seam, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child[0], a.child[1], float(a.child[2]), kill_marker=a.kill_marker, write_marker=a.write_marker,
              s3_endpoint=a.s3_endpoint, node_marker=a.node_marker)
        return 0
    results = []
    for fault in [f.strip() for f in a.faults.split(",") if f.strip()]:
        with tempfile.TemporaryDirectory(prefix="faults-") as work:
            results.append(one_fault(fault, a.rows, a.pause, work))
        shown = {k: v for k, v in results[-1].items() if k != "fault_stderr"}
        shown["fault_stderr_tail"] = results[-1]["fault_stderr"].strip().splitlines()[-1:]
        print(json.dumps(shown, default=str), file=sys.stderr, flush=True)
    print("| fault | rows in | ok / failed after fault + 1 re-run | lost | doubled | ok rows redone "
          "| unreadable rows redone | re-run: exit, seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['fault']} (exit {r['fault_exit']}) | {r['rows']} | {r['ok']} / {r['failed']} | {r['lost']} "
              f"| {r['doubled']} | {r['ok_redone']} | {r['unreadable_redone']} | {r['rerun_exit']}, "
              f"{r['recover_seconds']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "fault_stderr"} for r in results], f, indent=2,
                      default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
