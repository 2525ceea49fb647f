"""``pulse-ray report``: the report of a real small job, opened in headless Chromium.

One real ``submit`` (embedded Ray, the bundled generator, 2 restarts of 3 steps, --save-restarts)
makes the output once per module: ok rows that converged and one that did not, failed rows of
three kinds, an id that is HTML, a manifest column. The browser is Debian's chromium driven by
selenium through /usr/bin/chromedriver (CI installs both with apt-get; nothing is downloaded).
Screenshots go to .test-artifacts/report/ in the checkout.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pulse_ray.cli import app
from pulse_ray.io.manifest import read_table, write_table
from pulse_ray.job import metadata as md
from pulse_ray.job.status import format_status, job_status
from pulse_ray.io.storage import Storage
from pulse_ray.job.submit import JobOptions, submit
from pulse_ray.report import build_report
from pulse_ray.search.options import SearchOptions

from .conftest import GENERATOR_SOURCE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / ".test-artifacts" / "report"
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
EPS = 0.02  # noise inputs stay far above it after 3 steps, smooth grey ones get below


def _png(h, w, seed, smooth):
    rng = np.random.default_rng(seed)
    a = (np.full((h, w, 3), 120, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8) if smooth
         else rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def job(ray_cluster, tmp_path_factory):
    """A real job's output: 4 ok rows (3 converged), 3 failed rows, restarts kept."""
    root = tmp_path_factory.mktemp("report-job")
    inp = root / "in"
    inp.mkdir()
    (inp / "noise.png").write_bytes(_png(16, 16, 1, smooth=False))
    (inp / "grey.png").write_bytes(_png(16, 16, 2, smooth=True))
    (inp / "hostile.png").write_bytes(_png(8, 8, 3, smooth=True))
    rows = [
        dict(id="a-noise", uri=str(inp / "noise.png"), image=None, tag="x"),
        dict(id="g-grey", uri="grey.png", image=None, tag="y"),  # relative to the manifest's folder
        dict(id="e-embedded", uri=None, image=_png(8, 8, 4, smooth=True), tag="x"),
        dict(id=HOSTILE, uri=str(inp / "hostile.png"), image=None, tag="y"),
        dict(id="m-missing", uri=str(inp / "nope.png"), image=None, tag="x"),
        dict(id="s-badsize", uri=None, image=_png(17, 17, 5, smooth=False), tag="y"),
        dict(id="n-notimage", uri=None, image=b"not an image", tag="x"),
    ]
    manifest = inp / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(
        [("id", pa.string()), ("uri", pa.string()), ("image", pa.binary()), ("tag", pa.string())])), manifest)
    out = root / "out"
    s = submit(str(manifest), str(out), JobOptions(
        workers=1, batch_size=4, progress=False, generator=GENERATOR_SOURCE,
        search=SearchOptions(restarts=2, steps=3, eps=EPS, save_restarts=True)))
    assert (s.ok, s.failed) == (4, 3)
    meta = {r["id"]: r for r in md.read_metadata(str(out)).to_pylist()}
    assert not meta["a-noise"]["converged"] and meta["g-grey"]["converged"], "the job must mix converged and not"
    # the report finds the manifest (embedded inputs, relative uris) through the run record submit wrote
    records = sorted((out / "runs").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["manifest"] == str(manifest)
    return {"out": out, "ids": [r["id"] for r in rows], "meta": meta, "root": root}


@pytest.fixture(scope="module")
def report(job):
    res = build_report([str(job["out"])])
    assert res.rows == 7
    return Path(job["out"]) / "report"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1400,1000",
              f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _open(driver, url, gallery=True):
    driver.get(url)
    if gallery:
        deadline = time.monotonic() + 20
        while driver.execute_script("return document.body.getAttribute('data-rendered')") != "all":
            assert time.monotonic() < deadline, "the gallery did not finish loading its data pages"
            time.sleep(0.05)
    _wait_images(driver)


def _wait_images(driver):
    """Load every image now (the gallery's are lazy: those below the fold wait for a scroll) and wait."""
    driver.execute_script("document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
    deadline = time.monotonic() + 20
    while not driver.execute_script("return Array.from(document.images).every(i => i.complete)"):
        assert time.monotonic() < deadline, "images did not finish loading"
        time.sleep(0.05)


def _console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _cards(driver):
    return driver.execute_script("return Array.from(document.querySelectorAll('article.card')).map(c => c.getAttribute('data-id'))")


def _select(driver, key, value):
    driver.execute_script(
        "const s = document.querySelector(`[data-key='${arguments[0]}']`); s.value = arguments[1];"
        "s.dispatchEvent(new Event('change'));", key, value)
    time.sleep(0.1)
    _wait_images(driver)


def _undecoded(driver):
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)")


# ----------------------------------------------------------------------------- the files


def test_report_is_self_contained_relative_and_rerun_reuses_thumbnails(job, report, tmp_path):
    files = sorted(str(p.relative_to(report)) for p in report.rglob("*") if p.is_file())
    assert {"index.html", "gallery.html", "favicon.png", "report.json", "data/rows-00000.js"} <= set(files)
    thumbs = [f for f in files if f.startswith("thumbs/")]
    # LR + bicubic for 5 decodable inputs (4 ok, the 17x17 one), SR + the other restart for 4 ok rows
    assert len(thumbs) == 18
    for f in thumbs:
        assert re.fullmatch(r"thumbs/[0-9a-f]{24}\.(png|jpg)", f)
    for page in ("index.html", "gallery.html"):
        html = (report / page).read_text()
        assert "Content-Security-Policy" in html and "default-src 'none'" in html
        refs = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert refs and all("://" not in r and not r.startswith(("/", "..")) for r in refs), refs
        assert HOSTILE not in html and "<script>window.__pwned" not in html
    data = (report / "data" / "rows-00000.js").read_text()
    assert "<" not in data  # every '<' of an id or error is escaped inside the script
    rows = json.loads(data[data.index("[", data.index(",")):data.rindex(")")])
    assert sorted(r["id"] for r in rows) == sorted(job["ids"])
    for r in rows:
        for ref in [r["lr"], r["bi"]] + [o.get("sr") for o in r["o"]] + [x["im"] for o in r["o"] for x in o.get("rs", [])]:
            assert ref is None or (report / ref).is_file()

    before = {f: (report / f).stat().st_mtime_ns for f in thumbs}
    (report / "thumbs" / "0123456789abcdef01234567.jpg").write_bytes(b"left over from an older build")
    res = build_report([str(job["out"])])
    assert (res.thumbs_made, res.thumbs_reused) == (0, 18)
    assert {f: (report / f).stat().st_mtime_ns for f in thumbs} == before
    assert not (report / "thumbs" / "0123456789abcdef01234567.jpg").exists()

    st = job_status(str(job["out"]))
    assert st["report"] == os.path.join(str(job["out"]), "report", "index.html")
    assert "report     " + st["report"] in format_status(st)


def test_cli_report_to_a_folder_and_usage_errors(job, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["report", str(job["out"]), "--to", str(tmp_path / "site")])
    assert r.exit_code == 0, r.output
    assert "wrote the report of 7 rows" in r.output and (tmp_path / "site" / "gallery.html").is_file()
    r = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no metadata" in r.output
    r = runner.invoke(app, ["report", "a", "b", "c"])
    assert r.exit_code == 2 and "one output, or two" in r.output


# ----------------------------------------------------------------------------- in the browser


def test_gallery_in_chromium(job, report, browser):
    url = (report / "gallery.html").as_uri()
    _open(browser, url)
    assert sorted(_cards(browser)) == sorted(job["ids"])
    assert browser.execute_script("return document.images.length") == 4 * 3 + 2 + 4  # ok rows: LR, bicubic, SR; the 17x17 input; restarts
    assert _undecoded(browser) == []
    assert browser.execute_script("return document.querySelectorAll('.restarts img').length") == 4

    # the hostile id is text: shown as written, and nothing of it ran
    assert browser.execute_script("return window.__pwned") is None
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('article.card a.id')).map(a => a.textContent)")
    assert HOSTILE in shown
    assert browser.execute_script("return document.querySelectorAll('article.card script, article.card img[src=\"x\"]').length") == 0

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "gallery.png"))

    _select(browser, "status", "failed")
    assert sorted(_cards(browser)) == ["m-missing", "n-notimage", "s-badsize"]
    assert "status=failed" in browser.current_url
    _select(browser, "kind", "missing_image")
    assert _cards(browser) == ["m-missing"]
    browser.find_element("id", "clear").click()
    time.sleep(0.1)
    assert len(_cards(browser)) == 7
    _select(browser, "conv", "no")
    assert _cards(browser) == ["a-noise"]
    _select(browser, "conv", "")
    _select(browser, "x.tag", "y")
    assert sorted(_cards(browser)) == sorted(i for i, t in zip(job["ids"], "xyxyxyx") if t == "y")
    _select(browser, "x.tag", "")
    _select(browser, "factor", "8")
    assert sorted(_cards(browser)) == sorted(["e-embedded", HOSTILE])
    _select(browser, "factor", "")
    _select(browser, "sort", "mse")
    ok = sorted((r["downscale_mse"], i) for i, r in job["meta"].items() if r["status"] == "ok")
    assert _cards(browser)[:4] == [i for _, i in ok]
    _select(browser, "sort", "-secs")
    assert len(_cards(browser)) == 7
    assert _console_errors(browser) == []

    # a link to one id (the hostile one) opens on that card alone, in a fresh load
    _open(browser, url + "#id=" + quote(HOSTILE, safe=""))
    assert _cards(browser) == [HOSTILE]
    assert browser.execute_script("return window.__pwned") is None
    assert _console_errors(browser) == []


