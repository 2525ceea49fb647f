"""``pulse-ray report`` on a synthetic job output of N rows (tiny images).

Measures: the report's build time (first build, then a re-run that reuses every thumbnail), the
report's size relative to the job output (OUT/sr + OUT/metadata), and the gallery's time to first
render in headless Chromium (best of 3; from navigation start to the first card, and to all rows
read), from disk (file://).

    python benchmarks/bench_report.py --rows 10000 [--keep DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pulse_ray.io.manifest import write_table  # noqa: E402
from pulse_ray.job import metadata as md  # noqa: E402
from pulse_ray.report import build_report  # noqa: E402

SR = 64


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_output(root: str, rows: int, seed: int = 0) -> str:
    """OUT with ``rows`` metadata rows (90% ok, 70% of them converged, factors 4 and 8), an SR PNG
    per ok row (smooth 64x64 pictures), and LR inputs under root/in read through the row's uri."""
    rng = np.random.default_rng(seed)
    out = os.path.join(root, "out")
    inp = os.path.join(root, "in")
    os.makedirs(inp, exist_ok=True)
    t0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
    recs = []
    for i in range(rows):
        rid = f"img{i:06d}"
        factor = 4 if i % 3 else 8
        lr_side = SR // factor
        ok = i % 10 != 7
        lr = rng.integers(0, 256, (lr_side, lr_side, 3), dtype=np.uint8)
        uri = os.path.join(inp, rid + ".png")
        with open(uri, "wb") as f:
            f.write(_png(lr))
        rec = dict(id=rid, status="ok" if ok else "failed", uri=uri, tag=("a", "b", "c")[i % 3],
                   finished_at=t0 + timedelta(seconds=0.5 * i), restarts=4, eps=2e-3, keep="realistic",
                   generator="colour64")
        if ok:
            sr = np.asarray(Image.fromarray(lr).resize((SR, SR), Image.Resampling.BICUBIC))
            sr = np.clip(sr.astype(np.int16) + rng.integers(-6, 7, sr.shape), 0, 255).astype(np.uint8)
            path = os.path.join(out, "sr", rid + ".png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(_png(sr))
            mse = float(10 ** rng.uniform(-3.5, -1.5))
            rec.update(sr_uri=path, lr_width=lr_side, lr_height=lr_side, factor=factor, downscale_mse=mse,
                       output_mse=mse, converged=mse < 2e-3, restart=int(rng.integers(0, 4)),
                       steps=int(rng.integers(20, 101)), seed=int(rng.integers(0, 2**62)),
                       seconds=float(rng.uniform(2, 6)), worker="bench:1")
        else:
            rec.update(error="cannot read in/x.png: no such file", error_kind="missing_image")
        recs.append(rec)
    schema = pa.schema(md.METADATA_FIELDS + [pa.field("uri", pa.string()), pa.field("tag", pa.string())])
    write_table(pa.Table.from_pylist(recs, schema=schema), os.path.join(out, md.METADATA_DIR, "part-bench.parquet"))
    return out


def folder_bytes(path: str, skip: str | None = None) -> int:
    total = 0
    for d, dirs, files in os.walk(path):
        if skip:
            dirs[:] = [x for x in dirs if os.path.join(d, x) != skip]
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def first_render(gallery_url: str, tries: int = 3) -> dict:
    """Best of ``tries``: ms from navigation start to the first card, and to every row read."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="bench-chromium-")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1400,1000",
              f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.page_load_strategy = "none"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    best = {"first_card_ms": None, "all_rows_ms": None}
    try:
        for _ in range(tries):
            driver.get("about:blank")
            driver.get(gallery_url)
            first = all_rows = None
            deadline = time.monotonic() + 120
            while all_rows is None and time.monotonic() < deadline:
                got = driver.execute_script(
                    "if (!document.body) return null;"
                    "return [document.querySelectorAll('article.card').length, "
                    "document.body.getAttribute('data-rendered'), performance.now()]")
                if got:
                    n, state, now = got
                    if first is None and n > 0:
                        first = now
                    if state == "all":
                        all_rows = now
                time.sleep(0.005)
            for key, v in (("first_card_ms", first), ("all_rows_ms", all_rows)):
                if v is not None and (best[key] is None or v < best[key]):
                    best[key] = round(v, 1)
    finally:
        driver.quit()
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--keep", help="build in this folder (kept) instead of a temporary one")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    root = args.keep or tempfile.mkdtemp(prefix="bench-report-")
    t = time.perf_counter()
    out = synthetic_output(root, args.rows)
    synth_s = time.perf_counter() - t
    first = build_report([out])
    again = build_report([out])
    report_dir = os.path.join(out, "report")
    report_b = folder_bytes(report_dir)
    job_b = folder_bytes(out, skip=report_dir)
    render = first_render(first.index.rsplit("/", 1)[0] + "/gallery.html")
    res = {
        "rows": args.rows, "cpus": os.cpu_count(), "synthetic_output_s": round(synth_s, 1),
        "build_first_s": round(first.seconds, 2), "thumbs_made": first.thumbs_made,
        "build_rerun_s": round(again.seconds, 2), "thumbs_reused": again.thumbs_reused,
        "report_mb": round(report_b / 1e6, 2), "job_output_mb": round(job_b / 1e6, 2),
        "report_over_job": round(report_b / job_b, 3), **render,
    }
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
