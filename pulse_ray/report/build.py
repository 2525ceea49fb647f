"""Build the report: a static site (summary page, gallery, data pages, thumbnails).

Layout of the report folder (``OUT/report`` unless told otherwise)::

    index.html               summary: counts, options, time per image, plots, failures
    gallery.html             one card per input; filters, sorting, pages; state in the URL hash
    data/rows-NNNNN.js       the rows, ROWS_PER_DATA_PAGE per file (JSON inside a call, so that
                             the page can load them from disk, where fetch() is not allowed)
    thumbs/<hash>.png|jpg    small images, named by a hash of their source (re-runs reuse them)
    favicon.png, report.json

Each page carries a Content-Security-Policy that allows its own inline script (by hash, and the
data pages that script adds), its own inline style and images from the report itself; nothing
else, so nothing from the job's data can run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from importlib import resources
from urllib.parse import quote

from PIL import Image

from pulse_ray.io import storage
from pulse_ray.job.output import REPORT_DIR

from . import plots
from .data import JobOutput, read_output
from .site import Site
from .thumbs import THUMB, make_thumb, thumb_name

__all__ = ["REPORT_DIR", "ROWS_PER_DATA_PAGE", "CARDS_PER_SCREEN", "ReportResult", "build_report", "default_destination"]

ROWS_PER_DATA_PAGE = 2000
CARDS_PER_SCREEN = 48
MAX_FILTER_VALUES = 40  # a manifest column with more distinct values is filtered by text
MAX_FAILURE_EXAMPLES = 3


@dataclass
class ReportResult:
    destination: str
    index: str  # what to open (file:// URL or s3:// URI of index.html)
    rows: int
    thumbs_made: int
    thumbs_reused: int
    seconds: float


def default_destination(out: str) -> str:
    return storage.join(out, REPORT_DIR)


def build_report(outputs: list[str], destination: str | None = None, *, store: storage.Storage | None = None,
                 threads: int | None = None) -> ReportResult:
    """Write the report of one job output (or a comparison of two) to ``destination``, reading and
    writing through ``store`` (default: ``Storage()``)."""
    if not 1 <= len(outputs) <= 2:
        raise ValueError(f"a report shows one output or compares two (got {len(outputs)})")
    t0 = time.perf_counter()
    store = store or storage.Storage()
    jobs = [read_output(o, store) for o in outputs]
    for j in jobs:
        if not j.rows:
            raise FileNotFoundError(f"{j.out}: no metadata (nothing under {storage.join(j.out, 'metadata')}/)")
    site = Site(destination or default_destination(outputs[0]), store)
    labels = ["A", "B"] if len(jobs) == 2 else [""]
    ids = sorted(set().union(*({r["id"] for r in j.rows} for j in jobs)))
    by_id = [{r["id"]: r for r in j.rows} for j in jobs]

    existing = site.files("thumbs")
    referenced: set[str] = set()
    counts = Counter()
    lock = threading.Lock()

    def thumb(kind: str, read, side: int) -> str | None:
        try:
            data = read()
        except Exception:
            return None
        name = thumb_name(kind, data, side)
        with lock:
            if name in existing:  # made by an earlier build (or by this one, for another row)
                referenced.add(name)
                counts["reused"] += 1
                return name
        try:
            small = make_thumb(kind, data, side)
        except Exception:  # an image that cannot be decoded safely shows as "none"
            return None
        site.write(name, small)
        with lock:
            existing.add(name)
            referenced.add(name)
            counts["made"] += 1
        return name

    def card_row(row_id: str) -> dict:
        rows = [b.get(row_id) for b in by_id]
        first = next(r for r in rows if r is not None)
        src_job = jobs[rows.index(first)]
        factor = next((r.get("factor") for r in rows if r and r.get("factor")), None)
        lr_w = next((r.get("lr_width") for r in rows if r and r.get("lr_width")), None)
        side = min(THUMB, factor * lr_w) if factor and lr_w else THUMB
        rec = {"id": row_id, "f": factor, "side": side, "o": [], "x": {}}
        src = src_job.lr_source(first)
        lrnote = None
        if src is None:
            lrnote = "LR input not available here (embedded in a manifest that no run record names)"
            rec["lr"] = rec["bi"] = None
        else:
            how, what = src
            read = (lambda: what) if how == "bytes" else (lambda: store.read_bytes(what))
            rec["lr"] = thumb("lr", read, side)
            rec["bi"] = thumb("bicubic", read, side) if rec["lr"] else None
            if rec["lr"] is None and first.get("status") == "ok":
                lrnote = f"LR input not readable now: {what if how == 'uri' else 'manifest image'}"
        if lrnote:
            rec["lrnote"] = lrnote
        for col in src_job.extra_columns:
            if col in first:
                rec["x"][col] = None if first[col] is None else str(first[col])
        for job, r in zip(jobs, rows):
            if r is None:
                rec["o"].append(None)
                continue
            o = {"st": r.get("status"), "k": (r.get("error_kind") or "error") if r.get("status") != "ok" else None,
                 "e": r.get("error"), "m": r.get("downscale_mse"), "c": bool(r.get("converged")),
                 "r": r.get("restart"), "s": None if r.get("seed") is None else str(r["seed"]), "n": r.get("steps"), "t": r.get("seconds")}
            if r.get("status") == "ok":
                uri = job.sr_uri(row_id)
                o["sr"] = thumb("sr", lambda: store.read_bytes(uri), side) if uri else None
                rs = []
                for x in job.restarts.get(row_id, []):
                    if x.get("restart") == r.get("restart"):
                        continue
                    ru = job.sr_uri(row_id, x["restart"])
                    rs.append({"k": x["restart"], "m": x.get("downscale_mse"), "c": bool(x.get("converged")),
                               "im": thumb("sr", lambda ru=ru: store.read_bytes(ru), side) if ru else None})
                if rs:
                    o["rs"] = rs
            rec["o"].append(o)
        return rec

    n_threads = threads or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(n_threads) as pool:
        records = list(pool.map(card_row, ids))

    # data pages
    token = hashlib.sha1(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()[:12]
    n_pages = math.ceil(len(records) / ROWS_PER_DATA_PAGE)
    data_files = set()
    for k in range(n_pages):
        chunk = records[k * ROWS_PER_DATA_PAGE:(k + 1) * ROWS_PER_DATA_PAGE]
        name = f"data/rows-{k:05d}.js"
        site.write(name, f"PULSE_REPORT_PAGE({k}, {_json_for_script(chunk)});\n".encode())
        data_files.add(name)

    names = [_output_label(j, lab) for j, lab in zip(jobs, labels)]
    cfg = {
        "pages": n_pages,
        "rows": len(records),
        "first": [records[k * ROWS_PER_DATA_PAGE]["id"] for k in range(n_pages)],
        "per_screen": CARDS_PER_SCREEN,
        "v": token,
        "outputs": [{"label": lab or "", "name": n} for lab, n in zip(labels, names)],
        "kinds": sorted({r.get("error_kind") or "error" for j in jobs for r in j.rows if r.get("status") != "ok"}),
        "factors": sorted({r["f"] for r in records if r["f"]}),
        "extra": _extra_filters(jobs[0]),
    }
    site.write("favicon.png", _favicon())
    site.write("index.html", _summary_html(jobs, names, labels).encode())
    site.write("gallery.html", _gallery_html(cfg, names).encode())
    site.write("report.json", json.dumps({
        "outputs": [j.out for j in jobs], "rows": len(records), "built_at": datetime.now(timezone.utc).isoformat(),
        "data_pages": n_pages, "thumbs": len(referenced)}, indent=1).encode())
    # what an earlier build wrote and this one does not reference goes
    for stale in sorted((site.files("data") - data_files) | (existing - referenced)):
        site.delete(stale)
    return ReportResult(destination=site.root, index=site.location("index.html"), rows=len(records),
                        thumbs_made=counts["made"], thumbs_reused=counts["reused"], seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- helpers


def _json_for_script(obj) -> str:
    """JSON that is safe inside a <script> element or a .js file (no '<', no line separators)."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _extra_filters(job: JobOutput) -> list[dict]:
    out = []
    for col in job.extra_columns:
        vals = Counter(str(r[col]) for r in job.rows if r.get(col) is not None)
        values = sorted(vals) if 0 < len(vals) <= MAX_FILTER_VALUES else None
        out.append({"name": col, "values": values})
    return out


