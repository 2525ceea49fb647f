"""The three stages of the batch job, each a plain function / callable class over
``pyarrow.Table`` batches (datatrove style: read -> prepare -> search -> write).

* :func:`prepare_batch` (CPU, Ray tasks): drop ids already done, fetch the bytes
  (``image`` column or ``uri``), validate the id and the image, decode to raw RGB.
* :class:`SearchStage` (Ray actor pool, one generator replica per actor, a GPU
  each where there are GPUs): the latent search on the ``ok`` rows.
* :func:`write_batch` (CPU, Ray tasks): SR PNGs to ``OUT/sr/<id>.png`` and one
  metadata part per batch to ``OUT/metadata/``.

No stage raises for a bad row: the row becomes ``status="failed"`` with a
precise ``error`` and travels on, so that every manifest row gets exactly one
metadata row. Columns the manifest brings (other than ``image``) pass through.
"""

from __future__ import annotations

import os
import re
import socket
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from pulse_ray.io import images, storage
from pulse_ray.io.manifest import write_table

from .metadata import (
    METADATA_DIR,
    METADATA_FIELDS,
    METADATA_NAMES,
    RESTART_FIELDS,
    RESTARTS_DIR,
    SR_DIR,
    part_name,
)

__all__ = ["prepare_batch", "SearchStage", "write_batch", "resolve_uri", "sr_uri_for", "is_restart_name"]

# Columns the stages add and consume; never carried into metadata as they are.
INTERNAL = ("_relpath", "_pixels", "_sr", "_r_pixels", "_r_mse", "_r_conv", "_r_loss", "_r_steps", "_r_seed")


def _set_col(table: pa.Table, name: str, values, type_: pa.DataType) -> pa.Table:
    arr = pa.array(values, type=type_)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, arr)
    return table.append_column(name, arr)


def resolve_uri(uri: str, bases: list[str]) -> str:
    """A row's ``uri``: absolute / ``file://`` / ``s3://`` as is; a relative path
    against the manifest's folder first, then the directory ``submit`` ran in."""
    if storage.is_s3(uri) or uri.startswith("file://") or os.path.isabs(uri):
        return uri
    candidates = [storage.join(b, uri) for b in bases if b]
    for c in candidates:
        try:
            if storage.exists(c):
                return c
        except Exception:
            continue
    return candidates[0] if candidates else uri


# OUT/sr/<id>/r<k>.png holds restart k of id <id> (--keep-restarts): an id ending in
# "/r<number>" would name the same file as a restart image of another id.
_RESTART_NAME = re.compile(r"/r[0-9]+$")


def is_restart_name(row_id: str) -> bool:
    """``a/r0``, ``x/y/r12``: ids whose SR path is also a restart image's path (of ``a``, ``x/y``)."""
    return isinstance(row_id, str) and _RESTART_NAME.search(row_id) is not None


def sr_uri_for(out: str, relpath: str, restart: int | None = None) -> str:
    if restart is None:
        return storage.join(out, SR_DIR, relpath + ".png")
    return storage.join(out, SR_DIR, relpath, f"r{restart}.png")


def _kind(exc: Exception) -> str:
    if isinstance(exc, images.UnsafeId):
        return "unsafe_id"
    msg = str(exc).lower()
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


# ----------------------------------------------------------------------------- stage 1


