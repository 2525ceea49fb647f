"""Ray for the job: start-up (embedded or joined), resource planning, and the bounded wait
for an autoscaler to add GPUs."""

from __future__ import annotations

import logging
import math
import os
import sys
import time

from .options import DEFAULT_CPU_BATCH, DEFAULT_GPU_BATCH, JobOptions, ResourcesUnavailable, UsageError
from .progress import fmt_secs

__all__ = ["plan_resources", "wait_for_gpus", "withdraw_request", "cluster_resources", "init_ray",
           "worker_runtime_env"]

log = logging.getLogger("pulse_ray.job")

WAIT_POLL_SECONDS = 5.0  # how often the wait looks at the cluster (and re-sends the request)
WAIT_REPORT_SECONDS = 30.0  # how often the wait says what it is waiting for


def plan_resources(total_cpus: float, total_gpus: float, options: JobOptions, n_todo: int,
                   *, autoscale: bool = False):
    """(workers, gpus_per_worker, cpus_per_worker, threads_per_worker, batch_size).

    One worker per GPU where there are GPUs, else one per CPU core. The search
    actors' *logical* CPU claim leaves one core (half of one on a 1-core machine)
    to the read / prepare / write tasks: Ray Data never schedules them otherwise
    and the pipeline would stall. Torch threads per actor are still the
    physical share of cores.

    ``autoscale`` (a joined cluster, ``--address``): GPUs asked for with
    ``--gpus-per-worker`` may not be there yet, because the autoscaler adds GPU
    nodes on demand; the plan is made anyway (``--workers``, else one worker per
    GPU present, at least one) and :func:`wait_for_gpus` waits for them. Without
    it (embedded Ray: the GPUs are the machine's) too few GPUs is a usage error.
    """
    total_cpus = max(float(total_cpus), 0.0) or 1.0
    total_gpus = max(float(total_gpus), 0.0)
    g = float(options.gpus_per_worker or 0.0)
    if g == 0.0 and total_gpus >= 1 and options.workers is None:
        g = 1.0
    reserve = 1.0 if total_cpus >= 2 else 0.5
    if g > 0:
        if total_gpus < g and not autoscale:
            raise UsageError(
                f"--gpus-per-worker {g:g} but the Ray cluster has {total_gpus:g} GPU(s); "
                "use --gpus-per-worker 0 to run on CPUs"
            )
        workers = options.workers or max(1, int(total_gpus // g))
        default_batch = DEFAULT_GPU_BATCH
    else:
        workers = options.workers or max(1, int(total_cpus))
        default_batch = DEFAULT_CPU_BATCH
    batch = options.batch_size or max(1, min(default_batch, math.ceil(max(1, n_todo) / workers)))
    # no idle replicas for a small job (each one loads the generator)
    workers = max(1, min(workers, math.ceil(max(1, n_todo) / batch)))
    cpus = round(max(0.05, (total_cpus - reserve) / workers), 3)
    if g > 0:
        cpus = min(1.0, cpus)
    threads = options.threads_per_worker or max(1, int(total_cpus // workers))
    return workers, g, cpus, threads, batch


def cluster_resources() -> dict:
    """The joined cluster's resources (alive nodes)."""
    import ray

    return ray.cluster_resources()


def request_resources(bundles: list[dict]) -> None:
    """Ask the Ray autoscaler for ``bundles`` (an empty list withdraws the request)."""
    from ray.autoscaler import sdk

    sdk.request_resources(bundles=bundles)


def wait_for_gpus(
    gpus_needed: float,
    bundles: list[dict],
    timeout: float,
    *,
    stream=None,
    poll: float | None = None,
    report_every: float | None = None,
) -> dict:
    """Ask the autoscaler for ``bundles`` and wait until the cluster has at least
    ``gpus_needed`` GPUs; returns its resources then.

    The request is sent again at every poll: it is a cluster-wide setting that
    the last caller overwrites (Ray Data's own autoscaling coordinator included),
    so a single call could be undone while the nodes are still coming. The job
    starts as soon as ``gpus_needed`` (one worker's worth) have joined; the
    other workers' actors start as the autoscaler adds the rest. The caller
    withdraws the request when the job ends (:func:`withdraw_request`).

    Raises :class:`ResourcesUnavailable` after ``timeout`` seconds.
    """
    stream = stream or sys.stderr
    poll = WAIT_POLL_SECONDS if poll is None else poll
    report_every = WAIT_REPORT_SECONDS if report_every is None else report_every
    shape = ", ".join(f"{k} {v:g}" for k, v in bundles[0].items()) if bundles else "-"
    what = f"{len(bundles)} x {{{shape}}}"
    t0 = time.monotonic()
    last_report = None
    request_error = None
    while True:
        try:
            request_resources(bundles)
            request_error = None
        except Exception as exc:  # e.g. no autoscaler API through this connection
            if request_error is None:
                log.warning("could not send the resource request to the Ray autoscaler: %s", exc)
            request_error = f"{type(exc).__name__}: {exc}"
        res = cluster_resources()
        have = float(res.get("GPU", 0) or 0)
        waited = time.monotonic() - t0
        if have >= gpus_needed:
            if last_report is not None:
                stream.write(f"[pulse-ray] {have:g} GPU(s) in the cluster after {fmt_secs(waited)}; starting "
                             "(more workers start as the autoscaler adds GPUs)\n")
                stream.flush()
            return res
        if waited >= timeout:
            hint = (f" The request could not be sent ({request_error})." if request_error else "")
            raise ResourcesUnavailable(
                f"the Ray cluster still has {have:g} GPU(s) after waiting {fmt_secs(waited)} for "
                f"{gpus_needed:g} (asked the autoscaler for {what}).{hint} Check that the cluster has a GPU "
                "worker group that can grow (maxReplicas, GPU nodes available, the autoscaler's log), "
                "wait longer with --wait-for-resources SECONDS, or run on CPUs with --gpus-per-worker 0."
            )
        if last_report is None or waited - last_report >= report_every:
            last_report = waited
            stream.write(
                f"[pulse-ray] waiting for GPUs: the cluster has {have:g}, the job needs {gpus_needed:g} to start; "
                f"asked the Ray autoscaler for {what} ({fmt_secs(waited)} of {fmt_secs(timeout)})\n"
            )
            stream.flush()
        time.sleep(max(0.0, min(poll, timeout - waited)))


def withdraw_request() -> None:
    try:
        request_resources([])
    except Exception as exc:  # best effort: the job's outcome does not depend on it
        log.warning("could not withdraw the resource request from the Ray autoscaler: %s", exc)


def init_ray(options: JobOptions) -> bool:
    """Join the cluster / start embedded Ray. Returns True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if options.address:
        ray.init(address=options.address, logging_level=logging.WARNING)
        return True
    osm = options.object_store_memory or int(os.environ.get("PULSE_RAY_OBJECT_STORE_MEMORY", 512 * 1024**2))
    ray.init(
        address="local",  # a Ray of its own, even where `ray start` left a cluster running on this machine
        num_cpus=options.num_cpus or os.cpu_count() or 1,
        object_store_memory=osm,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env=worker_runtime_env(),
    )
    return True


def worker_runtime_env() -> dict:
    """Embedded Ray: make sure workers import this very ``pulse_ray`` (also when it
    runs from a source checkout that is not pip-installed)."""
    import pulse_ray

    root = os.path.dirname(os.path.dirname(os.path.abspath(pulse_ray.__file__)))
    path = os.environ.get("PYTHONPATH", "")
    parts = [root] + [p for p in path.split(os.pathsep) if p and p != root]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(parts)}}
