"""``submit``: a manifest of LR images in, SR images + one metadata row per input out.

The job, as it runs (see :mod:`pulse_ray.job.steps` for the step protocol)::

    ManifestSource -> PrepareStep -> SearchStep -> WriteStep      run by RayDataExecutor

Resume: ids with an ``ok`` row in ``OUT/metadata/`` are skipped (``--overwrite`` redoes
them); at the end the metadata is compacted to one row per id and a run record is written
(:mod:`pulse_ray.job.output`).

Why not Ray Data's own job checkpointing (``DataContext.checkpoint_config``, 2.60, beta):
it only engages when the plan ends in a ``Write`` datasink, it records every row that
reached the sink (so a ``failed`` row would never be retried) and it keeps a separate
ledger that is deleted on success. The metadata rows are already a durable per-id ledger in
the output itself, so resume reads them instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from pulse_ray.io import images, storage
from pulse_ray.io.manifest import ManifestError

from . import cluster
from .options import JobOptions, ResourcesUnavailable, UsageError
from .output import Output, is_restart_name, utc_now
from .progress import Progress, fmt_secs
from .ray_data import RayDataExecutor
from .search_step import SearchStep
from .steps import ManifestSource, PrepareStep
from .write_step import WriteStep

__all__ = ["JobOptions", "SubmitSummary", "ManifestError", "UsageError", "ResourcesUnavailable", "Terminated", "submit",
           "format_summary"]


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
    set_aside: list = field(default_factory=list)  # unreadable parts moved to OUT/quarantine/ (dry run: found)

    def to_dict(self) -> dict:
        return asdict(self)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a pod being stopped, ``kill``), handled like Ctrl-C: finished rows are saved and a
    re-run resumes; the CLI exits 143 (130 for Ctrl-C)."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: the rest of the grace period is for cleanup
    raise Terminated("SIGTERM")


def _terminate_as_interrupt():
    """SIGTERM raises :class:`Terminated` in the main thread (Ray's ``init`` sets its own handler,
    so this is armed again once Ray is up). Returns the handler it replaced (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def submit(manifest: str, output: str, options: JobOptions | None = None, *, stream=None) -> SubmitSummary:
    """Run the batch job. Raises :class:`ManifestError` / :class:`UsageError` before
    anything is written when the manifest or options are unusable; ``KeyboardInterrupt``
    (:class:`Terminated` for SIGTERM) when stopped, with the finished rows saved."""
    previous = _terminate_as_interrupt()
    try:
        return _submit(manifest, output, options, stream)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _submit(manifest: str, output: str, options: JobOptions | None, stream) -> SubmitSummary:
    o = options or JobOptions()
    t_start, started_at = time.perf_counter(), utc_now()
    stream = stream or sys.stderr
    store = storage.Storage(o.s3_endpoint_url).pinned()  # travels with every step
    out = Output(str(output), store)
    out.check()
    source = ManifestSource.open(manifest, store)  # ManifestError: nothing written
    manifest_ids = set(source.ids)
    if o.dry_run:  # nothing moves: unreadable parts are left out and named
        corrupt: list = []
        ok_in_out = out.done_ids(corrupt)
        set_aside = [part for part, _ in corrupt]
    else:  # unreadable parts go to OUT/quarantine/ and their rows are redone
        moved = out.set_aside_corrupt_parts()
        for part, dest, why in moved:
            stream.write(f"set aside the unreadable part {part} ({why}) as {dest}; its rows are redone\n")
        set_aside = [part for part, _, _ in moved]
        ok_in_out = out.done_ids()
    done = set() if o.overwrite else (ok_in_out & manifest_ids)
    todo = [i for i in source.ids if i not in done]
    save_restarts = o.search.save_restarts
    # Restart images live at OUT/sr/<id>/r<k>.png: ids ending in "/r<number>" must not share an
    # output with them (see output.is_restart_name).
    reserve_restart_names = save_restarts or out.has_restarts()
    if save_restarts:
        clash = sorted(i for i in ok_in_out if is_restart_name(i))
        if clash:
            raise UsageError(
                f"--save-restarts: {output} already holds results for {len(clash)} id(s) ending in /r<number> "
                f"(e.g. {clash[0]!r}), and restart images go to OUT/sr/<id>/r<k>.png, the same paths; "
                "use another output (or run without --save-restarts)")
    _refuse_path_clashes(manifest, source.ids, ok_in_out, set(todo), reserve_restart_names)
    summary = SubmitSummary(total=len(source.ids), skipped=len(done), manifest=str(manifest), output=str(output),
                            dry_run=o.dry_run, set_aside=set_aside)
    search = SearchStep(o.search, o.generator, store)
    try:
        gen = search.load_generator()
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot load generator {o.generator or '(default)'}: {exc}") from None
    summary.generator = str(getattr(gen, "name", o.generator or "default"))

    if o.dry_run:
        _plan_dry_run(summary, o, len(todo))
        _fill_from_metadata(summary, out, manifest_ids, corrupt=[])
        return summary

    timings: dict = {}
    if todo:
        prepare = PrepareStep(int(gen.resolution), tuple(source.bases()), store, frozenset(done), o.max_pixels,
                              o.max_bytes, reserve_restart_names, source.columns)
        write = WriteStep(out, save_restarts)
        failed_now = _run_pipeline(source, prepare, search, write, o, summary, len(todo), stream, timings)
    if o.compact:
        t0 = time.perf_counter()
        out.compact(redone=frozenset(todo) if o.overwrite and todo else None, restarts=bool(todo) and reserve_restart_names)
        if todo and reserve_restart_names:  # restart rows and images of results no longer kept go
            out.remove_stale_restart_images(todo)
        if todo and o.overwrite:
            out.remove_stale_images([i for i in failed_now if i in ok_in_out])
        timings["compact_seconds"] = time.perf_counter() - t0
    _fill_from_metadata(summary, out, manifest_ids)
    summary.seconds = time.perf_counter() - t_start
    out.write_run_record(_run_record(summary, o, gen, started_at, timings), started_at)
    return summary


def _refuse_path_clashes(manifest, ids, ok_in_out, todo: set, restarts: bool) -> None:
    """Distinct ids never share a file (see :func:`pulse_ray.io.images.path_clashes`): a clash that
    involves an id this run writes is a :class:`ManifestError` naming the pair."""
    clashes = [c for c in images.path_clashes(list(dict.fromkeys([*ids, *sorted(ok_in_out)])), restarts)
               if c[0] in todo or c[1] in todo]
    if clashes:
        shown = "; ".join(f"{a!r} and {b!r}: {why}" for a, b, why in clashes[:5])
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise ManifestError(f"manifest {manifest}: {len(clashes)} pair(s) of ids would share a file under OUT/sr/: "
                            f"{shown}{more}; rename one id of each pair")


def _run_pipeline(source, prepare, search, write, o: JobOptions, summary, n_todo, stream, timings) -> list[str]:
    """Start / join Ray, plan, run the steps; fills the summary; returns the ids that failed."""
    started = cluster.init_ray(o)
    _terminate_as_interrupt()
    requested = False
    try:
        joined = bool(o.address)
        res = cluster.cluster_resources()
        workers, g, cpus, threads, batch = cluster.plan_resources(res.get("CPU", 0), res.get("GPU", 0), o, n_todo,
                                                                  autoscale=joined)
        if joined and g > 0 and res.get("GPU", 0) < g * workers:
            # An autoscaling cluster (KubeRay, `ray up`) may have no GPU node yet: ask for one
            # bundle per worker and wait (bounded) until at least one worker's GPUs are there.
            requested = True
            bundle = {"GPU": int(g) if g == int(g) else g, "CPU": 1}  # a search actor claims <= 1 CPU
            res = cluster.wait_for_gpus(g, [bundle] * workers, o.wait_for_resources, stream=stream)
            workers, g, cpus, threads, batch = cluster.plan_resources(res.get("CPU", 0), res.get("GPU", 0), o,
                                                                      n_todo, autoscale=True)
        summary.workers, summary.gpus_per_worker, summary.batch_size = workers, g, batch
        search.num_threads, search.use_gpu = threads, g > 0
        executor = RayDataExecutor(workers, batch, cpus, g)
        progress = Progress(n_todo, o.progress, stream)
        t_pipe = time.perf_counter()
        failed_now: list[str] = []
        for b in executor.run(source, [prepare, search, write]):
            st = b.column("status").to_pylist()
            ok = sum(1 for s in st if s == "ok")
            summary.processed += len(st)
            if ok < len(st):
                failed_now += [i for i, s in zip(b.column("id").to_pylist(), st) if s != "ok"]
            progress.update(ok, len(st) - ok)
        pipe_seconds = time.perf_counter() - t_pipe
    finally:
        if requested:
            cluster.withdraw_request()
        if started:
            import ray

            ray.shutdown()
    summary.images_per_minute = summary.processed / max(1e-9, pipe_seconds) * 60.0
    timings["pipeline_seconds"] = pipe_seconds
    return failed_now


def _plan_dry_run(summary: SubmitSummary, o: JobOptions, n_todo: int) -> None:
    try:
        import ray

        if ray.is_initialized():
            res = ray.cluster_resources()
            cpus, gpus = res.get("CPU", 1), res.get("GPU", 0)
        else:
            cpus, gpus = o.num_cpus or os.cpu_count() or 1, 0
    except Exception:
        cpus, gpus = os.cpu_count() or 1, 0
    w, g, _, _, b = cluster.plan_resources(cpus, gpus, o, n_todo, autoscale=bool(o.address))
    summary.workers, summary.gpus_per_worker, summary.batch_size = w, g, b


def _run_record(s: SubmitSummary, o: JobOptions, gen, started_at, timings: dict) -> dict:
    import platform

    import pyarrow
    import ray
    import torch

    import pulse_ray

    return {
        "started": started_at.isoformat(), "finished": utc_now().isoformat(),
        "manifest": s.manifest, "output": s.output, "options": o.record(),
        "generator": {"name": s.generator, "sha256": getattr(gen, "source_sha256", None),
                      "resolution": int(gen.resolution)},
        "versions": {"pulse_ray": pulse_ray.__version__, "python": platform.python_version(),
                     "torch": torch.__version__, "ray": ray.__version__, "pyarrow": pyarrow.__version__},
        "counts": {k: getattr(s, k) for k in ("total", "ok", "failed", "skipped", "converged", "processed")},
        "errors": dict(s.errors), "set_aside": list(s.set_aside),
        "plan": {"workers": s.workers, "batch_size": s.batch_size, "gpus_per_worker": s.gpus_per_worker},
        "timings": {"seconds": round(s.seconds, 3), "images_per_minute": round(s.images_per_minute, 3),
                    **{k: round(v, 3) for k, v in timings.items()}},
    }


def _fill_from_metadata(summary: SubmitSummary, out: Output, manifest_ids: set[str], corrupt=None) -> None:
    t = out.read_metadata(columns=["id", "status", "converged", "error_kind"], corrupt=corrupt)
    ok = failed = conv = 0
    errors: Counter = Counter()
    for rid, st, cv, ek in zip(t.column("id").to_pylist(), t.column("status").to_pylist(),
                               t.column("converged").to_pylist(), t.column("error_kind").to_pylist()):
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
    if s.set_aside:
        lines.append(f"  set aside  {len(s.set_aside)} unreadable part(s) "
                     + ("(a run moves them to OUT/quarantine/ and redoes their rows): " if s.dry_run else
                        "moved to OUT/quarantine/, their rows redone: ") + ", ".join(s.set_aside[:3]))
    if s.dry_run:
        lines.append(f"  to do      {s.total - s.skipped} rows; {s.skipped} already ok (would be skipped)")
        return "\n".join(lines)
    conv = f"{s.converged / s.ok:.0%}" if s.ok else "-"
    lines += [
        f"  this run   {s.processed} rows in {fmt_secs(s.seconds)} ({s.images_per_minute:.1f} img/min); "
        f"{s.skipped} skipped (already ok)",
        f"  status     ok {s.ok}, failed {s.failed} of {s.total}; converged {s.converged} ({conv} of ok)",
    ]
    if s.errors:
        lines.append("  errors     " + ", ".join(f"{k}: {v}" for k, v in s.errors.items()))
        lines.append("             (details: pulse-ray status OUT; rows with status=failed in OUT/metadata)")
    return "\n".join(lines)