def _output_label(job: JobOutput, label: str) -> str:
    return (label + ": " if label else "") + job.out


def _favicon() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (35, 50, 74)).save(buf, format="PNG")
    return buf.getvalue()


def _asset(name: str) -> str:
    return resources.files("pulse_ray.report").joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _page(title: str, body: str, names: list[str], script: str | None = None, cfg: dict | None = None) -> str:
    css = _asset("style.css")
    script_src = f"{_sha256(script)} 'strict-dynamic'" if script else "'none'"
    csp = (f"default-src 'none'; script-src {script_src}; style-src {_sha256(css)}; img-src 'self'; "
           "base-uri 'none'; form-action 'none'")
    cfg_block = (f'<script type="application/json" id="cfg">{_json_for_script(cfg)}</script>' if cfg is not None else "")
    script_block = f"<script>{script}</script>" if script else ""
    outs = " vs ".join(escape(n) for n in names)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{escape(csp, quote=False)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f'<link rel="icon" href="favicon.png"><title>{escape(title)}</title><style>{css}</style></head>'
        f'<body><header class="top"><h1>pulse-ray report</h1><a href="index.html">Summary</a>'
        f'<a href="gallery.html">Gallery</a><span class="outs">{outs}</span></header>'
        f"<main>{body}</main>{cfg_block}{script_block}</body></html>\n"
    )


