"""``submit``: a manifest of LR images in, SR images + one metadata row per input out.

The job is a Ray Data pipeline (the engine's own batch inference machinery):

    read_parquet(manifest)                               CPU tasks
      -> map_batches(prepare_batch)                      CPU tasks: skip done ids, fetch, validate, decode
      -> repartition(target_num_rows_per_block=B)        so that W actors share the work
      -> map_batches(SearchStage, ActorPoolStrategy(W),  one generator replica per actor,
                     num_gpus=G)                         G GPUs each (CPU threads otherwise)
      -> map_batches(write_batch)                        CPU tasks: OUT/sr/<id>.png, OUT/metadata/part-*.parquet
      -> iter_batches()                                  the driver only counts (progress)

Ray restarts a killed search actor and retries its batch (``max_restarts`` /
``max_task_retries`` default to -1 for Ray Data actor pools); a retried write
rewrites the same deterministic part file, so nothing is lost or duplicated.
Resume: ids with an ``ok`` row in ``OUT/metadata/`` are skipped (``--overwrite``
redoes them); at the end the metadata is compacted to one row per id (see
:mod:`pulse_ray.job.metadata` for the dedup rule).

Why not Ray Data's own job checkpointing (``DataContext.checkpoint_config``, 2.60,
beta): it only engages when the plan ends in a ``Write`` datasink, it records every
row that reached the sink — so a ``failed`` row would never be retried — and it
keeps a separate ledger that is deleted on success. The metadata rows are already
a durable per-id ledger in the output itself, so resume reads them instead.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from pulse_ray.io import images, storage
from pulse_ray.io.manifest import ManifestError, inspect_manifest
from pulse_ray.search.pulse import KEEP_RULES

from . import metadata as md
from .stages import SearchStage, is_restart_name, prepare_batch, sr_uri_for, write_batch

__all__ = [
    "SubmitOptions",
    "SubmitSummary",
    "ManifestError",
    "UsageError",
    "ResourcesUnavailable",
    "submit",
    "plan_resources",
    "wait_for_gpus",
]

log = logging.getLogger("pulse_ray.job")

DEFAULT_CPU_BATCH = 4
DEFAULT_GPU_BATCH = 16
LIGHT_CPUS = 0.25  # logical CPU claim of the prepare / write tasks (I/O bound)
DEFAULT_WAIT_FOR_RESOURCES = 600.0  # seconds --address waits for the autoscaler to add GPUs
WAIT_POLL_SECONDS = 5.0  # how often the wait looks at the cluster (and re-sends the request)
WAIT_REPORT_SECONDS = 30.0  # how often the wait says what it is waiting for


class UsageError(ValueError):
    """Bad options or an unusable output / generator (CLI exit code 2)."""


class ResourcesUnavailable(RuntimeError):
    """The Ray cluster did not get the GPUs the job asked for within
    ``--wait-for-resources`` seconds (an infrastructure failure: CLI exit code 1)."""


@dataclass
class SubmitOptions:
    generator: str | None = None
    restarts: int = 4
    steps: int = 100
    eps: float = 2e-3
    seed: int = 0
    workers: int | None = None
    gpus_per_worker: float = 0.0
    batch_size: int | None = None
    address: str | None = None
    overwrite: bool = False
    dry_run: bool = False
    keep_restarts: bool = False
    keep: str = "realistic"  # which iterate and restart a search keeps: "realistic" or "closest"
    s3_endpoint_url: str | None = None
    wait_for_resources: float = DEFAULT_WAIT_FOR_RESOURCES  # --address only: seconds to wait for GPUs
    # beyond the contract (all optional)
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    max_bytes: int = images.DEFAULT_MAX_BYTES
    num_cpus: int | None = None  # embedded Ray only; default: all cores
    threads_per_worker: int | None = None  # torch CPU threads per search actor; default: its share of cores
    object_store_memory: int | None = None  # embedded Ray only
    progress: bool = True
    compact: bool = True


@dataclass
class SubmitSummary:
    total: int = 0  # rows in the manifest
    ok: int = 0  # rows with an ok row in OUT after this run (incl. skipped)
    failed: int = 0
    skipped: int = 0  # already ok before this run
    converged: int = 0  # ok rows that converged
    seconds: float = 0.0  # wall time of this run
    processed: int = 0  # rows processed by this run
    images_per_minute: float = 0.0  # processed / minute of pipeline time
    workers: int = 0
    batch_size: int = 0
    gpus_per_worker: float = 0.0
    generator: str = ""
    manifest: str = ""
    output: str = ""
    dry_run: bool = False
    errors: dict = field(default_factory=dict)  # error_kind -> count (this manifest's failed rows)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- helpers


def _check_options(o: SubmitOptions) -> None:
    if o.restarts < 1:
        raise UsageError(f"--restarts must be >= 1 (got {o.restarts})")
    if o.steps < 1:
        raise UsageError(f"--steps must be >= 1 (got {o.steps})")
    if not (o.eps > 0 and math.isfinite(o.eps)):
        raise UsageError(f"--eps must be a positive number (got {o.eps})")
    if o.keep not in KEEP_RULES:
        raise UsageError(f"--keep must be one of {', '.join(KEEP_RULES)} (got {o.keep!r})")
    if o.workers is not None and o.workers < 1:
        raise UsageError(f"--workers must be >= 1 (got {o.workers})")
    if o.threads_per_worker is not None and o.threads_per_worker < 1:
        raise UsageError(f"--threads-per-worker must be >= 1 (got {o.threads_per_worker})")
    if o.batch_size is not None and o.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1 (got {o.batch_size})")
    if o.gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker must be >= 0 (got {o.gpus_per_worker})")
    if not (o.wait_for_resources >= 0 and math.isfinite(o.wait_for_resources)):
        raise UsageError(f"--wait-for-resources must be >= 0 seconds (got {o.wait_for_resources})")


def _check_output(out: str) -> None:
    if storage.is_s3(out):
        bucket, _ = storage.split_s3(out)
        return
    path = storage.local_path(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"output {out} exists and is not a folder")


def _manifest_bases(manifest: str, files: list[str]) -> list[str]:
    """Where relative ``uri`` values are looked up: the manifest's folder, then cwd."""
    if storage.is_s3(manifest):
        first = files[0]
        base = first.rsplit("/", 1)[0] if first != manifest or not manifest.endswith("/") else manifest
        return [base]
    p = storage.local_path(manifest)
    base = p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
    return [os.path.abspath(base), os.getcwd()]