def prepare_batch(
    table: pa.Table,
    *,
    skip_ids=frozenset(),
    resolution: int,
    bases: list[str] = (),
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    max_bytes: int = images.DEFAULT_MAX_BYTES,
    s3_endpoint_url: str | None = None,
    reserve_restart_names: bool = False,
) -> pa.Table:
    """Fetch + validate + decode. Adds ``status, error, error_kind, lr_width,
    lr_height, factor`` and the internal ``_relpath, _pixels``; drops ``image``.

    ``reserve_restart_names`` (``--keep-restarts``, or an OUT that holds restart
    images): ids ending in ``/r<number>`` fail (``unsafe_id``), since their SR
    image would overwrite, or be overwritten by, a restart image of another id."""
    if s3_endpoint_url:
        storage.set_s3_endpoint_url(s3_endpoint_url)
    # manifest columns that clash with what the job produces travel as __in_<name>
    # and land in the metadata as input_<name>
    clash = [c for c in table.column_names if c in set(METADATA_NAMES) - {"id"} or c in INTERNAL or c == "_sr_size"]
    if clash:
        table = table.rename_columns(["__in_" + c if c in clash else c for c in table.column_names])
    if skip_ids:
        ids_all = table.column("id").to_pylist()
        keep = [i not in skip_ids for i in ids_all]
        if not all(keep):
            table = table.filter(pa.array(keep, pa.bool_()))
    n = table.num_rows
    ids = table.column("id").to_pylist()
    imgs = table.column("image").to_pylist() if "image" in table.column_names else [None] * n
    uris = table.column("uri").to_pylist() if "uri" in table.column_names else [None] * n
    status, error, kind, w_, h_, f_, rel, pix = ([] for _ in range(8))
    for rid, data, uri in zip(ids, imgs, uris):
        try:
            relpath = images.safe_relpath(rid)
            if reserve_restart_names and is_restart_name(relpath):
                parent, _, last = relpath.rpartition("/")
                raise images.UnsafeId(
                    f"id {relpath!r} is refused in an output with restart images (--keep-restarts): "
                    f"sr/{relpath}.png is where restart {last[1:]} of id {parent!r} goes"
                )
            if data is not None:
                where = "column 'image'"
            elif uri:
                where = f"uri {uri}"
                data = storage.read_bytes(resolve_uri(str(uri), list(bases)))
            else:
                raise images.BadInput("no image: 'image' and 'uri' are both empty")
            arr = images.decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes, where=where)
            h, w = arr.shape[:2]
            try:
                factor = images.lr_factor(h, w, resolution)
            except images.BadInput as exc:
                raise images.BadInput(f"{exc} ({where})") from None
        except Exception as exc:  # one bad row never stops the batch
            status.append("failed")
            error.append(str(exc) or type(exc).__name__)
            kind.append(_kind(exc))
            w_.append(None), h_.append(None), f_.append(None), rel.append(None), pix.append(None)
            continue
        status.append("ok")
        error.append(None)
        kind.append(None)
        w_.append(int(w)), h_.append(int(h)), f_.append(int(factor)), rel.append(relpath)
        pix.append(arr.tobytes())
    if "image" in table.column_names:
        table = table.drop_columns(["image"])
    for name, vals, t in (
        ("status", status, pa.string()),
        ("error", error, pa.string()),
        ("error_kind", kind, pa.string()),
        ("lr_width", w_, pa.int32()),
        ("lr_height", h_, pa.int32()),
        ("factor", f_, pa.int32()),
        ("_relpath", rel, pa.string()),
        ("_pixels", pix, pa.binary()),
    ):
        table = _set_col(table, name, vals, t)
    return table


# ----------------------------------------------------------------------------- stage 2