def _gallery_html(cfg: dict, names: list[str]) -> str:
    body = ('<div id="controls"></div><div id="info">loading...</div>'
            '<div class="pager"><button type="button" id="prev">previous</button><span id="pageno"></span>'
            '<button type="button" id="next">next</button></div><div id="grid"></div>')
    return _page("pulse-ray report: gallery", body, names, script=_asset("gallery.js"), cfg=cfg)


def _pct(vals, q):
    if not vals:
        return None
    s = sorted(vals)
    i = (len(s) - 1) * q / 100
    lo = math.floor(i)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def _stats(job: JobOutput) -> dict:
    ok = [r for r in job.rows if r.get("status") == "ok"]
    secs = [r["seconds"] for r in ok if r.get("seconds") is not None]
    fin = [r["finished_at"] for r in job.rows if r.get("finished_at")]
    conv = sum(1 for r in ok if r.get("converged"))
    return {
        "rows": len(job.rows), "ok": len(ok), "failed": len(job.rows) - len(ok), "converged": conv,
        "share": conv / len(ok) if ok else None,
        "mean": sum(secs) / len(secs) if secs else None, "p50": _pct(secs, 50), "p90": _pct(secs, 90),
        "max": max(secs) if secs else None, "total": sum(secs) if secs else None,
        "first": min(fin) if fin else None, "last": max(fin) if fin else None,
    }


def _options(job: JobOutput) -> list[tuple[str, str]]:
    """The job's options and generator: from the run record where there is one, else from the rows."""
    items: list[tuple[str, str]] = []
    run = job.run
    if run:
        items.append(("run record", f"runs/{job.run_name}"))
        _flatten("", run, items)
        return items
    items.append(("run record", "none (options below are read from the metadata rows)"))
    for col in ("generator", "restarts", "eps", "keep"):
        vals = sorted({str(r[col]) for r in job.rows if r.get(col) is not None})
        items.append((col, ", ".join(vals) or "-"))
    steps = [r["steps"] for r in job.rows if r.get("steps") is not None]
    items.append(("steps (most any search ran)", str(max(steps)) if steps else "-"))
    return items


def _flatten(prefix: str, record: dict, items: list[tuple[str, str]]) -> None:
    """A run record's nested keys as dotted names (``options.search.eps``)."""
    for key, value in record.items():
        if isinstance(value, dict):
            _flatten(f"{prefix}{key}.", value, items)
        else:
            items.append((prefix + key, _plain(value)))


def _plain(v) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return "-" if v is None else str(v)


def _minutes(iso: str, t0: datetime) -> float:
    return (datetime.fromisoformat(iso) - t0).total_seconds() / 60.0


