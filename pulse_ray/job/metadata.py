"""Per-image metadata under ``OUT/metadata/``: schema, writing, reading, dedup, compaction.

Layout::

    OUT/sr/<id>.png                      SR image of each ``ok`` row
    OUT/sr/<id>/r<k>.png                 every restart (``--save-restarts``)
    OUT/metadata/part-<hash>.parquet     one file per written batch (atomic)
    OUT/restarts/part-<hash>.parquet     one row per restart (``--save-restarts``)

``OUT/sr/<id>/r<k>.png`` is also where an id ``<id>/r<k>`` would put its SR image, so
an output with restart images (a ``--save-restarts`` run, or ``OUT/restarts/``
not empty) refuses ids ending in ``/r<number>``: they become ``failed`` rows
(``unsafe_id``); and ``--save-restarts`` into an OUT that already has ``ok``
results for such ids is a usage error. Any other two ids never share a file.

Resume reads ``OUT/metadata/`` to find ids that already have an ``ok`` row.
Duplicate rows for one id can exist for a while (a retried id, ``--overwrite``,
an interrupted compaction); the rule every reader applies — and that
:func:`compact` materialises at the end of each completed ``submit`` — is:
**one row per id: an ``ok`` row beats a ``failed`` one; among equals the latest
``finished_at`` wins.** After a completed ``submit`` the folder holds exactly one
row per id. A completed ``--overwrite`` run compacts with the latest row first for the
ids it redid (``redone``): its result is the one kept, also where an id that
was ``ok`` now failed (its stale SR image is then removed). Restart rows belong to the
row that is kept: those of any other run of the id are dropped at compaction (see
:func:`read_restarts`; ``submit`` removes their images).
"""

from __future__ import annotations

import hashlib
import io
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pulse_ray.io import storage
from pulse_ray.io.manifest import read_table, write_table

__all__ = [
    "METADATA_DIR",
    "RESTARTS_DIR",
    "SR_DIR",
    "METADATA_FIELDS",
    "CorruptPart",
    "corrupt_parts",
    "read_part",
    "RESTART_FIELDS",
    "carried_name",
    "part_name",
    "metadata_files",
    "read_metadata",
    "read_restarts",
    "done_ids",
    "dedup",
    "compact",
]

METADATA_DIR = "metadata"
RESTARTS_DIR = "restarts"
SR_DIR = "sr"

TS = pa.timestamp("us", tz="UTC")

# Fixed metadata columns (manifest extra columns follow them).
METADATA_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("status", pa.string()),  # "ok" | "failed"
    pa.field("error", pa.string()),  # null when ok
    pa.field("error_kind", pa.string()),  # short category for grouping, null when ok
    pa.field("sr_uri", pa.string()),
    pa.field("lr_width", pa.int32()),
    pa.field("lr_height", pa.int32()),
    pa.field("factor", pa.int32()),
    pa.field("downscale_mse", pa.float64()),  # PULSE's L2, G(z) before clamping (judged against eps)
    pa.field("output_mse", pa.float64()),  # the same for the SR image as returned (clamped to [0, 1])
    pa.field("converged", pa.bool_()),
    pa.field("search_loss", pa.float64()),  # the search's total loss at the kept image: lower is more realistic
    pa.field("restart", pa.int32()),  # index of the best restart
    pa.field("steps", pa.int32()),  # steps the best restart ran
    pa.field("seed", pa.int64()),  # seed of the best restart
    pa.field("restarts", pa.int32()),  # restarts requested
    pa.field("eps", pa.float64()),
    pa.field("keep", pa.string()),  # which result the search kept: "realistic" or "closest"
    pa.field("grey", pa.bool_()),  # a grey LR: searched and returned in luminance (null in parts before this column)
    pa.field("generator", pa.string()),
    pa.field("seconds", pa.float64()),  # search wall time of the batch / images in it
    pa.field("worker", pa.string()),  # host:pid of the search actor
    pa.field("finished_at", TS),
]
METADATA_NAMES = [f.name for f in METADATA_FIELDS]


def carried_name(column: str) -> str:
    """The metadata name of a manifest column (other than ``id`` / ``image``): its own name, unless
    that is a metadata column's or starts with ``_`` (the job's and Ray's internal columns) or
    ``input_``: then ``input_<name>``. One-to-one, and never a metadata or internal name."""
    if column in METADATA_NAMES or column.startswith(("_", "input_")):
        return "input_" + column
    return column

