"""The job as named steps over ``pyarrow.Table`` batches (datatrove style)::

    ManifestSource  ->  PrepareStep  ->  SearchStep  ->  WriteStep
    (read Parquet)      (fetch, validate,  (latent search,  (SR images, then the
                         decode, LR factor) model loaded once) metadata part)

**The Step protocol.** A step is a small, picklable object holding its own settings
(storage included) with one call shape, ``step(batch: pyarrow.Table) -> pyarrow.Table``.
It declares ``name`` (for logs), ``actor`` (True: stateful, run by a pool of long-lived
workers, each calling ``setup()`` once before its first batch, e.g. to load a model;
False: a stateless task) and ``resources`` (``"light"``: I/O bound; ``"search"``: the
executor gives it the planned CPUs / GPUs). Both executors
(:class:`~pulse_ray.job.ray_data.RayDataExecutor`, the product, and
:class:`~pulse_ray.job.in_process.InProcessExecutor`) run the same step objects.

No step raises for a bad row: the row becomes ``status="failed"`` with a precise
``error`` / ``error_kind`` and travels on, so every manifest row gets exactly one metadata
row. Columns the manifest brings (other than ``image``) pass through, named by
:func:`~pulse_ray.job.metadata.carried_name`. A new step (e.g.
photo alignment before the search, paste-back after it) is one more object in the list
:func:`pulse_ray.job.submit.submit` hands the executor, for example::

    @dataclass(frozen=True)
    class PasteBackStep:
        store: Storage
        name: str = "paste-back"
        actor: bool = False
        resources: str = "light"

        def __call__(self, batch: pa.Table) -> pa.Table:
            ...  # read the columns it needs, add its own; failed rows stay failed
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

import pyarrow as pa

from pulse_ray.io import images, storage
from pulse_ray.io.manifest import inspect_manifest, read_table

from .metadata import carried_name
from .output import is_restart_name

__all__ = ["Step", "ManifestSource", "PrepareStep", "set_column", "resolve_uri"]

# Columns the steps add for each other start with "_" and never reach the metadata (write_step.to_metadata).


@runtime_checkable
class Step(Protocol):
    """One stage of the job: ``batch -> batch`` (see the module docstring)."""

    name: str
    actor: bool
    resources: str

    def __call__(self, batch: pa.Table) -> pa.Table: ...


def set_column(table: pa.Table, name: str, values, type_: pa.DataType) -> pa.Table:
    """``table`` with column ``name`` replaced (or appended)."""
    arr = pa.array(values, type=type_)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, arr)
    return table.append_column(name, arr)


# ----------------------------------------------------------------------------- source


@dataclass(frozen=True)
class ManifestSource:
    """The manifest's Parquet files (validated up front by :meth:`open`: a
    :class:`~pulse_ray.io.manifest.ManifestError` means nothing was written)."""

    manifest: str
    files: tuple[str, ...]
    ids: tuple[str, ...]
    store: storage.Storage = field(default_factory=storage.Storage)
    columns: tuple[str, ...] = ()

    @classmethod
    def open(cls, manifest: str, store: storage.Storage) -> ManifestSource:
        info = inspect_manifest(manifest, store)
        return cls(str(manifest), tuple(info.files), tuple(info.ids), store, tuple(info.columns))

    def bases(self) -> list[str]:
        """Where relative ``uri`` values are looked up: the manifest's folder, then cwd."""
        if storage.is_s3(self.manifest):
            first = self.files[0]
            base = first.rsplit("/", 1)[0] if first != self.manifest or not self.manifest.endswith("/") \
                else self.manifest
            return [base]
        p = storage.local_path(self.manifest)
        base = p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
        return [os.path.abspath(base), os.getcwd()]

    def tables(self) -> Iterator[pa.Table]:
        """Each file as a table (the in-process executor's input)."""
        for f in self.files:
            yield read_table(f, store=self.store)


# ----------------------------------------------------------------------------- prepare


def resolve_uri(uri: str, bases: list[str], store: storage.Storage) -> str:
    """A row's ``uri``: absolute / ``file://`` / ``s3://`` as is; a relative path
    against the manifest's folder first, then the directory ``submit`` ran in. Another scheme
    (``http://``...) raises :class:`~pulse_ray.io.images.BadInput`."""
    try:
        storage.check_scheme(uri)
    except ValueError as exc:
        raise images.BadInput(str(exc)) from None
    if storage.is_s3(uri) or uri.startswith("file://") or os.path.isabs(uri):
        return uri
    candidates = [storage.join(b, uri) for b in bases if b]
    for c in candidates:
        try:
            if store.exists(c):
                return c
        except Exception:
            continue
    return candidates[0] if candidates else uri


