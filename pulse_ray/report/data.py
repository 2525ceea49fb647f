"""What a report shows, read from a job's output: its rows, restarts, run record and LR inputs.

Everything is read through :mod:`pulse_ray.job.metadata` and :mod:`pulse_ray.io.storage`.
SR and restart images are looked up at the paths the job writes them to under
``OUT/sr/`` (from the id, never from a path stored in the metadata), so nothing
outside OUT is read except the LR inputs, which are read where the job read them:
the row's ``uri`` (relative ones against the manifest's folder, then the current
directory) or the manifest's ``image`` column, when the run record names the manifest.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow.compute as pc

from pulse_ray.io import images, storage
from pulse_ray.io.manifest import manifest_files, read_table
from pulse_ray.job import metadata as md

__all__ = ["RUNS_DIR", "JobOutput", "read_output"]

RUNS_DIR = "runs"
_MAX_ERROR_CHARS = 300


@dataclass
class JobOutput:
    """One job output as the report sees it."""

    out: str
    rows: list[dict]  # one per id (deduplicated metadata rows), sorted by id
    restarts: dict[str, list[dict]]  # id -> restart rows of the kept result, by restart index
    run: dict | None  # the latest run record (OUT/runs/*.json), if any
    run_name: str | None
    extra_columns: list[str]  # manifest columns carried into the metadata
    manifest: str | None  # where the LR inputs came from (run record), if known
    _embedded: dict | None = field(default=None, repr=False)

    def sr_uri(self, row_id: str, restart: int | None = None) -> str | None:
        """Where the job writes the SR image of ``row_id`` (or one of its restarts)."""
        try:
            rel = images.safe_relpath(row_id)
        except images.BadInput:
            return None
        if restart is None:
            return storage.join(self.out, md.SR_DIR, rel + ".png")
        return storage.join(self.out, md.SR_DIR, rel, f"r{int(restart)}.png")

    def lr_source(self, row: dict) -> tuple[str, object] | None:
        """``("uri", uri)`` or ``("bytes", data)`` for the LR input of a row, or None."""
        if self._embedded is None:
            self._embedded = self._read_embedded()
        data = self._embedded.get(row["id"])
        if data is not None:
            return "bytes", data
        uri = row.get("uri")
        if not uri:
            return None
        return "uri", _resolve(str(uri), self._bases())

    def _bases(self) -> list[str]:
        bases = []
        if self.manifest:
            if storage.is_s3(self.manifest):
                bases.append(self.manifest.rsplit("/", 1)[0] if self.manifest.endswith(".parquet") else self.manifest)
            else:
                p = storage.local_path(self.manifest)
                bases.append(p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p)))
        bases.append(os.getcwd())
        return bases

    def _read_embedded(self) -> dict:
        """The ``image`` column of the manifest (ids whose input was embedded), if it can be read."""
        if not self.manifest:
            return {}
        try:
            files = manifest_files(self.manifest)
        except Exception:
            return {}
        wanted = {r["id"] for r in self.rows if not r.get("uri")}
        found: dict = {}
        for f in files:
            try:
                t = read_table(f, columns=["id", "image"])
            except Exception:  # no image column, or the manifest moved: those rows show no LR
                continue
            for rid, data in zip(t.column("id").to_pylist(), t.column("image").to_pylist()):
                if data is not None and rid in wanted:
                    found[rid] = data
        return found


def _resolve(uri: str, bases: list[str]) -> str:
    if storage.is_s3(uri) or uri.startswith("file://") or os.path.isabs(uri):
        return uri
    for b in bases:
        c = storage.join(b, uri)
        try:
            if storage.exists(c):
                return c
        except Exception:
            continue
    return storage.join(bases[0], uri)


def _latest_run(out: str) -> tuple[dict | None, str | None]:
    """The newest run record (names sort by time); None when there is none or it is unreadable."""
    try:
        files = storage.list_uris(storage.join(out, RUNS_DIR), suffix=".json")
    except Exception:
        return None, None
    for f in reversed(files):
        try:
            rec = json.loads(storage.read_bytes(f))
        except Exception:
            continue
        if isinstance(rec, dict):
            return rec, f.rsplit("/", 1)[-1]
    return None, None


def _run_manifest(run: dict | None) -> str | None:
    if not run:
        return None
    for where in (run, run.get("options") if isinstance(run.get("options"), dict) else {}):
        m = where.get("manifest")
        if isinstance(m, str) and m:
            return m
    return None


def _clean(v):
    """A JSON-safe scalar (NaN/inf become None; timestamps ISO strings)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return None
    return v


def read_output(out: str) -> JobOutput:
    """Read one job output (local folder or ``s3://`` prefix)."""
    t = md.read_metadata(out)
    if "image" in t.column_names:
        t = t.drop_columns(["image"])
    if t.num_rows:
        t = t.take(pc.sort_indices(t, sort_keys=[("id", "ascending")]))
    rows = []
    for r in t.to_pylist():
        r = {k: _clean(v) for k, v in r.items()}
        if r.get("error") and len(r["error"]) > _MAX_ERROR_CHARS:
            r["error"] = r["error"][: _MAX_ERROR_CHARS - 3] + "..."
        rows.append(r)
    known = set(md.METADATA_NAMES)
    # the manifest's own columns, the input's uri last
    extra = sorted((c for c in t.column_names if c not in known), key=lambda c: c == "uri")
    restarts: dict[str, list[dict]] = {}
    rt = md.read_restarts(out)
    if rt.num_rows:
        for r in rt.to_pylist():
            restarts.setdefault(r["id"], []).append({k: _clean(v) for k, v in r.items()})
        for v in restarts.values():
            v.sort(key=lambda r: r["restart"])
    run, run_name = _latest_run(out)
    return JobOutput(out=str(out), rows=rows, restarts=restarts, run=run, run_name=run_name,
                     extra_columns=extra, manifest=_run_manifest(run))