class SearchStage:
    """Callable class for ``map_batches``: loads the generator once per actor."""

    def __init__(
        self,
        generator: str | None = None,
        restarts: int = 4,
        steps: int = 100,
        eps: float = 2e-3,
        seed: int = 0,
        keep_restarts: bool = False,
        keep: str = "realistic",
        num_threads: int | None = None,
        use_gpu: bool = False,
        s3_endpoint_url: str | None = None,
        fault_kill_once: str | None = None,
        upsample_fn=None,
        generator_obj=None,
    ):
        import torch

        if s3_endpoint_url:
            storage.set_s3_endpoint_url(s3_endpoint_url)
        if num_threads:
            torch.set_num_threads(max(1, int(num_threads)))
        if upsample_fn is None or generator_obj is None:
            import pulse_ray

            upsample_fn = upsample_fn or pulse_ray.upsample
            if generator_obj is None:
                generator_obj = pulse_ray.load_generator(generator)
        self.g = generator_obj
        if use_gpu and torch.cuda.is_available():
            self.g = self.g.to(torch.device("cuda"))
        self.upsample = upsample_fn
        self.restarts, self.steps, self.eps, self.seed = int(restarts), int(steps), float(eps), int(seed)
        self.keep_restarts = bool(keep_restarts)
        self.keep = keep
        self.fault_kill_once = fault_kill_once
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def _maybe_die(self):
        # Fault injection for tests: the first batch ever seen (across restarts) kills this
        # actor's process outright, as an OOM kill or a lost node would.
        marker = self.fault_kill_once
        if marker and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)

    def _run(self, lrs, ids):
        import torch

        tensors = [torch.from_numpy(a).permute(2, 0, 1).float().div(255.0) for a in lrs]
        return self.upsample(
            tensors,
            generator=self.g,
            restarts=self.restarts,
            steps=self.steps,
            eps=self.eps,
            seed=self.seed,
            ids=ids,
            keep_restarts=self.keep_restarts,
            keep=self.keep,
        )

    def __call__(self, table: pa.Table) -> pa.Table:
        self._maybe_die()
        n = table.num_rows
        status = table.column("status").to_pylist()
        error = table.column("error").to_pylist()
        kind = table.column("error_kind").to_pylist()
        ids = table.column("id").to_pylist()
        pix = table.column("_pixels").to_pylist()
        ws = table.column("lr_width").to_pylist()
        hs = table.column("lr_height").to_pylist()
        todo = [i for i in range(n) if status[i] == "ok"]
        results: dict[int, object] = {}
        t0 = time.perf_counter()
        if todo:
            lrs = [np.frombuffer(pix[i], np.uint8).reshape(hs[i], ws[i], 3).copy() for i in todo]
            try:
                res = self._run(lrs, [ids[i] for i in todo])
                results = dict(zip(todo, res))
            except Exception:
                # isolate the failing row(s): one row at a time
                for i, lr in zip(todo, lrs):
                    try:
                        results[i] = self._run([lr], [ids[i]])[0]
                    except Exception as exc:
                        status[i] = "failed"
                        error[i] = f"search failed: {type(exc).__name__}: {exc}"
                        kind[i] = "search_error"
        per_image = (time.perf_counter() - t0) / max(1, len(results))
        cols = {k: [None] * n for k in ("mse", "out_mse", "conv", "loss", "restart", "steps", "seed", "sr", "sec")}
        rcols = {k: [None] * n for k in ("px", "mse", "conv", "loss", "steps", "seed")}
        for i, r in results.items():
            cols["mse"][i] = float(r.downscale_mse)
            cols["out_mse"][i] = float(r.output_mse)
            cols["conv"][i] = bool(r.converged)
            cols["loss"][i] = float(r.loss)
            cols["restart"][i] = int(r.restart)
            cols["steps"][i] = int(r.steps)
            cols["seed"][i] = int(r.seed)
            cols["sr"][i] = images.to_uint8_hwc(r.image).tobytes()
            cols["sec"][i] = per_image
            if self.keep_restarts:
                rr = list(getattr(r, "restarts", []) or [])
                rcols["px"][i] = [images.to_uint8_hwc(x.image).tobytes() for x in rr]
                rcols["mse"][i] = [float(x.downscale_mse) for x in rr]
                rcols["conv"][i] = [bool(x.converged) for x in rr]
                rcols["loss"][i] = [float(x.loss) for x in rr]
                rcols["steps"][i] = [int(x.steps) for x in rr]
                rcols["seed"][i] = [int(x.seed) for x in rr]
        table = table.drop_columns(["_pixels"])
        res_px = int(self.g.resolution)
        for name, vals, t in (
            ("status", status, pa.string()),
            ("error", error, pa.string()),
            ("error_kind", kind, pa.string()),
            ("downscale_mse", cols["mse"], pa.float64()),
            ("output_mse", cols["out_mse"], pa.float64()),
            ("converged", cols["conv"], pa.bool_()),
            ("search_loss", cols["loss"], pa.float64()),
            ("restart", cols["restart"], pa.int32()),
            ("steps", cols["steps"], pa.int32()),
            ("seed", cols["seed"], pa.int64()),
            ("restarts", [self.restarts] * n, pa.int32()),
            ("eps", [self.eps] * n, pa.float64()),
            ("keep", [self.keep] * n, pa.string()),
            ("generator", [str(getattr(self.g, "name", "generator"))] * n, pa.string()),
            ("seconds", cols["sec"], pa.float64()),
            ("worker", [self.worker] * n, pa.string()),
            ("_sr_size", [res_px] * n, pa.int32()),
            ("_sr", cols["sr"], pa.binary()),
            ("_r_pixels", rcols["px"], pa.list_(pa.binary())),
            ("_r_mse", rcols["mse"], pa.list_(pa.float64())),
            ("_r_conv", rcols["conv"], pa.list_(pa.bool_())),
            ("_r_loss", rcols["loss"], pa.list_(pa.float64())),
            ("_r_steps", rcols["steps"], pa.list_(pa.int32())),
            ("_r_seed", rcols["seed"], pa.list_(pa.int64())),
        ):
            table = _set_col(table, name, vals, t)
        return table


