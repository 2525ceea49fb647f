"""The output layout under OUT, in one place::

    OUT/sr/<id>.png                      SR image of each ``ok`` row
    OUT/sr/<id>/r<k>.png                 every restart (``--save-restarts``)
    OUT/metadata/part-<hash>.parquet     one metadata part per written batch (atomic)
    OUT/restarts/part-<hash>.parquet     one row per restart (``--save-restarts``)
    OUT/runs/<UTC time>.json             one record per run: options, generator, versions, counts, timings
    OUT/report/index.html                ``pulse-ray report OUT`` (:mod:`pulse_ray.report`), when written
    OUT/quarantine/<dir>/<UTC>-<part>    unreadable metadata / restarts parts, set aside by ``submit``

:class:`Output` knows these paths, which ids are done, compaction (see
:mod:`pulse_ray.job.metadata` for the dedup rule), the removal of stale images and the
run records. :class:`FlatOutput` is ``pulse-ray upsample``'s layout (``DIR/<stem>.png``,
one ``DIR/metadata.parquet``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import quote

import pyarrow as pa

from pulse_ray.io import images, storage
from pulse_ray.io.manifest import write_table

from . import metadata as md

__all__ = ["Output", "FlatOutput", "RUNS_DIR", "REPORT_DIR", "QUARANTINE_DIR", "is_restart_name"]

log = logging.getLogger("pulse_ray.job")

RUNS_DIR = "runs"
REPORT_DIR = "report"
QUARANTINE_DIR = "quarantine"

# OUT/sr/<id>/r<k>.png holds restart k of id <id> (--save-restarts): an id ending in
# "/r<number>" would name the same file as a restart image of another id.
# (r or R: a case-insensitive filesystem takes one for the other)
_RESTART_NAME = re.compile(r"/[rR][0-9]+$")


def is_restart_name(row_id: str) -> bool:
    """``a/r0``, ``x/y/r12``: ids whose SR path is also a restart image's path (of ``a``, ``x/y``)."""
    return isinstance(row_id, str) and _RESTART_NAME.search(row_id) is not None


