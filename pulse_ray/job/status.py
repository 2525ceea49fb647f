"""``pulse-ray status OUT``: counts by status, converged share, error reasons, timing."""

from __future__ import annotations

from collections import Counter

import numpy as np

from . import metadata as md

__all__ = ["job_status", "format_status"]


def job_status(out: str) -> dict:
    """Summary of ``OUT/metadata`` (deduplicated: one row per id)."""
    t = md.read_metadata(out)
    raw_rows = md.read_metadata(out, dedup_rows=False, columns=["id"]).num_rows
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
        "report": _report_index(out),
    }


def _report_index(out: str) -> str | None:
    """``OUT/report/index.html`` when ``pulse-ray report OUT`` has written one."""
    from pulse_ray.io import storage

    index = storage.join(out, "report", "index.html")
    return index if storage.exists(index) else None


def _f(x, fmt="{:.3f}"):
    return "-" if x is None else fmt.format(x)


def format_status(s: dict) -> str:
    if not s["rows"]:
        return f"{s['output']}: no metadata yet (nothing under {s['output']}/metadata/)"
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
    if s["metadata_rows"] != s["rows"]:
        lines.append(f"  note       {s['metadata_rows']} metadata rows for {s['rows']} ids (deduplicated: ok first, then latest)")
    return "\n".join(lines)