def error_kind(exc: Exception) -> str:
    """The ``error_kind`` of a row that failed with ``exc``."""
    if isinstance(exc, images.UnsafeId):
        return "unsafe_id"
    msg = str(exc).lower()
    if isinstance(exc, storage.TooLarge):
        return "too_large"
    if "unsupported uri scheme" in msg:
        return "bad_uri"
    if isinstance(exc, FileNotFoundError) or "nosuchkey" in msg or "no such file" in msg:
        return "missing_image"
    if "decompression bomb" in msg or "limit" in msg:
        return "too_large"
    if "truncated" in msg:
        return "truncated_image"
    if isinstance(exc, images.BadInput) and ("size" in msg or "factor" in msg or "square" in msg or "resolution" in msg):
        return "bad_size"
    if isinstance(exc, images.BadInput):
        return "bad_image"
    if isinstance(exc, OSError):
        return "read_error"
    return "error"


@dataclass(frozen=True)
class PrepareStep:
    """Fetch + validate + decode + LR factor. Adds ``status, error, error_kind, lr_width,
    lr_height, factor`` and the internal ``_relpath, _pixels``; drops ``image``.

    ``skip_ids``: ids already done (resume). ``reserve_restart_names`` (``--save-restarts``,
    or an OUT that holds restart images): ids ending in ``/r<number>`` fail (``unsafe_id``),
    since their SR image would overwrite, or be overwritten by, a restart image of another id."""

    resolution: int
    bases: tuple[str, ...] = ()
    store: storage.Storage = field(default_factory=storage.Storage)
    skip_ids: frozenset = frozenset()
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    max_bytes: int = images.DEFAULT_MAX_BYTES
    reserve_restart_names: bool = False
    columns: tuple[str, ...] = ()  # the manifest's columns (empty: every column of the batch)
    name: str = "prepare"
    actor: bool = False
    resources: str = "light"

    def __call__(self, table: pa.Table) -> pa.Table:
        # the manifest's own columns under their metadata names (metadata.carried_name); anything
        # else the reader added (Ray's __fragment_index ...) is dropped
        if self.columns:
            keep = set(self.columns)
            table = table.select([c for c in table.column_names if c in keep])
        table = table.rename_columns([c if c in ("id", "image") else carried_name(c) for c in table.column_names])
        if self.skip_ids:
            keep = [i not in self.skip_ids for i in table.column("id").to_pylist()]
            if not all(keep):
                table = table.filter(pa.array(keep, pa.bool_()))
        n = table.num_rows
        ids = table.column("id").to_pylist()
        imgs = table.column("image").to_pylist() if "image" in table.column_names else [None] * n
        uris = table.column("uri").to_pylist() if "uri" in table.column_names else [None] * n
        cols = {k: [] for k in ("status", "error", "error_kind", "lr_width", "lr_height", "factor", "_relpath",
                                "_pixels")}
        for rid, data, uri in zip(ids, imgs, uris):
            try:
                row = self._prepare(rid, data, uri)
            except Exception as exc:  # one bad row never stops the batch
                row = dict(status="failed", error=str(exc) or type(exc).__name__, error_kind=error_kind(exc))
            for k, v in cols.items():
                v.append(row.get(k))
        if "image" in table.column_names:
            table = table.drop_columns(["image"])
        types = dict(status=pa.string(), error=pa.string(), error_kind=pa.string(), lr_width=pa.int32(),
                     lr_height=pa.int32(), factor=pa.int32(), _relpath=pa.string(), _pixels=pa.binary())
        for k, v in cols.items():
            table = set_column(table, k, v, types[k])
        return table

    def _prepare(self, rid, data, uri) -> dict:
        relpath = images.safe_relpath(rid)
        if self.reserve_restart_names and is_restart_name(relpath):
            parent, _, last = relpath.rpartition("/")
            raise images.UnsafeId(
                f"id {relpath!r} is refused in an output with restart images (--save-restarts): "
                f"sr/{relpath}.png is where restart {last[1:]} of id {parent!r} goes"
            )
        if data is not None:
            where = "column 'image'"
        elif uri:
            where = f"uri {uri}"
            data = self.store.read_bytes(resolve_uri(str(uri), list(self.bases), self.store),
                                         max_bytes=self.max_bytes)
        else:
            raise images.BadInput("no image: 'image' and 'uri' are both empty")
        arr = images.decode_image(data, max_pixels=self.max_pixels, max_bytes=self.max_bytes, where=where)
        h, w = arr.shape[:2]
        try:
            factor = images.lr_factor(h, w, self.resolution)
        except images.BadInput as exc:
            raise images.BadInput(f"{exc} ({where})") from None
        return dict(status="ok", lr_width=int(w), lr_height=int(h), factor=int(factor), _relpath=relpath,
                    _pixels=arr.tobytes())