@dataclass(frozen=True)
class Output:
    """The job's output prefix ``uri`` (local or ``s3://``), reached through ``store``."""

    uri: str
    store: storage.Storage = field(default_factory=storage.Storage)

    # ------------------------------------------------------------------ paths

    def sr_uri(self, relpath: str, restart: int | None = None) -> str:
        """Where an id's SR image (or one of its restarts) goes. The id is a name, never a URL:
        under a ``file://`` OUT it is percent-encoded, so the file is named exactly ``relpath``."""
        if self.uri.startswith("file://"):
            relpath = quote(relpath, safe="/")
        if restart is None:
            return storage.join(self.uri, md.SR_DIR, relpath + ".png")
        return storage.join(self.uri, md.SR_DIR, relpath, f"r{restart}.png")

    def metadata_part(self, name: str) -> str:
        return storage.join(self.uri, md.METADATA_DIR, name)

    def restarts_part(self, name: str) -> str:
        return storage.join(self.uri, md.RESTARTS_DIR, name)

    def check(self) -> None:
        """A local OUT that exists must be a folder (:class:`~pulse_ray.job.options.UsageError`)."""
        from .options import UsageError

        try:
            if storage.is_s3(self.uri):
                storage.split_s3(self.uri)
                return
            path = storage.local_path(self.uri)
        except ValueError as exc:
            raise UsageError(f"output: {exc}") from None
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"output {self.uri} exists and is not a folder")

    # ------------------------------------------------------------------ state

    def done_ids(self, corrupt: list | None = None) -> set[str]:
        """Ids with an ``ok`` row (``corrupt``: see :func:`~pulse_ray.job.metadata.read_metadata`)."""
        return md.done_ids(self.uri, store=self.store, corrupt=corrupt)

    def set_aside_corrupt_parts(self) -> list[tuple[str, str, str]]:
        """Move every unreadable metadata / restarts part to ``OUT/quarantine/`` (never deleted: a
        person may want it); its ids then have no row and are redone. Returns ``(part, moved to, why)``."""
        moved = []
        stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
        for sub in (md.METADATA_DIR, md.RESTARTS_DIR):
            for uri, why in md.corrupt_parts(self.uri, sub, self.store):
                dest = storage.join(self.uri, QUARANTINE_DIR, sub, f"{stamp}-{uri.rsplit('/', 1)[-1]}")
                self.store.write_bytes(dest, self.store.read_bytes(uri))
                self.store.delete(uri)
                moved.append((uri, dest, why))
        return moved

    def has_restarts(self) -> bool:
        """Restart rows exist (an earlier ``--save-restarts`` run)."""
        return bool(md.metadata_files(self.uri, md.RESTARTS_DIR, self.store))

    def read_metadata(self, **kw) -> pa.Table:
        return md.read_metadata(self.uri, store=self.store, **kw)

    # ------------------------------------------------------------------ end of a run

    def compact(self, redone: frozenset[str] | None = None, restarts: bool = False) -> None:
        """One row per id (``redone``: an ``--overwrite`` run's ids, whose latest row wins); with
        ``restarts`` the restart rows too."""
        md.compact(self.uri, redone=redone, store=self.store)
        if restarts:
            md.compact(self.uri, md.RESTARTS_DIR, store=self.store)

    def remove_stale_images(self, ids: list[str]) -> None:
        """``--overwrite``: ids that were ok and failed this time keep no SR image from before
        (their metadata row, compacted already, says failed and points at nothing)."""
        for rid in ids:
            try:
                uri = self.sr_uri(images.safe_relpath(rid))
            except Exception:  # an unsafe id wrote nothing
                continue
            self._delete_stale(uri)

    def remove_stale_restart_images(self, ids: list[str]) -> None:
        """Restart images of the ids this run processed that no kept restart row points at
        (an earlier run's extra restarts, or an id that now failed or ran without
        ``--save-restarts``). Best effort: the metadata is right either way."""
        rels = set()
        for rid in ids:
            try:
                rels.add(images.safe_relpath(rid))
            except Exception:  # an unsafe id wrote nothing
                continue
        def local(uri: str) -> str:  # file:// URIs compared as the paths they name
            return storage.local_path(uri) if uri.startswith("file://") else uri

        kept = {local(u) for u in md.read_restarts(self.uri, store=self.store).column("sr_uri").to_pylist()}
        root = local(storage.join(self.uri, md.SR_DIR))
        for uri in self.store.list_uris(root, suffix=".png"):
            rel = uri[len(root):].strip("/")[: -len(".png")]
            if uri not in kept and is_restart_name(rel) and rel.rsplit("/", 1)[0] in rels:
                self._delete_stale(uri)

    def _delete_stale(self, uri: str) -> None:
        try:
            self.store.delete(uri)
        except Exception as exc:
            log.warning("could not remove the stale image %s: %s", uri, exc)

    # ------------------------------------------------------------------ run records

    def write_run_record(self, record: dict, started: datetime) -> str:
        """``OUT/runs/<UTC start time>.json``; returns its URI."""
        name = started.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ") + ".json"
        uri = storage.join(self.uri, RUNS_DIR, name)
        self.store.write_bytes(uri, (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())
        return uri

    def last_run_record(self) -> dict | None:
        """The newest run record (None when there is none or it is unreadable)."""
        last = self.last_run()
        return last[1] if last else None

    def last_run(self) -> tuple[str, dict] | None:
        """``(uri, record)`` of the newest run record (None when there is none or it is unreadable)."""
        uris = self.store.list_uris(storage.join(self.uri, RUNS_DIR), suffix=".json")
        if not uris:
            return None
        try:
            record = json.loads(self.store.read_bytes(uris[-1]).decode("utf-8"))
        except (ValueError, OSError) as exc:
            log.warning("unreadable run record %s: %s", uris[-1], exc)
            return None
        return (uris[-1], record) if isinstance(record, dict) else None

    def report_index(self) -> str | None:
        """``OUT/report/index.html`` when ``pulse-ray report OUT`` has written one."""
        index = storage.join(self.uri, REPORT_DIR, "index.html")
        return index if self.store.exists(index) else None


@dataclass(frozen=True)
class FlatOutput:
    """``pulse-ray upsample``'s folder: ``DIR/<stem>.png``; the caller writes ``DIR/metadata.parquet``
    from the rows the write step returns (no metadata parts, no restart images)."""

    uri: str
    store: storage.Storage = field(default_factory=storage.Storage)

    def sr_uri(self, relpath: str, restart: int | None = None) -> str:
        return storage.join(self.uri, relpath + ".png")

    def metadata_part(self, name: str) -> None:
        return None

    def restarts_part(self, name: str) -> None:
        return None

    def write_metadata(self, table: pa.Table) -> str:
        uri = storage.join(self.uri, "metadata.parquet")
        write_table(table, uri, self.store)
        return uri


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