# ----------------------------------------------------------------------------- stage 3


def write_batch(
    table: pa.Table,
    *,
    out: str,
    keep_restarts: bool = False,
    s3_endpoint_url: str | None = None,
    run_salt: str = "",
) -> pa.Table:
    """Write SR PNGs, then this batch's metadata part (after the images, so a
    metadata row never points at a missing image). Returns a small progress table."""
    if s3_endpoint_url:
        storage.set_s3_endpoint_url(s3_endpoint_url)
    n = table.num_rows
    now = datetime.now(timezone.utc)
    status = table.column("status").to_pylist()
    error = table.column("error").to_pylist()
    kind = table.column("error_kind").to_pylist()
    ids = table.column("id").to_pylist()
    rel = table.column("_relpath").to_pylist()
    srs = table.column("_sr").to_pylist()
    size = table.column("_sr_size").to_pylist()
    sr_uri: list[str | None] = [None] * n
    rrows: list[dict] = []
    for i in range(n):
        if status[i] != "ok":
            continue
        try:
            if srs[i] is None:
                raise RuntimeError("the search produced no image")
            s = int(size[i])
            arr = np.frombuffer(srs[i], np.uint8).reshape(s, s, 3)
            uri = sr_uri_for(out, rel[i])
            storage.write_bytes(uri, images.encode_png(arr))
            sr_uri[i] = uri
            if keep_restarts:
                px = table.column("_r_pixels")[i].as_py() or []
                mse = table.column("_r_mse")[i].as_py() or []
                conv = table.column("_r_conv")[i].as_py() or []
                losses = table.column("_r_loss")[i].as_py() or []
                steps = table.column("_r_steps")[i].as_py() or []
                seeds = table.column("_r_seed")[i].as_py() or []
                best = table.column("restart")[i].as_py()
                for k, p in enumerate(px):
                    ruri = sr_uri_for(out, rel[i], k)
                    storage.write_bytes(ruri, images.encode_png(np.frombuffer(p, np.uint8).reshape(s, s, 3)))
                    rrows.append(
                        dict(
                            id=ids[i], restart=k, best=(k == best), sr_uri=ruri, downscale_mse=mse[k],
                            converged=conv[k], search_loss=losses[k], steps=steps[k], seed=seeds[k],
                            generator=table.column("generator")[i].as_py(), finished_at=now,
                        )
                    )
        except Exception as exc:
            status[i] = "failed"
            error[i] = f"write failed: {exc}"
            kind[i] = "write_error"
            sr_uri[i] = None
    table = _set_col(table, "status", status, pa.string())
    table = _set_col(table, "error", error, pa.string())
    table = _set_col(table, "error_kind", kind, pa.string())
    table = _set_col(table, "sr_uri", sr_uri, pa.string())
    table = _set_col(table, "finished_at", [now] * n, METADATA_FIELDS[-1].type)
    meta = to_metadata(table)
    if n:
        name = part_name(ids, run_salt)
        write_table(meta, storage.join(out, METADATA_DIR, name))
        if keep_restarts and rrows:
            write_table(pa.Table.from_pylist(rrows, schema=pa.schema(RESTART_FIELDS)), storage.join(out, RESTARTS_DIR, name))
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "status": pa.array(status, pa.string()),
            "converged": meta.column("converged"),
            "seconds": meta.column("seconds"),
            "error_kind": pa.array(kind, pa.string()),
        }
    )


def to_metadata(table: pa.Table) -> pa.Table:
    """Fixed metadata columns first (typed, null where a stage never set them),
    then the manifest's own columns; internal columns dropped; a manifest column
    whose name clashes with a metadata column is carried as ``input_<name>``."""
    n = table.num_rows
    cols = []
    for f in METADATA_FIELDS:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(n, f.type))
    extra = _extra(table)
    return pa.Table.from_arrays(
        cols + [table.column(c) for c in extra],
        names=METADATA_NAMES + [_extra_name(c) for c in extra],
    )


def _extra(table: pa.Table) -> list[str]:
    produced = set(METADATA_NAMES) | set(INTERNAL) | {"_sr_size", "image"}
    return [c for c in table.column_names if c not in produced and not c.startswith("__in_")] + [
        c for c in table.column_names if c.startswith("__in_")
    ]


def _extra_name(c: str) -> str:
    return "input_" + c[len("__in_"):] if c.startswith("__in_") else c