RESTART_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("restart", pa.int32()),
    pa.field("best", pa.bool_()),
    pa.field("sr_uri", pa.string()),
    pa.field("downscale_mse", pa.float64()),
    pa.field("converged", pa.bool_()),
    pa.field("search_loss", pa.float64()),
    pa.field("steps", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("generator", pa.string()),
    pa.field("finished_at", TS),
]


def part_name(ids: list[str], salt: str = "") -> str:
    """Deterministic file name for a batch: a retried batch overwrites its own part."""
    h = hashlib.sha1()
    h.update(salt.encode())
    for i in ids:
        h.update(b"\0")
        h.update(i.encode("utf-8", "surrogatepass"))
    return f"part-{h.hexdigest()[:20]}.parquet"


def metadata_files(out: str, sub: str = METADATA_DIR, store: storage.Storage | None = None) -> list[str]:
    return (store or storage.Storage()).list_uris(storage.join(out, sub), suffix=".parquet")


class CorruptPart(ValueError):
    """Parts under OUT that cannot be read as Parquet; ``parts``: ``[(uri, reason)]``."""

    def __init__(self, parts: list[tuple[str, str]]):
        self.parts = list(parts)
        shown = "; ".join(f"{u} ({why})" for u, why in self.parts[:3])
        more = f" and {len(self.parts) - 3} more" if len(self.parts) > 3 else ""
        super().__init__(f"unreadable metadata part(s): {shown}{more}; the next `pulse-ray submit` sets them "
                         "aside under OUT/quarantine/ and redoes their rows")


def read_part(f: str, columns: list[str] | None = None, store: storage.Storage | None = None) -> pa.Table:
    """One part; :class:`CorruptPart` when its bytes are not Parquet (a store that fails raises
    :class:`~pulse_ray.io.storage.StorageError`, an infrastructure failure, instead)."""
    try:
        return read_table(f, columns=columns, store=store)
    except FileNotFoundError:
        raise
    except Exception:
        data = (store or storage.Storage()).read_bytes(f)  # the store failing is not corruption
    try:  # the bytes it holds now, parsed in memory
        return pq.read_table(io.BytesIO(data), columns=columns)
    except Exception as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CorruptPart([(f, msg)]) from None


def _read_all(files: list[str], columns: list[str] | None = None, store: storage.Storage | None = None,
              corrupt: list | None = None) -> pa.Table | None:
    """The parts concatenated. An unreadable part raises :class:`CorruptPart`, or with a ``corrupt``
    list is appended to it (``(uri, reason)``) and left out."""
    tables, bad = [], []
    for f in files:
        try:
            tables.append(read_part(f, columns, store))
        except FileNotFoundError:  # compacted away between list and read
            continue
        except CorruptPart as exc:
            bad += exc.parts
    if bad:
        if corrupt is None:
            raise CorruptPart(bad)
        corrupt += bad
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def dedup(table: pa.Table, redone: set[str] | frozenset[str] | None = None) -> pa.Table:
    """One row per id: ok beats failed, then latest ``finished_at`` (then last written).

    ``redone`` (the ids a completed ``--overwrite`` run processed): for those the
    latest row wins whatever its status, so that the run's result is the one kept.
    """
    if table.num_rows == 0:
        return table
    n = table.num_rows
    ok = pc.equal(table.column("status"), "ok").fill_null(False)
    if redone:
        ok = pc.and_(ok, pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(redone), pa.string()))))
    if "finished_at" in table.column_names:
        fin = pc.fill_null(table.column("finished_at").cast(pa.int64()), -1)
    else:
        fin = pa.array([0] * n, pa.int64())
    work = pa.table(
        {
            "id": table.column("id"),
            "_ok": pc.cast(ok, pa.int8()),
            "_fin": fin,
            "_pos": pa.array(range(n), pa.int64()),
        }
    )
    work = work.sort_by([("id", "ascending"), ("_ok", "descending"), ("_fin", "descending"), ("_pos", "descending")])
    ids = work.column("id").to_pylist()
    pos = work.column("_pos").to_pylist()
    keep = [pos[i] for i in range(n) if i == 0 or ids[i] != ids[i - 1]]
    keep.sort()
    return table.take(pa.array(keep, pa.int64()))


def read_metadata(out: str, *, dedup_rows: bool = True, columns: list[str] | None = None,
                  store: storage.Storage | None = None, corrupt: list | None = None) -> pa.Table:
    """All metadata rows under ``OUT/metadata/`` (deduplicated by id unless told not to).
    An unreadable part raises :class:`CorruptPart` (with a ``corrupt`` list: noted there, left out)."""
    cols = None
    if columns is not None:
        cols = list(dict.fromkeys(["id", "status", "finished_at", *columns]))
    t = _read_all(metadata_files(out, store=store), columns=cols, store=store, corrupt=corrupt)
    if t is None:
        return pa.schema(METADATA_FIELDS).empty_table()
    if dedup_rows:
        t = dedup(t)
    if columns is not None:
        t = t.select(columns)
    return t


