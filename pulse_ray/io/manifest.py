"""Manifests: Parquet tables of LR inputs (``id`` + ``uri`` and/or ``image``).

A manifest is a local path or ``s3://`` URI naming one Parquet file or a
folder / prefix of Parquet files. Columns:

* ``id`` (string, unique, required, never null)
* ``uri`` (string: local path, ``file://`` or ``s3://``) and/or ``image``
  (binary: encoded PNG / JPEG / WebP). A row uses ``image`` when it is not null,
  else ``uri``.
* anything else is carried into the metadata untouched, under its own name unless
  that is a metadata column's or starts with ``_`` or ``input_``: then as
  ``input_<name>`` (one-to-one: ``status`` -> ``input_status``, ``input_status`` ->
  ``input_input_status``; see :func:`pulse_ray.job.metadata.carried_name`). Names
  starting with ``__`` are refused: the readers reserve them (``__fragment_index`` ...).

:func:`inspect_manifest` checks all of that up front and raises
:class:`ManifestError` naming what is wrong and where. A store that fails
(network, access denied; not a missing object) raises
:class:`~pulse_ray.io.storage.StorageError` instead: that is an infrastructure
failure (CLI exit code 1), and the same manifest may well work on a retry.
"""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage

__all__ = ["ManifestError", "ManifestInfo", "manifest_files", "inspect_manifest", "write_table", "read_table"]


class ManifestError(ValueError):
    """The manifest cannot be used at all (CLI exit code 2, nothing written)."""


@dataclass
class ManifestInfo:
    files: list[str]  # the Parquet files, in order
    ids: list[str]  # every row's id, in file order
    columns: list[str] = dataclasses.field(default_factory=list)  # the (unified) schema's column names

    @property
    def num_rows(self) -> int:
        return len(self.ids)


def manifest_files(manifest: str, store: storage.Storage | None = None) -> list[str]:
    """The Parquet files a manifest names (a file, or every ``*.parquet`` below a folder/prefix)."""
    manifest = os.fspath(manifest)
    store = store or storage.Storage()
    try:
        if manifest.lower().endswith(".parquet") and store.exists(manifest):
            return [manifest]
        files = store.list_uris(manifest, suffix=".parquet")
        if files:
            return files
        if store.exists(manifest) and not store.isdir(manifest):  # one file without the suffix
            return [manifest]
    except storage.StorageError as exc:
        if not isinstance(exc, FileNotFoundError):
            raise  # the store failed (network, permissions): infrastructure (exit 1), not the manifest
        raise ManifestError(f"manifest {manifest}: {exc}") from None
    except ValueError as exc:
        raise ManifestError(f"manifest {manifest}: {exc}") from None
    raise ManifestError(f"manifest {manifest}: no such file, and no *.parquet files under it")


def read_table(uri: str, columns: list[str] | None = None, store: storage.Storage | None = None) -> pa.Table:
    """One Parquet file (local or S3) as a table."""
    if storage.is_s3(uri):
        fs, path = (store or storage.Storage()).arrow_filesystem(uri)
        return pq.read_table(path, filesystem=fs, columns=columns)
    return pq.read_table(storage.local_path(uri), columns=columns)


def _read_schema(uri: str, store: storage.Storage) -> pa.Schema:
    if storage.is_s3(uri):
        fs, path = store.arrow_filesystem(uri)
        with fs.open_input_file(path) as f:
            return pq.read_schema(f)
    return pq.read_schema(storage.local_path(uri))