def test_summary_in_chromium(job, report, browser):
    _open(browser, (report / "index.html").as_uri(), gallery=False)
    counts = browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#counts tr')).slice(1)"
        ".map(tr => [tr.cells[0].textContent, tr.cells[1].textContent]))")
    assert (counts["rows"], counts["ok"], counts["failed"], counts["converged (of ok)"]) == ("7", "4", "3", "3")
    assert browser.execute_script("return document.querySelectorAll('svg.plot').length") == 4
    assert browser.execute_script("return document.querySelectorAll('svg.plot line.eps').length") == 1
    kinds = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.failures tr')).slice(1).map(tr => tr.cells[0].textContent)")
    assert sorted(kinds) == ["bad_image", "bad_size", "missing_image"]
    options = browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('table.options tr'))"
        ".map(tr => [tr.cells[0].textContent, tr.cells[1].textContent]))")
    assert options["manifest"] == str(job["root"] / "in" / "manifest.parquet") and options["options.search.eps"] == "0.02"
    assert _console_errors(browser) == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "summary.png"))
    # a failure's example links to its card
    browser.find_element("link text", "missing_image").click()
    _open(browser, browser.current_url)
    assert _cards(browser) == ["m-missing"]


def test_comparison_of_two_outputs(job, browser, tmp_path):
    """Two outputs of the same ids (the second one: the same job with one row's result changed)."""
    b = tmp_path / "out-b"
    shutil.copytree(job["out"], b, ignore=shutil.ignore_patterns("report"))
    for part in md.metadata_files(str(b)):
        t = read_table(part)
        conv = [(not c) if i == "g-grey" else c for i, c in zip(t.column("id").to_pylist(), t.column("converged").to_pylist())]
        write_table(t.set_column(t.column_names.index("converged"), "converged", pa.array(conv, pa.bool_())), part)
    site = tmp_path / "cmp"
    res = build_report([str(job["out"]), str(b)], str(site))
    assert res.rows == 7
    _open(browser, (site / "gallery.html").as_uri())
    assert len(_cards(browser)) == 7
    assert browser.execute_script(
        "return document.querySelector(`article.card[data-id='g-grey']`).querySelectorAll('figure.sr img').length") == 2
    _select(browser, "cmp", "conv")
    assert _cards(browser) == ["g-grey"]
    assert _undecoded(browser) == [] and _console_errors(browser) == []
    _open(browser, (site / "index.html").as_uri(), gallery=False)
    header = browser.execute_script("return Array.from(document.querySelectorAll('#counts th')).map(t => t.textContent)")
    assert header == ["", "A", "B"]
    assert _console_errors(browser) == []