def read_restarts(out: str, store: storage.Storage | None = None) -> pa.Table:
    """Per-restart rows (``--save-restarts``) of the results ``OUT/metadata/`` keeps: one
    per (id, restart), only for ids whose kept row is ``ok`` and from the same batch
    (same ``finished_at``). Rows of an earlier run of a redone id (``--overwrite``),
    or of an id whose SR write failed, describe no kept result and are left out."""
    t = _read_all(metadata_files(out, RESTARTS_DIR, store), store=store)
    if t is None:
        return pa.schema(RESTART_FIELDS).empty_table()
    return _current_restarts(out, t, store)


def _current_restarts(out: str, restarts: pa.Table, store: storage.Storage | None = None) -> pa.Table:
    """The rows of ``restarts`` that belong to the kept metadata row of their id."""
    kept = read_metadata(out, columns=["id", "status", "finished_at"], store=store)
    batch_of = {
        i: f
        for i, s, f in zip(
            kept.column("id").to_pylist(),
            kept.column("status").to_pylist(),
            kept.column("finished_at").cast(pa.int64()).to_pylist(),
        )
        if s == "ok"
    }
    ids = restarts.column("id").to_pylist()
    rs = restarts.column("restart").to_pylist()
    fin = restarts.column("finished_at").cast(pa.int64()).to_pylist()
    seen: set = set()
    mask = []
    for i, r, f in zip(ids, rs, fin):  # one row per (id, restart): a rewritten part may repeat one
        keep = f is not None and batch_of.get(i) == f and (i, r) not in seen
        if keep:
            seen.add((i, r))
        mask.append(keep)
    return restarts.filter(pa.array(mask, pa.bool_()))


def done_ids(out: str, store: storage.Storage | None = None, corrupt: list | None = None) -> set[str]:
    """Ids that already have an ``ok`` row in OUT's metadata (``corrupt``: see :func:`read_metadata`)."""
    t = _read_all(metadata_files(out, store=store), columns=["id", "status"], store=store, corrupt=corrupt)
    if t is None:
        return set()
    mask = pc.equal(t.column("status"), "ok").fill_null(False)
    return set(t.filter(mask).column("id").to_pylist())


def corrupt_parts(out: str, sub: str = METADATA_DIR, store: storage.Storage | None = None) -> list[tuple[str, str]]:
    """``(uri, reason)`` of every unreadable part under ``OUT/<sub>/``."""
    bad: list = []
    for f in metadata_files(out, sub, store):
        try:
            read_part(f, None, store)
        except FileNotFoundError:
            continue
        except CorruptPart as exc:
            bad += exc.parts
    return bad


def compact(out: str, sub: str = METADATA_DIR, redone=None, store: storage.Storage | None = None) -> int:
    """Rewrite ``OUT/<sub>/`` as one deduplicated part; returns its row count.
    ``redone``: see :func:`dedup` (``--overwrite``).

    Crash-safe: the new part is written (atomically) and read back before the old ones
    are removed, and readers dedup, so a crash in between only leaves duplicates
    that every reader already resolves. An unreadable part raises :class:`CorruptPart`
    (``submit`` sets such parts aside first: :meth:`~pulse_ray.job.output.Output.set_aside_corrupt_parts`).
    """
    store = store or storage.Storage()
    files = metadata_files(out, sub, store)
    if not files:
        return 0
    t = _read_all(files, store=store)
    if t is None:
        return 0
    if sub == METADATA_DIR:
        d = dedup(t, redone)
    else:
        d = _current_restarts(out, t, store)
    if len(files) == 1 and d.num_rows == t.num_rows:
        return d.num_rows
    if "id" in d.column_names and d.num_rows:
        d = d.sort_by([("id", "ascending")])
    target = storage.join(out, sub, f"part-compact-{uuid.uuid4().hex[:12]}.parquet")
    write_table(d, target, store)
    # the old parts go only once the new one reads back whole: one bad file never hides every row
    if read_part(target, ["id"], store).num_rows != d.num_rows:
        raise CorruptPart([(target, "the compacted part did not read back whole")])
    for f in files:
        if f != target:
            store.delete(f)
    return d.num_rows
