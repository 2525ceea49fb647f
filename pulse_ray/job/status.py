"""``pulse-ray status OUT``: counts by status, converged share, error reasons, timing; unreadable
metadata parts named (``corrupt_parts``; the CLI exits 1 when there are any)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from pulse_ray.io import storage

from .output import Output

__all__ = ["job_status", "format_status"]


def job_status(out: str, store: storage.Storage | None = None) -> dict:
    """Summary of ``OUT/metadata`` (deduplicated: one row per id), OUT's last run record and its report.
    ``FileNotFoundError`` when OUT does not exist, :class:`~pulse_ray.job.options.UsageError` when it
    cannot be one."""
    o = Output(str(out), store or storage.Storage())
    o.check()  # UsageError: an unsupported scheme, a file
    if not o.store.isdir(o.uri):  # a typo must not look like an empty job
        raise FileNotFoundError(f"no such output: {out} (not a folder, or no objects under the prefix)")
    corrupt: list = []  # unreadable parts: named, left out of the counts
    t = o.read_metadata(corrupt=corrupt)
    raw_rows = o.read_metadata(dedup_rows=False, columns=["id"], corrupt=[]).num_rows
    n = t.num_rows
    status = t.column("status").to_pylist()
    conv = t.column("converged").to_pylist()
    kinds = t.column("error_kind").to_pylist() if "error_kind" in t.column_names else [None] * n
    errors = t.column("error").to_pylist()
    secs = [s for s, st in zip(t.column("seconds").to_pylist(), status) if st == "ok" and s is not None]
    mse = [m for m, st in zip(t.column("downscale_mse").to_pylist(), status) if st == "ok" and m is not None]
    counts = Counter(status)
    ok = counts.get("ok", 0)
    converged = sum(1 for c, st in zip(conv, status) if st == "ok" and c)
    reasons = Counter(k or "error" for k, st in zip(kinds, status) if st != "ok")
    examples: dict[str, str] = {}
    for k, e, st in zip(kinds, errors, status):
        if st != "ok":
            examples.setdefault(k or "error", e or "")

    def pct(a, q):
        return float(np.percentile(np.asarray(a, dtype=np.float64), q)) if a else None

    fin = [f for f in t.column("finished_at").to_pylist() if f is not None] if n else []
    return {
        "output": str(out),
        "rows": n,
        "metadata_rows": raw_rows,  # before dedup (> rows until the next completed submit compacts)
        "by_status": dict(counts),
        "ok": ok,
        "failed": n - ok,
        "converged": converged,
        "converged_share": (converged / ok) if ok else None,
        "errors": dict(reasons.most_common()),
        "error_examples": examples,
        "seconds_per_image": {"p50": pct(secs, 50), "p90": pct(secs, 90), "p99": pct(secs, 99), "max": max(secs) if secs else None},
        "downscale_mse": {"p50": pct(mse, 50), "p90": pct(mse, 90), "max": max(mse) if mse else None},
        "generators": sorted({g for g in t.column("generator").to_pylist() if g}),
        "first_finished": min(fin).isoformat() if fin else None,
        "last_finished": max(fin).isoformat() if fin else None,
        "last_run": o.last_run_record(),
        "report": o.report_index(),
        "corrupt_parts": [{"part": u, "reason": why} for u, why in corrupt],
    }


def _f(x, fmt="{:.3f}"):
    return "-" if x is None else fmt.format(x)


def _corrupt_lines(s: dict) -> list[str]:
    return [f"  corrupt    {c['part']}: {c['reason']} (its rows are not counted; the next submit moves it to "
            "OUT/quarantine/ and redoes them)" for c in s.get("corrupt_parts", [])]


def format_status(s: dict) -> str:
    if not s["rows"]:
        return "\n".join([f"{s['output']}: no metadata yet (nothing under {s['output']}/metadata/)",
                          *_corrupt_lines(s)])
    share = "-" if s["converged_share"] is None else f"{s['converged_share']:.0%}"
    t = s["seconds_per_image"]
    m = s["downscale_mse"]
    lines = [
        f"pulse-ray status {s['output']}",
        f"  rows       {s['rows']} ({', '.join(f'{k} {v}' for k, v in sorted(s['by_status'].items()))})",
        f"  converged  {s['converged']} of {s['ok']} ok ({share})",
        f"  seconds    per image p50 {_f(t['p50'])}  p90 {_f(t['p90'])}  p99 {_f(t['p99'])}  max {_f(t['max'])}",
        f"  mse        downscale p50 {_f(m['p50'], '{:.2e}')}  p90 {_f(m['p90'], '{:.2e}')}  max {_f(m['max'], '{:.2e}')}",
        f"  generator  {', '.join(s['generators']) or '-'}",
        f"  finished   {s['first_finished'] or '-'} .. {s['last_finished'] or '-'}",
    ]
    if s.get("report"):
        lines.append(f"  report     {s['report']}")
    if s["errors"]:
        lines.append("  errors")
        for k, v in s["errors"].items():
            ex = s["error_examples"].get(k, "")
            ex = ex if len(ex) <= 100 else ex[:97] + "..."
            lines.append(f"    {k:<16} {v:>6}   e.g. {ex}")
    run = s.get("last_run")
    if run:
        c, tm = run.get("counts", {}), run.get("timings", {})
        gen = run.get("generator", {})
        lines.append(f"  last run   {run.get('started', '-')}: {c.get('processed', 0)} processed, ok {c.get('ok')}, "
                     f"failed {c.get('failed')} in {_f(tm.get('seconds'), '{:.1f}')}s; generator "
                     f"{gen.get('name', '-')} ({(gen.get('sha256') or '-')[:12]})")
    lines += _corrupt_lines(s)
    if s["metadata_rows"] != s["rows"]:
        lines.append(f"  note       {s['metadata_rows']} metadata rows for {s['rows']} ids (deduplicated: ok first, then latest)")
    return "\n".join(lines)
