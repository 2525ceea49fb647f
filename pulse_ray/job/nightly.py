"""``nightly``: run ``submit`` on every manifest under an input prefix that has not been processed.

Made for a scheduler (a Kubernetes CronJob, cron) that runs it again and again over a prefix
where new manifests land::

    pulse-ray nightly INPUT_PREFIX OUTPUT_ROOT [--dry-run] [--retry-failed] [any submit option]
    python scripts/nightly.py INPUT_PREFIX OUTPUT_ROOT ...       (the same)

Manifests (under INPUT_PREFIX, local or ``s3://``, at any depth; names starting with ``.`` or
``_`` are ignored):

* a ``*.parquet`` file is one manifest;
* a folder whose name ends in ``.parquet``, or that holds a ``_SUCCESS`` marker (Spark / Hadoop
  writers add it when the whole folder is written), is one manifest of all the Parquet files
  below it. A marker-less folder of parts would be read while its writer may still be adding to
  it, so its files are taken one by one instead.

Each manifest gets its own output prefix ``OUTPUT_ROOT/<key>`` and a ledger entry
``OUTPUT_ROOT/_ledger/<key>.json``; ``<key>`` is derived from the manifest's path below
INPUT_PREFIX (readable, plus a short hash, so it is stable and two manifests never share one).
The ledger entry records the manifest, the output, when the last attempt started and finished,
its counts, its exit status and the earlier attempts. It is written (atomically) before ``submit``
starts and again when it ends, so:

* a manifest whose entry says ``finished`` is done and never run again (``--retry-failed`` runs
  the ones that finished with failed rows again: ``submit`` then redoes only the failed rows);
* ``started`` means a run died half-way (node lost, pod killed): it is resumed, and ``submit``
  skips the rows that already have an ``ok`` result, so nothing is computed twice;
* ``error`` (an unexpected exception, e.g. the cluster was unreachable) is resumed the same way;
* ``failed`` means the manifest itself is unusable (exit status 2): it is not run again until
  ``--retry-failed`` (after fixing it in place).

Runs must not overlap (the CronJob in infra/ uses ``concurrencyPolicy: Forbid``): two at once
would both resume the same ``started`` manifest. That wastes work but corrupts nothing (results
and metadata are written per row, deterministically).

Exit codes: 0 everything run this time succeeded (or there was nothing to do), 1 some manifest
ended with failed rows or an error, 2 bad arguments or options ``submit`` refused (then the
remaining manifests are left for the next run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import time
import typing
from dataclasses import dataclass, field

from pulse_ray.io import storage
from pulse_ray.search.options import SearchOptions
from pulse_ray.search.options import cli_fields as search_cli_fields

from .discover import (ERROR, FAILED, FINISHED, LEDGER_DIR, NEW, STARTED, Manifest, PlanItem, find_manifests,
                       manifest_key, norm_prefix, now, plan, read_entry, write_entry)
from .options import JobOptions, UsageError, job_fields

__all__ = ["LEDGER_DIR", "Manifest", "PlanItem", "NightlyResult", "find_manifests", "manifest_key", "plan",
           "run_nightly", "read_entry", "build_parser", "main"]

LEDGER_VERSION = 1

# JobOptions fields nightly sets itself (not offered as pass-through options)
_OWN_FIELDS = {"dry_run"}


# ----------------------------------------------------------------------------- run


@dataclass
class NightlyResult:
    items: list[PlanItem] = field(default_factory=list)
    entries: dict[str, dict] = field(default_factory=dict)  # key -> ledger entry written by this run
    exit_code: int = 0
    aborted: str | None = None  # why the remaining manifests were left for the next run

def _options_record(options: JobOptions) -> dict:
    """The job's options and the search's command-line ones, flat (as the flags are)."""
    rec = {f.name: getattr(options, f.name) for f in job_fields()}
    rec.update({f.name: getattr(options.search, f.name) for f in search_cli_fields()})
    return {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in rec.items()}


def _counts(summary) -> dict:
    keys = ("total", "ok", "failed", "skipped", "converged", "processed", "seconds", "images_per_minute")
    out = {k: getattr(summary, k) for k in keys if hasattr(summary, k)}
    if getattr(summary, "errors", None):
        out["errors"] = dict(summary.errors)
    return out


def _short_error(exc: BaseException, limit: int = 2000) -> str:
    s = f"{type(exc).__name__}: {exc}".strip()
    return s if len(s) <= limit else s[: limit - 3] + "..."


def run_manifest(item: PlanItem, options: JobOptions, submit_fn, log) -> dict:
    """Run ``submit`` on one manifest, with its ledger entry around it. Returns the final entry."""
    from pulse_ray.io.manifest import ManifestError

    m, prev = item.manifest, item.entry or {}
    history = list(prev.get("history") or [])
    if prev:
        history.append({k: prev.get(k) for k in ("status", "started", "finished", "exit_status", "counts", "error")})
    store = storage.Storage(options.s3_endpoint_url)
    if item.action != NEW and options.overwrite:
        # --overwrite is for a fresh manifest only: a resumed run keeps what is already done.
        options = dataclasses.replace(options, overwrite=False)
    entry = {
        "version": LEDGER_VERSION,
        "manifest": m.uri,
        "key": m.key,
        "output": m.output,
        "status": STARTED,
        "started": now(),
        "finished": None,
        "exit_status": None,
        "counts": None,
        "error": None,
        "attempts": int(prev.get("attempts") or 0) + 1,
        "resumed": item.action != NEW,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "options": _options_record(options),
        "history": history[-20:],
    }
    write_entry(m.ledger, entry, store)
    log(f"[nightly] {item.action:<6} {m.uri} -> {m.output}")
    t0 = time.time()
    try:
        summary = submit_fn(m.uri, m.output, options)
    except ManifestError as exc:
        entry.update(status=FAILED, exit_status=2, error=_short_error(exc))
    except UsageError as exc:
        entry.update(status=ERROR, exit_status=2, error=_short_error(exc))
    except Exception as exc:  # the cluster, the store, a bug: resumed next time
        entry.update(status=ERROR, exit_status=1, error=_short_error(exc))
    else:
        counts = _counts(summary)
        entry.update(status=FINISHED, exit_status=0 if int(counts.get("failed", 0)) == 0 else 1, counts=counts)
    entry["finished"] = now()
    entry["seconds"] = round(time.time() - t0, 3)
    write_entry(m.ledger, entry, store)
    c = entry["counts"] or {}
    detail = (f"ok {c.get('ok')}, failed {c.get('failed')}, skipped {c.get('skipped')} of {c.get('total')}"
              if c else entry["error"])
    log(f"[nightly] {entry['status']:<8} {m.uri} (exit {entry['exit_status']}): {detail}")
    return entry


def run_nightly(input_prefix: str, output_root: str, options: JobOptions | None = None, *, dry_run: bool = False,
                retry_failed: bool = False, limit: int | None = None, submit_fn=None, log=print) -> NightlyResult:
    """Plan, then (unless ``dry_run``) run every manifest that needs it, in path order.
    ``submit_fn(manifest, output, options)`` (default :func:`pulse_ray.job.submit.submit`) runs one."""
    options = options or JobOptions()
    if submit_fn is None:
        from .submit import submit as submit_fn
    store = storage.Storage(options.s3_endpoint_url)
    if storage.is_s3(output_root) == storage.is_s3(input_prefix) and \
            norm_prefix(output_root) == norm_prefix(input_prefix):
        raise ValueError("OUTPUT_ROOT must differ from INPUT_PREFIX")

    result = NightlyResult(items=plan(input_prefix, output_root, retry_failed, store))
    todo = [it for it in result.items if it.runs]
    if limit is not None:
        todo = todo[:max(0, limit)]
    counts: dict[str, int] = {}
    for it in result.items:
        counts[it.action] = counts.get(it.action, 0) + 1
    log(f"[nightly] {input_prefix}: {len(result.items)} manifest(s): "
        + (", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "none")
        + (f"; running {len(todo)} (--limit)" if limit is not None else ""))
    if dry_run:
        for it in result.items:
            note = ""
            if it.entry:
                note = f"  [{it.entry.get('status')}, exit {it.entry.get('exit_status')}, " \
                       f"attempts {it.entry.get('attempts')}]"
            mark = "would run" if it in todo else "skip"
            log(f"  {mark:<9} {it.action:<11} {it.manifest.uri} -> {it.manifest.output}{note}")
        log("[nightly] dry run: nothing was run or written")
        return result

    worst = 0
    for i, it in enumerate(todo):
        entry = run_manifest(it, options, submit_fn, log)
        result.entries[it.manifest.key] = entry
        worst = max(worst, int(entry["exit_status"] or 0))
        if entry["status"] == ERROR and entry["exit_status"] == 2:
            # submit refused the options (or the generator): the same for every manifest.
            result.aborted = entry["error"]
            left = len(todo) - i - 1
            if left:
                log(f"[nightly] stopping: submit refused the options; {left} manifest(s) left for the next run")
            break
    result.exit_code = 2 if result.aborted else min(worst, 1)
    log(f"[nightly] done: {len(result.entries)} run, exit {result.exit_code}")
    return result


# ----------------------------------------------------------------------------- command line


def _arg_type(hint):
    """(argparse type, is_bool) for an option field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if base is bool:
        return None, True
    if base in (int, float, str):
        return base, False
    return str, False