def plan_resources(total_cpus: float, total_gpus: float, options: SubmitOptions, n_todo: int,
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


def _cluster_resources() -> dict:
    """The joined cluster's resources (alive nodes); a seam for tests."""
    import ray

    return ray.cluster_resources()


def _request_resources(bundles: list[dict]) -> None:
    """Ask the Ray autoscaler for ``bundles`` (an empty list withdraws the request)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


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
    withdraws the request when the job ends (:func:`_withdraw_request`).

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
            _request_resources(bundles)
            request_error = None
        except Exception as exc:  # e.g. no autoscaler API through this connection
            if request_error is None:
                log.warning("could not send the resource request to the Ray autoscaler: %s", exc)
            request_error = f"{type(exc).__name__}: {exc}"
        res = _cluster_resources()
        have = float(res.get("GPU", 0) or 0)
        waited = time.monotonic() - t0
        if have >= gpus_needed:
            if last_report is not None:
                stream.write(f"[pulse-ray] {have:g} GPU(s) in the cluster after {_fmt_secs(waited)}; starting "
                             "(more workers start as the autoscaler adds GPUs)\n")
                stream.flush()
            return res
        if waited >= timeout:
            hint = (f" The request could not be sent ({request_error})." if request_error else "")
            raise ResourcesUnavailable(
                f"the Ray cluster still has {have:g} GPU(s) after waiting {_fmt_secs(waited)} for "
                f"{gpus_needed:g} (asked the autoscaler for {what}).{hint} Check that the cluster has a GPU "
                "worker group that can grow (maxReplicas, GPU nodes available, the autoscaler's log), "
                "wait longer with --wait-for-resources SECONDS, or run on CPUs with --gpus-per-worker 0."
            )
        if last_report is None or waited - last_report >= report_every:
            last_report = waited
            stream.write(
                f"[pulse-ray] waiting for GPUs: the cluster has {have:g}, the job needs {gpus_needed:g} to start; "
                f"asked the Ray autoscaler for {what} ({_fmt_secs(waited)} of {_fmt_secs(timeout)})\n"
            )
            stream.flush()
        time.sleep(max(0.0, min(poll, timeout - waited)))


def _withdraw_request() -> None:
    try:
        _request_resources([])
    except Exception as exc:  # best effort: the job's outcome does not depend on it
        log.warning("could not withdraw the resource request from the Ray autoscaler: %s", exc)


def _load_generator(source):
    try:
        import pulse_ray
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError(f"pulse_ray core is not importable: {exc}") from exc
    try:
        return pulse_ray.load_generator(source)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot load generator {source or '(default)'}: {exc}") from None


class _Progress:
    """Images done / failed, images per minute, ETA; on stderr."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.ok = self.failed = 0
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, ok: int, failed: int) -> None:
        self.ok += ok
        self.failed += failed
        now = time.perf_counter()
        if not self.enabled:
            return
        done = self.ok + self.failed
        if done < self.total and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        el = max(1e-9, now - self.t0)
        rate = done / el * 60.0
        eta = (self.total - done) / (done / el) if done else float("nan")
        eta_s = "--" if not math.isfinite(eta) else _fmt_secs(eta)
        line = (
            f"[pulse-ray] {done}/{self.total} done (ok {self.ok}, failed {self.failed}) | "
            f"{rate:.1f} img/min | ETA {eta_s}"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _fmt_secs(s: float) -> str:
    if 0 < s < 10 and s != int(s):
        return f"{s:.1f}s"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _init_ray(options: SubmitOptions):
    """Join the cluster / start embedded Ray. Returns True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if options.address:
        ray.init(address=options.address, logging_level=logging.WARNING)
        return True
    osm = options.object_store_memory or int(os.environ.get("PULSE_RAY_OBJECT_STORE_MEMORY", 512 * 1024**2))
    ray.init(
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


# ----------------------------------------------------------------------------- submit


def submit(
    manifest: str,
    output: str,
    options: SubmitOptions | None = None,
    *,
    stream=None,
    _generator=None,
    _upsample_fn=None,
    _kill_once_marker: str | None = None,
    _interrupt_after: int | None = None,
) -> SubmitSummary:
    """Run the batch job. Raises :class:`ManifestError` / :class:`UsageError` before
    anything is written when the manifest or options are unusable.

    Fault injection and fakes, for tests only: ``_generator`` / ``_upsample_fn``
    replace the generator and the search in every actor (they must be picklable);
    ``_kill_once_marker`` (a path) makes the first search batch kill its actor's
    process (``os._exit``) once; ``_interrupt_after`` raises ``KeyboardInterrupt``
    in the driver once that many rows are done (as Ctrl-C would).
    """
    options = options or SubmitOptions()
    t_start = time.perf_counter()
    stream = stream or sys.stderr
    if options.s3_endpoint_url:
        storage.set_s3_endpoint_url(options.s3_endpoint_url)
    _check_options(options)
    _check_output(output)
    info = inspect_manifest(manifest)  # ManifestError: nothing written
    manifest_ids = set(info.ids)
    ok_in_out = md.done_ids(output)
    done = set() if options.overwrite else (ok_in_out & manifest_ids)
    todo = [i for i in info.ids if i not in done]
    # Restart images live at OUT/sr/<id>/r<k>.png: ids ending in "/r<number>" must not share an
    # output with them (see stages.is_restart_name).
    reserve_restart_names = options.keep_restarts or bool(md.metadata_files(output, md.RESTARTS_DIR))
    if options.keep_restarts:
        clash = sorted(i for i in ok_in_out if is_restart_name(i))
        if clash:
            raise UsageError(
                f"--keep-restarts: {output} already holds results for {len(clash)} id(s) ending in /r<number> "
                f"(e.g. {clash[0]!r}), and restart images go to OUT/sr/<id>/r<k>.png, the same paths; "
                "use another output (or run without --keep-restarts)"
            )
    summary = SubmitSummary(
        total=info.num_rows,
        skipped=len(done),
        manifest=str(manifest),
        output=str(output),
        dry_run=options.dry_run,
    )
    gen = _generator if _generator is not None else _load_generator(options.generator)
    summary.generator = str(getattr(gen, "name", options.generator or "default"))
    resolution = int(gen.resolution)

    if options.dry_run:
        try:
            import ray

            if ray.is_initialized():
                res = ray.cluster_resources()
                cpus, gpus = res.get("CPU", 1), res.get("GPU", 0)
            else:
                cpus, gpus = options.num_cpus or os.cpu_count() or 1, 0
        except Exception:
            cpus, gpus = os.cpu_count() or 1, 0
        w, g, c, _, b = plan_resources(cpus, gpus, options, len(todo), autoscale=bool(options.address))
        summary.workers, summary.gpus_per_worker, summary.batch_size = w, g, b
        summary.processed = 0
        _fill_from_metadata(summary, output, manifest_ids)
        return summary

    if not todo:
        if options.compact:
            md.compact(output)
        _fill_from_metadata(summary, output, manifest_ids)
        summary.seconds = time.perf_counter() - t_start
        return summary

    import ray

    started = _init_ray(options)
    requested = False
    try:
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        joined = bool(options.address)
        res = _cluster_resources()
        workers, g, cpus, threads, batch = plan_resources(
            res.get("CPU", 0), res.get("GPU", 0), options, len(todo), autoscale=joined)
        if joined and g > 0 and res.get("GPU", 0) < g * workers:
            # An autoscaling cluster (KubeRay, `ray up`) may have no GPU node yet: ask for one
            # bundle per worker and wait (bounded) until at least one worker's GPUs are there.
            requested = True
            bundle = {"GPU": int(g) if g == int(g) else g, "CPU": 1}  # a search actor claims <= 1 CPU
            res = wait_for_gpus(g, [bundle] * workers, options.wait_for_resources, stream=stream)
            workers, g, cpus, threads, batch = plan_resources(
                res.get("CPU", 0), res.get("GPU", 0), options, len(todo), autoscale=True)
        summary.workers, summary.gpus_per_worker, summary.batch_size = workers, g, batch

        endpoint = storage.s3_endpoint_url() if (storage.is_s3(output) or any(storage.is_s3(f) for f in info.files)) else None
        fault = _kill_once_marker or os.environ.get("PULSE_RAY_FAULT_KILL_ONCE") or None
        fs, _ = storage.arrow_filesystem(info.files[0])
        paths = [storage.arrow_filesystem(f)[1] for f in info.files]
        import pyarrow.dataset  # noqa: F401  (ensures the parquet reader is importable)

        ds = ray.data.read_parquet(
            paths,
            filesystem=fs,
            partitioning=None,
        )
        ds = ds.map_batches(
            prepare_batch,
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=False,
            num_cpus=LIGHT_CPUS,
            fn_kwargs=dict(
                skip_ids=frozenset(done),
                resolution=resolution,
                bases=_manifest_bases(manifest, info.files),
                max_pixels=options.max_pixels,
                max_bytes=options.max_bytes,
                s3_endpoint_url=endpoint,
                reserve_restart_names=reserve_restart_names,
            ),
        )
        ds = ds.repartition(target_num_rows_per_block=batch)
        ds = ds.map_batches(
            SearchStage,
            batch_format="pyarrow",
            batch_size=batch,
            compute=ActorPoolStrategy(size=workers),
            num_cpus=cpus,
            num_gpus=g or None,
            fn_constructor_kwargs=dict(
                generator=options.generator,
                restarts=options.restarts,
                steps=options.steps,
                eps=options.eps,
                seed=options.seed,
                keep_restarts=options.keep_restarts,
                keep=options.keep,
                num_threads=threads,
                use_gpu=g > 0,
                s3_endpoint_url=endpoint,
                fault_kill_once=fault,
                upsample_fn=_upsample_fn,
                generator_obj=_generator,
            ),
        )
        ds = ds.map_batches(
            write_batch,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=LIGHT_CPUS,
            fn_kwargs=dict(
                out=output,
                keep_restarts=options.keep_restarts,
                s3_endpoint_url=endpoint,
                run_salt="",
            ),
        )
        progress = _Progress(len(todo), options.progress, stream)
        t_pipe = time.perf_counter()
        processed = 0
        failed_now: list[str] = []
        batches = iter(ds.iter_batches(batch_format="pyarrow", batch_size=None))
        try:
            for b in batches:
                st = b.column("status").to_pylist()
                ok = sum(1 for s in st if s == "ok")
                progress.update(ok, len(st) - ok)
                processed += len(st)
                if ok < len(st):
                    failed_now += [i for i, s in zip(b.column("id").to_pylist(), st) if s != "ok"]
                if _interrupt_after is not None and processed >= _interrupt_after:
                    raise KeyboardInterrupt(f"test interrupt after {processed} rows")
        finally:  # an interrupt stops the pipeline now, not when the iterator is garbage-collected
            batches.close()
        pipe_seconds = time.perf_counter() - t_pipe
    finally:
        if requested:
            _withdraw_request()
        if started:
            ray.shutdown()
    if options.compact:
        md.compact(output, redone=frozenset(todo) if options.overwrite else None)
        if reserve_restart_names:  # restart rows and images of results no longer kept go
            md.compact(output, md.RESTARTS_DIR)
            _remove_stale_restart_images(output, todo)
    if options.overwrite and options.compact:
        _remove_stale_images(output, [i for i in failed_now if i in ok_in_out])
    summary.processed = processed
    summary.images_per_minute = processed / max(1e-9, pipe_seconds) * 60.0
    _fill_from_metadata(summary, output, manifest_ids)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _remove_stale_images(output: str, ids: list[str]) -> None:
    """``--overwrite``: ids that were ok and failed this time keep no SR image from before
    (their metadata row, compacted already, says failed and points at nothing)."""
    for rid in ids:
        try:
            uri = sr_uri_for(output, images.safe_relpath(rid))
        except Exception:  # an unsafe id wrote nothing
            continue
        _delete_stale(uri)


def _delete_stale(uri: str) -> None:
    """Best effort: the metadata is right whether the file goes or not."""
    try:
        storage.delete(uri)
    except Exception as exc:
        log.warning("could not remove the stale image %s: %s", uri, exc)


def _remove_stale_restart_images(output: str, ids: list[str]) -> None:
    """Restart images of the ids this run processed that no kept restart row points at
    (an earlier run's extra restarts, or an id that now failed or ran without
    ``--keep-restarts``). Best effort: the metadata is right either way."""
    rels = set()
    for rid in ids:
        try:
            rels.add(images.safe_relpath(rid))
        except Exception:  # an unsafe id wrote nothing
            continue
    kept = set(md.read_restarts(output).column("sr_uri").to_pylist())
    root = storage.join(output, md.SR_DIR)
    for uri in storage.list_uris(root, suffix=".png"):
        rel = uri[len(root):].strip("/")[: -len(".png")]
        if uri not in kept and is_restart_name(rel) and rel.rsplit("/", 1)[0] in rels:
            _delete_stale(uri)


def _fill_from_metadata(summary: SubmitSummary, output: str, manifest_ids: set[str]) -> None:
    t = md.read_metadata(output, columns=["id", "status", "converged", "error_kind"])
    ok = failed = conv = 0
    errors: Counter = Counter()
    for rid, st, cv, ek in zip(
        t.column("id").to_pylist(),
        t.column("status").to_pylist(),
        t.column("converged").to_pylist(),
        t.column("error_kind").to_pylist(),
    ):
        if rid not in manifest_ids:
            continue
        if st == "ok":
            ok += 1
            conv += bool(cv)
        else:
            failed += 1
            errors[ek or "error"] += 1
    summary.ok, summary.failed, summary.converged = ok, failed, conv
    summary.errors = dict(errors.most_common())


def format_summary(s: SubmitSummary) -> str:
    lines = [
        "pulse-ray submit" + (" (dry run: nothing was run or written)" if s.dry_run else ""),
        f"  manifest   {s.manifest}  ({s.total} rows)",
        f"  output     {s.output}",
        f"  generator  {s.generator}",
        f"  workers    {s.workers} x (GPU {s.gpus_per_worker:g})  batch size {s.batch_size}",
    ]
    if s.dry_run:
        lines.append(f"  to do      {s.total - s.skipped} rows; {s.skipped} already ok (would be skipped)")
        return "\n".join(lines)
    conv = f"{s.converged / s.ok:.0%}" if s.ok else "-"
    lines += [
        f"  this run   {s.processed} rows in {_fmt_secs(s.seconds)} ({s.images_per_minute:.1f} img/min); "
        f"{s.skipped} skipped (already ok)",
        f"  status     ok {s.ok}, failed {s.failed} of {s.total}; converged {s.converged} ({conv} of ok)",
    ]
    if s.errors:
        lines.append("  errors     " + ", ".join(f"{k}: {v}" for k, v in s.errors.items()))
        lines.append("             (details: pulse-ray status OUT; rows with status=failed in OUT/metadata)")
    return "\n".join(lines)