def test_report_on_s3_served_over_http(job, s3, browser, monkeypatch):
    """Written to a bucket with the right content types, and working when served from it (anonymous
    GETs, as a static-website bucket serves them: the bucket's policy lets anyone read)."""
    s3.client.put_bucket_policy(Bucket=s3.bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{s3.bucket}/*"}]}))
    out = job["out"]
    for f in sorted(p for p in Path(out).rglob("*") if p.is_file() and "report" not in p.relative_to(out).parts):
        s3.client.put_object(Bucket=s3.bucket, Key="job/" + f.relative_to(out).as_posix(), Body=f.read_bytes())
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint reaches the report through --s3-endpoint-url alone
    runner = CliRunner()
    r = runner.invoke(app, ["report", s3.uri("job"), "--to", s3.uri("site/report"), "--s3-endpoint-url", s3.endpoint])
    assert r.exit_code == 0, r.output
    keys = s3.keys("site/report/")
    types = {k.rsplit(".", 1)[-1]: s3.client.head_object(Bucket=s3.bucket, Key=k)["ContentType"] for k in keys}
    assert types["html"].startswith("text/html") and types["js"].startswith("text/javascript")
    assert types["png"] == "image/png" and types["jpg"] == "image/jpeg"
    base = f"{s3.endpoint}/{s3.bucket}/site/report"
    _open(browser, base + "/gallery.html")
    assert sorted(_cards(browser)) == sorted(job["ids"])
    assert _undecoded(browser) == [] and browser.execute_script("return window.__pwned") is None
    _select(browser, "status", "ok")
    assert len(_cards(browser)) == 4
    assert browser.execute_script("return document.images.length") == 4 * 3 + 4
    _open(browser, base + "/index.html", gallery=False)
    assert browser.execute_script("return document.querySelectorAll('svg.plot').length") == 4
    assert _console_errors(browser) == []
    store = Storage(s3.endpoint)
    assert job_status(s3.uri("job"), store)["report"] is None  # written elsewhere: OUT holds no report
    r = runner.invoke(app, ["report", s3.uri("job"), "--s3-endpoint-url", s3.endpoint])
    assert r.exit_code == 0, r.output
    assert job_status(s3.uri("job"), store)["report"] == s3.uri("job/report/index.html")


def test_bench_report_end_to_end(tmp_path):
    """The benchmark script runs and reports consistent figures (no timing is asserted)."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_report.py"), "--rows", "12",
                    "--keep", str(tmp_path / "b"), "--json", str(out)], check=True, timeout=300)
    res = json.loads(out.read_text())
    # 11 ok rows (LR, bicubic, SR) and 1 failed row (LR, bicubic)
    assert res["rows"] == 12 and res["thumbs_made"] == 35 and res["thumbs_reused"] == 35
    assert 0 < res["report_mb"] and 0 < res["report_over_job"]
    assert 0 < res["first_card_ms"] <= res["all_rows_ms"]


def test_gallery_pages_through_many_rows(browser, tmp_path, monkeypatch):
    """130 rows in data pages of 50: 48 cards a screen, next/previous, and a link to an id on the last data page."""
    import sys

    from pulse_ray.report import build as report_build

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_report import synthetic_output

    out = synthetic_output(str(tmp_path), 130)
    monkeypatch.setattr(report_build, "ROWS_PER_DATA_PAGE", 50)
    build_report([out])
    site = Path(out) / "report"
    assert sorted(p.name for p in (site / "data").iterdir()) == ["rows-00000.js", "rows-00001.js", "rows-00002.js"]
    url = (site / "gallery.html").as_uri()
    _open(browser, url)
    first = _cards(browser)
    assert first == [f"img{i:06d}" for i in range(48)]
    browser.find_element("id", "next").click()
    _open(browser, browser.current_url)
    assert "page=2" in browser.current_url and _cards(browser) == [f"img{i:06d}" for i in range(48, 96)]
    browser.find_element("id", "next").click()
    _open(browser, browser.current_url)
    assert len(_cards(browser)) == 130 - 96
    assert browser.find_element("id", "next").get_attribute("disabled") is not None
    _open(browser, url + "#id=img000120")
    assert _cards(browser) == ["img000120"]
    _select(browser, "sort", "-mse")
    assert len(_cards(browser)) == 1
    browser.find_element("id", "clear").click()
    _open(browser, browser.current_url)
    assert len(_cards(browser)) == 48 and _undecoded(browser) == []
    assert _console_errors(browser) == []
