"""``nightly``: run ``submit`` on every manifest under an input prefix that has not been processed.

Made for a scheduler (a Kubernetes CronJob, cron) that runs it again and again over a prefix
where new manifests land::

    pulse-ray nightly INPUT_PREFIX OUTPUT_ROOT [--dry-run] [--retry-failed] [any submit option]
    python jobs/nightly.py INPUT_PREFIX OUTPUT_ROOT ...          (the same)

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
import hashlib
import json
import os
import re
import socket
import sys
import time
import typing
from dataclasses import dataclass, field

from pulse_ray.io import storage

__all__ = [
    "LEDGER_DIR",
    "Manifest",
    "PlanItem",
    "NightlyResult",
    "find_manifests",
    "manifest_key",
    "plan",
    "run_nightly",
    "read_entry",
    "build_parser",
    "main",
]

LEDGER_DIR = "_ledger"
SUCCESS_MARKER = "_SUCCESS"
LEDGER_VERSION = 1

# ledger statuses
STARTED, FINISHED, FAILED, ERROR = "started", "finished", "failed", "error"

# plan actions
NEW, RESUME, RETRY, DONE, SKIP_FAILED = "new", "resume", "retry", "done", "skip-failed"
RUNS = (NEW, RESUME, RETRY)

# SubmitOptions fields nightly sets itself (not offered as pass-through options)
_OWN_FIELDS = {"dry_run"}


# ----------------------------------------------------------------------------- discovery


@dataclass
class Manifest:
    uri: str  # what submit() gets: a .parquet file, or a folder / prefix of them
    rel: str  # its path below INPUT_PREFIX, "/"-separated ("" = the prefix itself)
    key: str  # output / ledger name
    output: str  # OUTPUT_ROOT/<key>
    ledger: str  # OUTPUT_ROOT/_ledger/<key>.json


def manifest_key(rel: str) -> str:
    """``2024-06-01/batch.parquet`` -> ``2024-06-01--batch-<8 hex>``: stable, safe in any store."""
    stem = rel[: -len(".parquet")] if rel.lower().endswith(".parquet") else rel
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem.strip("/").replace("/", "--"))
    slug = slug.strip("-._")[:80].rstrip("-._") or "manifest"
    digest = hashlib.sha256(rel.strip("/").encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}"


def _norm_prefix(prefix: str) -> str:
    prefix = os.fspath(prefix)
    if storage.is_s3(prefix):
        return prefix.rstrip("/")
    return os.path.abspath(storage.local_path(prefix))


def _relative(prefix: str, uri: str) -> str:
    """``uri`` below ``prefix`` as a "/"-separated relative path."""
    if storage.is_s3(prefix):
        base = prefix.rstrip("/") + "/"
        if not uri.startswith(base):
            raise ValueError(f"{uri} is not below {prefix}")
        return uri[len(base):]
    rel = os.path.relpath(os.path.abspath(storage.local_path(uri)), _norm_prefix(prefix))
    return rel.replace(os.sep, "/")


def _is_below(uri: str, root: str) -> bool:
    """Whether ``uri`` is ``root`` or inside it (same kind of store)."""
    if storage.is_s3(uri) != storage.is_s3(root):
        return False
    u, r = _norm_prefix(uri), _norm_prefix(root)
    return u == r or u.startswith(r.rstrip("/") + "/")


def find_manifests(input_prefix: str, output_root: str) -> list[Manifest]:
    """Every manifest below ``input_prefix`` (see the module docstring), sorted by path.

    Anything below ``output_root`` is ignored (results include Parquet metadata files, and an
    output root inside the input prefix must not feed itself).
    """
    input_prefix = os.fspath(input_prefix)
    files = [f for f in storage.list_uris(input_prefix, suffix=".parquet") if not _is_below(f, output_root)]
    dataset_cache: dict[str, bool] = {}

    def is_dataset(rel_dir: str) -> bool:
        if rel_dir not in dataset_cache:
            name = rel_dir.rsplit("/", 1)[-1] if rel_dir else _norm_prefix(input_prefix).rsplit("/", 1)[-1]
            folder = storage.join(input_prefix, rel_dir) if rel_dir else input_prefix
            dataset_cache[rel_dir] = name.lower().endswith(".parquet") or storage.exists(
                storage.join(folder, SUCCESS_MARKER)
            )
        return dataset_cache[rel_dir]

    chosen: dict[str, str] = {}  # rel -> uri
    for f in files:
        rel = _relative(input_prefix, f)
        parts = rel.split("/")
        owner = None
        # the outermost dataset folder that holds this file (the prefix itself included)
        for depth in range(0, len(parts)):
            rel_dir = "/".join(parts[:depth])
            if is_dataset(rel_dir):
                owner = rel_dir
                break
        if owner is None:
            chosen[rel] = f
        elif owner not in chosen:
            chosen[owner] = storage.join(input_prefix, owner) if owner else input_prefix
    out = []
    for rel in sorted(chosen):
        key = manifest_key(rel if rel else _norm_prefix(input_prefix).rsplit("/", 1)[-1])
        out.append(Manifest(
            uri=chosen[rel],
            rel=rel,
            key=key,
            output=storage.join(output_root, key),
            ledger=storage.join(output_root, LEDGER_DIR, key + ".json"),
        ))
    return out


# ----------------------------------------------------------------------------- ledger


def read_entry(ledger_uri: str) -> dict | None:
    """A manifest's ledger entry, or None when it has none yet."""
    try:
        data = storage.read_bytes(ledger_uri)
    except FileNotFoundError:
        return None
    try:
        entry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise storage.StorageError(f"ledger entry {ledger_uri} is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(entry, dict) or "status" not in entry:
        raise storage.StorageError(f"ledger entry {ledger_uri} has no 'status'; fix or delete it")
    return entry


def _write_entry(ledger_uri: str, entry: dict) -> None:
    storage.write_bytes(ledger_uri, (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ----------------------------------------------------------------------------- plan


@dataclass
class PlanItem:
    manifest: Manifest
    action: str  # new | resume | retry | done | skip-failed
    entry: dict | None  # the ledger entry as found

    @property
    def runs(self) -> bool:
        return self.action in RUNS


def _action(entry: dict | None, retry_failed: bool) -> str:
    if entry is None:
        return NEW
    status = entry.get("status")
    if status in (STARTED, ERROR):
        return RESUME
    if status == FINISHED:
        return RETRY if retry_failed and entry.get("exit_status") not in (0, None) else DONE
    if status == FAILED:
        return RETRY if retry_failed else SKIP_FAILED
    raise storage.StorageError(f"unknown ledger status {status!r}")


def plan(input_prefix: str, output_root: str, retry_failed: bool = False) -> list[PlanItem]:
    """What a run would do for each manifest under ``input_prefix``."""
    items = []
    for m in find_manifests(input_prefix, output_root):
        entry = read_entry(m.ledger)
        items.append(PlanItem(m, _action(entry, retry_failed), entry))
    return items


# ----------------------------------------------------------------------------- run


@dataclass
class NightlyResult:
    items: list[PlanItem] = field(default_factory=list)
    entries: dict[str, dict] = field(default_factory=dict)  # key -> ledger entry written by this run
    exit_code: int = 0
    aborted: str | None = None  # why the remaining manifests were left for the next run

    @property
    def ran(self) -> list[str]:
        return list(self.entries)


def _options_record(options) -> dict:
    rec = {}
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        rec[f.name] = v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
    return rec


def _counts(summary) -> dict:
    keys = ("total", "ok", "failed", "skipped", "converged", "processed", "seconds", "images_per_minute")
    out = {k: getattr(summary, k) for k in keys if hasattr(summary, k)}
    if getattr(summary, "errors", None):
        out["errors"] = dict(summary.errors)
    return out


def _short_error(exc: BaseException, limit: int = 2000) -> str:
    s = f"{type(exc).__name__}: {exc}".strip()
    return s if len(s) <= limit else s[: limit - 3] + "..."


def run_manifest(item: PlanItem, options, submit_fn, log) -> dict:
    """Run ``submit`` on one manifest, with its ledger entry around it. Returns the final entry."""
    from pulse_ray.io.manifest import ManifestError

    from .submit import UsageError

    m, prev = item.manifest, item.entry or {}
    history = list(prev.get("history") or [])
    if prev:
        history.append({k: prev.get(k) for k in ("status", "started", "finished", "exit_status", "counts", "error")})
    if item.action != NEW and getattr(options, "overwrite", False):
        # --overwrite is for a fresh manifest only: a resumed run keeps what is already done.
        options = dataclasses.replace(options, overwrite=False)
    entry = {
        "version": LEDGER_VERSION,
        "manifest": m.uri,
        "key": m.key,
        "output": m.output,
        "status": STARTED,
        "started": _now(),
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
    _write_entry(m.ledger, entry)
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
    entry["finished"] = _now()
    entry["seconds"] = round(time.time() - t0, 3)
    _write_entry(m.ledger, entry)
    c = entry["counts"] or {}
    detail = (f"ok {c.get('ok')}, failed {c.get('failed')}, skipped {c.get('skipped')} of {c.get('total')}"
              if c else entry["error"])
    log(f"[nightly] {entry['status']:<8} {m.uri} (exit {entry['exit_status']}): {detail}")
    return entry


def run_nightly(input_prefix: str, output_root: str, options=None, *, dry_run: bool = False,
                retry_failed: bool = False, limit: int | None = None, submit_fn=None, log=print) -> NightlyResult:
    """Plan, then (unless ``dry_run``) run every manifest that needs it, in path order."""
    if options is None:
        from .submit import SubmitOptions

        options = SubmitOptions()
    if submit_fn is None:
        from .submit import submit as submit_fn
    if getattr(options, "s3_endpoint_url", None):
        storage.set_s3_endpoint_url(options.s3_endpoint_url)
    if storage.is_s3(output_root) == storage.is_s3(input_prefix) and \
            _norm_prefix(output_root) == _norm_prefix(input_prefix):
        raise ValueError("OUTPUT_ROOT must differ from INPUT_PREFIX")

    result = NightlyResult(items=plan(input_prefix, output_root, retry_failed))
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

_HELP = {
    "generator": "generator name, path, file:// or s3:// URI (default: the bundled one)",
    "restarts": "random restarts per image",
    "steps": "optimisation steps per restart",
    "eps": "downscale-loss threshold for 'converged'",
    "seed": "base seed",
    "workers": "search actors (default: one per GPU / all CPUs of the cluster)",
    "gpus_per_worker": "GPUs per search actor",
    "batch_size": "images per search batch",
    "address": "Ray cluster address (e.g. auto); default: start Ray in this process",
    "overwrite": "redo rows already ok in a NEW manifest's output (never for a resumed one)",
    "keep_restarts": "also write every restart's image",
    "wait_for_resources": "seconds to wait for an autoscaling cluster to add the GPUs asked for",
    "s3_endpoint_url": "S3-compatible endpoint (else AWS_ENDPOINT_URL)",
    "max_pixels": "largest input image, in pixels",
    "max_bytes": "largest input image file, in bytes",
    "num_cpus": "CPUs of the Ray started in this process (without --address)",
    "object_store_memory": "object store bytes of the Ray started in this process",
    "progress": "progress lines on stderr",
    "compact": "compact each output's metadata to one row per id at the end",
}


def _arg_type(hint):
    """(argparse type, is_bool) for a SubmitOptions field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if base is bool:
        return None, True
    if base in (int, float, str):
        return base, False
    return str, False


def _submit_fields():
    from .submit import SubmitOptions

    hints = typing.get_type_hints(SubmitOptions)
    return SubmitOptions, [(f, hints.get(f.name, str)) for f in dataclasses.fields(SubmitOptions)
                           if f.name not in _OWN_FIELDS]


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
    _, fields = _submit_fields()
    for f, hint in fields:
        flag = "--" + f.name.replace("_", "-")
        typ, is_bool = _arg_type(hint)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = _HELP.get(f.name, f.name.replace("_", " "))
        if is_bool:
            if default:
                g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=True, help=help_)
            else:
                g.add_argument(flag, dest=f.name, action="store_true", default=False, help=help_)
        else:
            g.add_argument(flag, dest=f.name, type=typ, default=default,
                           help=help_ + (f" (default {default})" if default is not None else ""))
    return p


def options_from_args(args: argparse.Namespace):
    SubmitOptions, fields = _submit_fields()
    return SubmitOptions(**{f.name: getattr(args, f.name) for f, _ in fields})


def main(argv: list[str] | None = None, prog: str = "pulse-ray nightly") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    options = options_from_args(args)
    try:
        result = run_nightly(args.input_prefix, args.output_root, options, dry_run=args.dry_run,
                             retry_failed=args.retry_failed, limit=args.limit)
    except (storage.StorageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main(prog="python -m pulse_ray.job.nightly"))
