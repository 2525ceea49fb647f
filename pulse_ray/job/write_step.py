"""The write step, the job's one write path: SR images first, then the batch's metadata part
(so a metadata row never points at a missing image). Used by both executors, for the
job's layout (:class:`~pulse_ray.job.output.Output`) and ``pulse-ray upsample``'s
(:class:`~pulse_ray.job.output.FlatOutput`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from pulse_ray.io import images
from pulse_ray.io.manifest import write_table

from .metadata import METADATA_FIELDS, METADATA_NAMES, RESTART_FIELDS, part_name
from .output import FlatOutput, Output
from .steps import set_column

__all__ = ["WriteStep", "to_metadata"]


@dataclass(frozen=True)
class WriteStep:
    """Writes each ``ok`` row's SR image (and with ``save_restarts`` every restart's image and
    row), then the batch's metadata part. Returns the batch's metadata rows."""

    output: Output | FlatOutput
    save_restarts: bool = False
    run_salt: str = ""
    name: str = "write"
    actor: bool = False
    resources: str = "light"

    def __call__(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        now = datetime.now(timezone.utc)
        status = table.column("status").to_pylist()
        error = table.column("error").to_pylist()
        kind = table.column("error_kind").to_pylist()
        ids = table.column("id").to_pylist()
        sr_uri: list[str | None] = [None] * n
        rrows: list[dict] = []
        for i in range(n):
            if status[i] != "ok":
                continue
            try:
                sr_uri[i] = self._write_images(table, i, now, rrows)
            except Exception as exc:
                status[i], error[i], kind[i] = "failed", f"write failed: {exc}", "write_error"
        for name, vals, t in (("status", status, pa.string()), ("error", error, pa.string()),
                              ("error_kind", kind, pa.string()), ("sr_uri", sr_uri, pa.string()),
                              ("finished_at", [now] * n, METADATA_FIELDS[-1].type)):
            table = set_column(table, name, vals, t)
        meta = to_metadata(table)
        if n:
            store = self.output.store
            name = part_name(ids, self.run_salt)
            part = self.output.metadata_part(name)
            if part is not None:
                write_table(meta, part, store)
            if self.save_restarts and rrows and self.output.restarts_part(name) is not None:
                write_table(pa.Table.from_pylist(rrows, schema=pa.schema(RESTART_FIELDS)),
                            self.output.restarts_part(name), store)
        return meta

    def _write_images(self, table: pa.Table, i: int, now: datetime, rrows: list[dict]) -> str:
        store, rel = self.output.store, table.column("_relpath")[i].as_py()
        sr = table.column("_sr")[i].as_py()
        if sr is None:
            raise RuntimeError("the search produced no image")
        s = int(table.column("_sr_size")[i].as_py())
        uri = self.output.sr_uri(rel)
        store.write_bytes(uri, images.encode_png(np.frombuffer(sr, np.uint8).reshape(s, s, 3)))
        if self.save_restarts:
            px = table.column("_r_pixels")[i].as_py() or []
            mse, conv, losses, steps, seeds = (table.column(c)[i].as_py() or []
                                               for c in ("_r_mse", "_r_conv", "_r_loss", "_r_steps", "_r_seed"))
            best = table.column("restart")[i].as_py()
            for k, p in enumerate(px):
                ruri = self.output.sr_uri(rel, k)
                store.write_bytes(ruri, images.encode_png(np.frombuffer(p, np.uint8).reshape(s, s, 3)))
                rrows.append(dict(id=table.column("id")[i].as_py(), restart=k, best=(k == best), sr_uri=ruri,
                                  downscale_mse=mse[k], converged=conv[k], search_loss=losses[k], steps=steps[k],
                                  seed=seeds[k], generator=table.column("generator")[i].as_py(), finished_at=now))
        return uri


def to_metadata(table: pa.Table) -> pa.Table:
    """Fixed metadata columns first (typed, null where a step never set them), then the
    manifest's own columns (already under their :func:`~pulse_ray.job.metadata.carried_name`);
    internal columns (names starting with ``_``) dropped."""
    n = table.num_rows
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(n, f.type)
            for f in METADATA_FIELDS]
    produced = set(METADATA_NAMES) | {"image"}
    extra = [c for c in table.column_names if c not in produced and not c.startswith("_")]
    return pa.Table.from_arrays(cols + [table.column(c) for c in extra], names=METADATA_NAMES + extra)