def write_table(table: pa.Table, uri: str, store: storage.Storage | None = None) -> None:
    """Write one Parquet file atomically (temp + rename locally, one PUT on S3)."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    (store or storage.Storage()).write_bytes(uri, buf.getvalue())


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t) and _is_string(t.value_type)


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def inspect_manifest(manifest: str, store: storage.Storage | None = None) -> ManifestInfo:
    """Validate a manifest and return its files, ids and schema.

    Raises :class:`ManifestError` for: no Parquet files, an unreadable Parquet
    file, a missing / non-string ``id`` column, null ids, duplicate ids, no
    ``uri`` / ``image`` column (or one of the wrong type), or files whose
    schemas do not agree.
    """
    store = store or storage.Storage()
    files = manifest_files(manifest, store)
    schemas: list[pa.Schema] = []
    ids: list[str] = []
    where: dict[str, str] = {}
    dupes: list[tuple[str, str, str]] = []
    for uri in files:
        try:
            schema = _read_schema(uri, store)
        except Exception as exc:  # ArrowInvalid, OSError, ...
            _raise_if_store_failed(uri, exc)
            raise ManifestError(f"manifest file {uri}: not a readable Parquet file ({_short(exc)})") from None
        names = schema.names
        reserved = [c for c in names if c.startswith("__")]
        if reserved:
            raise ManifestError(
                f"manifest file {uri}: column(s) {', '.join(map(repr, reserved))} start with '__', which the "
                "Parquet and Ray readers reserve for their own columns (__fragment_index, __batch_index, ...); "
                "rename them")
        if "id" not in names:
            raise ManifestError(f"manifest file {uri}: no 'id' column (columns: {', '.join(names) or 'none'})")
        if not _is_string(schema.field("id").type):
            raise ManifestError(
                f"manifest file {uri}: column 'id' must be a string, not {schema.field('id').type}"
            )
        if "uri" not in names and "image" not in names:
            raise ManifestError(
                f"manifest file {uri}: no image column: needs 'uri' (string) or 'image' (binary); "
                f"columns: {', '.join(names)}"
            )
        if "uri" in names and not _is_string(schema.field("uri").type):
            raise ManifestError(f"manifest file {uri}: column 'uri' must be a string, not {schema.field('uri').type}")
        if "image" in names and not _is_binary(schema.field("image").type):
            raise ManifestError(
                f"manifest file {uri}: column 'image' must be binary (encoded PNG/JPEG/WebP), "
                f"not {schema.field('image').type}"
            )
        try:
            col = read_table(uri, columns=["id"], store=store).column("id")
        except Exception as exc:
            _raise_if_store_failed(uri, exc)
            raise ManifestError(f"manifest file {uri}: cannot read column 'id' ({_short(exc)})") from None
        if col.null_count:
            first = next(i for i, v in enumerate(col.to_pylist()) if v is None)
            raise ManifestError(f"manifest file {uri}: {col.null_count} null id(s), first at row {first}")
        for i, v in enumerate(col.to_pylist()):
            loc = f"{uri} row {i}"
            if v in where:
                dupes.append((v, where[v], loc))
            else:
                where[v] = loc
            ids.append(v)
        schemas.append(schema)
    if dupes:
        n = len(dupes)
        shown = "; ".join(f"{v!r} at {a} and {b}" for v, a, b in dupes[:5])
        more = f" (and {n - 5} more)" if n > 5 else ""
        raise ManifestError(f"manifest {manifest}: {n} duplicate id(s): {shown}{more}")
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive") if len(schemas) > 1 else schemas[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ManifestError(f"manifest {manifest}: the Parquet files' schemas disagree ({_short(exc)})") from None
    names = schema.names
    if len(files) > 1:
        for s, uri in zip(schemas, files):
            missing = {"uri", "image"} & set(names) - set(s.names)
            if missing:
                raise ManifestError(
                    f"manifest file {uri}: lacks column(s) {sorted(missing)} that other manifest files have"
                )
    return ManifestInfo(files=files, ids=ids, columns=list(names))


def _raise_if_store_failed(uri: str, exc: Exception) -> None:
    """An S3 read that failed for another reason than the bytes (network, throttling, access
    denied) is an infrastructure failure (exit 1; nightly retries it), not an unusable manifest."""
    if not storage.is_s3(uri) or isinstance(exc, (pa.ArrowInvalid, pa.ArrowNotImplementedError, FileNotFoundError)):
        return
    if isinstance(exc, storage.StorageError):
        raise exc
    if isinstance(exc, OSError):
        raise storage.StorageError(f"cannot read manifest file {uri}: {_short(exc)}") from None


def _short(exc: Exception, limit: int = 300) -> str:
    s = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."