def _summary_html(jobs: list[JobOutput], names: list[str], labels: list[str]) -> str:
    stats = [_stats(j) for j in jobs]
    head = "".join(f"<th>{escape(lab or 'value')}</th>" for lab in labels)
    rows = [("rows", "rows", "{:d}"), ("ok", "ok", "{:d}"), ("failed", "failed", "{:d}"),
            ("converged (of ok)", "converged", "{:d}"), ("converged share", "share", "{:.1%}"),
            ("seconds per image, mean", "mean", "{:.2f}"), ("seconds per image, p50", "p50", "{:.2f}"),
            ("seconds per image, p90", "p90", "{:.2f}"), ("seconds per image, max", "max", "{:.2f}"),
            ("search seconds, all images", "total", "{:.1f}"), ("first finished", "first", "{}"),
            ("last finished", "last", "{}")]
    counts = "".join(
        f"<tr><td>{escape(label)}</td>" + "".join(f'<td class="n">{escape(_f(s[key], fmt))}</td>' for s in stats) + "</tr>"
        for label, key, fmt in rows)
    parts = [f'<h2>Counts</h2><table class="counts" id="counts"><tr><th></th>{head}</tr>{counts}</table>']
    for j, name in zip(jobs, names):
        opts = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in _options(j))
        parts.append(f'<h2>Options and generator: {escape(name)}</h2><table class="options">{opts}</table>')

    ok_rows = [[r for r in j.rows if r.get("status") == "ok"] for j in jobs]
    eps_vals = [r["eps"] for j in jobs for r in j.rows if r.get("eps")]
    eps = Counter(eps_vals).most_common(1)[0][0] if eps_vals else None
    legend = names if len(jobs) > 1 else []
    conv_by = []
    for rs in ok_rows:
        d: dict = defaultdict(lambda: [0, 0])
        for r in rs:
            if r.get("factor"):
                d[r["factor"]][1] += 1
                d[r["factor"]][0] += bool(r.get("converged"))
        conv_by.append({f: tuple(v) for f, v in d.items()})
    fins = [r["finished_at"] for rs in ok_rows for r in rs if r.get("finished_at")]
    t0 = min(datetime.fromisoformat(f) for f in fins) if fins else None
    over_run = [sorted((_minutes(r["finished_at"], t0), r["seconds"]) for r in rs
                       if r.get("finished_at") and r.get("seconds") is not None) for rs in ok_rows] if t0 else [[]]
    svgs = [
        plots.mse_histogram([[r.get("downscale_mse") for r in rs] for rs in ok_rows], eps, legend),
        plots.steps_histogram([[r.get("steps") for r in rs] for rs in ok_rows], legend),
        plots.converged_by_factor(conv_by, legend),
        plots.seconds_over_run(over_run, legend),
    ]
    parts.append('<h2>Plots</h2><div class="plots">' + "".join(svgs) + "</div>")

    for j, name in zip(jobs, names):
        failed = [r for r in j.rows if r.get("status") != "ok"]
        title = f"Failures: {escape(name)}" if len(jobs) > 1 else "Failures"
        if not failed:
            parts.append(f"<h2>{title}</h2><p>none</p>")
            continue
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in failed:
            groups[r.get("error_kind") or "error"].append(r)
        trs = []
        for kind, rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            ex = "<br>".join(
                f'<a href="gallery.html#id={escape(_quote(r["id"]))}">{escape(r["id"])}</a>: {escape(r.get("error") or "")}'
                for r in rs[:MAX_FAILURE_EXAMPLES])
            trs.append(f'<tr><td><a href="gallery.html#kind={escape(_quote(kind))}&amp;status=failed">{escape(kind)}</a></td>'
                       f'<td class="n">{len(rs)}</td><td class="ex">{ex}</td></tr>')
        parts.append(f'<h2>{title}</h2><table class="failures"><tr><th>error kind</th><th>count</th>'
                     f'<th>examples</th></tr>{"".join(trs)}</table>')
    return _page("pulse-ray report: summary", "".join(parts), names)


def _quote(s: str) -> str:
    return quote(s, safe="")