def _option_fields():
    """(field, type hint, owner) of every pass-through option: the job's (all but ``dry_run``),
    then the search's command-line ones."""
    jh, sh = typing.get_type_hints(JobOptions), typing.get_type_hints(SearchOptions)
    return ([(f, jh[f.name], "job") for f in job_fields() if f.name not in _OWN_FIELDS]
            + [(f, sh[f.name], "search") for f in search_cli_fields()])


def build_parser(prog: str = "pulse-ray nightly") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run `submit` on every manifest under INPUT_PREFIX not yet processed, each into "
                    "OUTPUT_ROOT/<key>, recording every run in OUTPUT_ROOT/_ledger/<key>.json. "
                    "Idempotent: finished manifests are never run again; runs that died half-way "
                    "are resumed.",
    )
    p.add_argument("input_prefix", metavar="INPUT_PREFIX", help="where manifests land (local or s3://)")
    p.add_argument("output_root", metavar="OUTPUT_ROOT", help="one output prefix per manifest, and the ledger")
    p.add_argument("--dry-run", action="store_true", help="list what would be done; run and write nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again manifests that finished with failed rows or were unusable")
    p.add_argument("--limit", type=int, default=None, help="run at most this many manifests")
    g = p.add_argument_group("submit options (passed to every submit)")
    for f, hint, _ in _option_fields():
        flags = ["--" + f.name.replace("_", "-")]
        if f.metadata.get("old_flag"):
            flags.append(f.metadata["old_flag"])
        typ, is_bool = _arg_type(hint)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f.metadata["help"]
        if f.metadata.get("old_flag"):
            help_ += f" ({f.metadata['old_flag']}: deprecated spelling)"
        if is_bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            g.add_argument(*flags, dest=f.name, action=action, default=bool(default), help=help_)
        else:
            g.add_argument(*flags, dest=f.name, type=typ, default=default,
                           help=help_ + (f" (default {default})" if default is not None else ""))
    return p


def options_from_args(args: argparse.Namespace) -> JobOptions:
    fields = _option_fields()
    search = SearchOptions(**{f.name: getattr(args, f.name) for f, _, owner in fields if owner == "search"})
    return JobOptions(search=search, **{f.name: getattr(args, f.name) for f, _, owner in fields if owner == "job"})


def main(argv: list[str] | None = None, prog: str = "pulse-ray nightly") -> int:
    parser = build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    for old in [a for a in argv if a.split("=", 1)[0] in _OLD_FLAGS]:
        print(f"note: {old.split('=', 1)[0]} is deprecated; use {_OLD_FLAGS[old.split('=', 1)[0]]}", file=sys.stderr)
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
        result = run_nightly(args.input_prefix, args.output_root, options, dry_run=args.dry_run,
                             retry_failed=args.retry_failed, limit=args.limit)
    except (storage.StorageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result.exit_code


_OLD_FLAGS = {f.metadata["old_flag"]: "--" + f.name.replace("_", "-")
              for f, _, _ in _option_fields() if f.metadata.get("old_flag")}


if __name__ == "__main__":
    sys.exit(main(prog="python -m pulse_ray.job.nightly"))
