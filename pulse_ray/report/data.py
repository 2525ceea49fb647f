"""What a report shows, read from a job's output: its rows, restarts, run record and LR inputs.

Everything is read through :class:`pulse_ray.job.output.Output` (metadata, the latest run
record ``OUT/runs/<UTC>.json``) and its :class:`~pulse_ray.io.storage.Storage`. SR and
restart images are looked up at the paths the job writes them to under ``OUT/sr/`` (from the
id, never from a path stored in the metadata), so nothing outside OUT is read except the LR
inputs, which are read where the job read them: the row's ``uri`` (relative ones against the
manifest's folder, then the current directory) or the manifest's ``image`` column; the
manifest is the one the run record names (its ``manifest`` key, as ``submit`` wrote it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow.compute as pc

from pulse_ray.io import images, storage
from pulse_ray.io.manifest import manifest_files, read_table
from pulse_ray.job import metadata as md
from pulse_ray.job.output import Output
from pulse_ray.job.steps import ManifestSource, resolve_uri

__all__ = ["JobOutput", "read_output"]

_MAX_ERROR_CHARS = 300


@dataclass
class JobOutput:
    """One job output as the report sees it."""

    output: Output
    rows: list[dict]  # one per id (deduplicated metadata rows), sorted by id
    restarts: dict[str, list[dict]]  # id -> restart rows of the kept result, by restart index
    run: dict | None  # the latest run record (OUT/runs/*.json), if any
    run_name: str | None
    extra_columns: list[str]  # manifest columns carried into the metadata
    manifest: str | None  # where the LR inputs came from (the run record's "manifest"), if known
    _source: ManifestSource | None = field(default=None, repr=False)
    _embedded: dict | None = field(default=None, repr=False)

    @property
    def out(self) -> str:
        return self.output.uri

    @property
    def store(self) -> storage.Storage:
        return self.output.store

    def sr_uri(self, row_id: str, restart: int | None = None) -> str | None:
        """Where the job writes the SR image of ``row_id`` (or one of its restarts)."""
        try:
            rel = images.safe_relpath(row_id)
        except images.BadInput:
            return None
        return self.output.sr_uri(rel, None if restart is None else int(restart))

    def lr_source(self, row: dict) -> tuple[str, object] | None:
        """``("uri", uri)`` or ``("bytes", data)`` for the LR input of a row, or None."""
        if self._embedded is None:
            self._source = self._open_manifest()
            self._embedded = self._read_embedded()
        data = self._embedded.get(row["id"])
        if data is not None:
            return "bytes", data
        uri = row.get("uri")
        if not uri:
            return None
        bases = self._source.bases() if self._source else []
        return "uri", resolve_uri(str(uri), bases, self.store)

    def _open_manifest(self) -> ManifestSource | None:
        """The run record's manifest (its files; None when there is none or it cannot be listed now)."""
        if not self.manifest:
            return None
        try:
            files = manifest_files(self.manifest, self.store)
        except Exception:
            return None
        return ManifestSource(self.manifest, tuple(files), (), self.store) if files else None

    def _read_embedded(self) -> dict:
        """The ``image`` column of the manifest (ids whose input was embedded), if it can be read."""
        if self._source is None:
            return {}
        wanted = {r["id"] for r in self.rows if not r.get("uri")}
        found: dict = {}
        for f in self._source.files:
            try:
                t = read_table(f, columns=["id", "image"], store=self.store)
            except Exception:  # no image column, or the manifest moved: those rows show no LR
                continue
            for rid, data in zip(t.column("id").to_pylist(), t.column("image").to_pylist()):
                if data is not None and rid in wanted:
                    found[rid] = data
        return found


def _clean(v):
    """A JSON-safe scalar (NaN/inf become None; timestamps ISO strings)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return None
    return v


def read_output(out: str, store: storage.Storage | None = None) -> JobOutput:
    """Read one job output (local folder or ``s3://`` prefix)."""
    output = Output(str(out), store or storage.Storage())
    t = output.read_metadata()
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
    rt = md.read_restarts(output.uri, store=output.store)
    if rt.num_rows:
        for r in rt.to_pylist():
            restarts.setdefault(r["id"], []).append({k: _clean(v) for k, v in r.items()})
        for v in restarts.values():
            v.sort(key=lambda r: r["restart"])
    last = output.last_run()
    run, run_name = (last[1], last[0].rsplit("/", 1)[-1]) if last else (None, None)
    manifest = run.get("manifest") if run else None
    return JobOutput(output=output, rows=rows, restarts=restarts, run=run, run_name=run_name,
                     extra_columns=extra, manifest=manifest if isinstance(manifest, str) and manifest else None)
