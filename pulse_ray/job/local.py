"""``pulse-ray upsample``: the search in this process (no Ray) on image files / folders.

Writes ``DIR/<stem>.png`` per input and ``DIR/metadata.parquet`` (same columns
as the batch job's metadata). Bad inputs get a ``failed`` row, never a crash.
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass, field

import pyarrow as pa

from pulse_ray.io import images, storage
from pulse_ray.io.manifest import write_table

from .metadata import METADATA_NAMES
from .stages import SearchStage, prepare_batch, to_metadata

__all__ = ["collect_inputs", "upsample_files", "LocalResult"]


@dataclass
class LocalResult:
    table: pa.Table
    seconds: float = 0.0
    rows: list = field(default_factory=list)


def collect_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """``(uri, stem)`` for image files and every image under folders; stems made unique."""
    from .tools import list_images

    found: list[tuple[str, str]] = []
    for inp in inputs:
        inp = os.fspath(inp)
        if storage.isdir(inp):
            lst = list_images(inp)
            if not lst:
                raise FileNotFoundError(f"no images ({', '.join(images.IMAGE_SUFFIXES)}) under {inp}")
            found += [(u, posixpath.splitext(posixpath.basename(r))[0]) for u, r in lst]
        else:
            # a file (possibly missing or not an image: it gets a failed row)
            name = inp.replace(os.sep, "/").rstrip("/").rsplit("/", 1)[-1]
            found.append((inp, posixpath.splitext(name)[0] or name))
    seen: dict[str, int] = {}
    out = []
    for uri, stem in found:
        stem = stem or "image"
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        out.append((uri, stem if k == 0 else f"{stem}-{k}"))
    return out


def upsample_files(
    inputs: list[str],
    output: str,
    *,
    generator: str | None = None,
    restarts: int = 4,
    steps: int = 100,
    eps: float = 2e-3,
    seed: int = 0,
    batch_size: int = 4,
    keep: str = "realistic",
    on_row=None,
    _generator=None,
    _upsample_fn=None,
) -> LocalResult:
    import pulse_ray

    t0 = time.perf_counter()
    g = _generator if _generator is not None else pulse_ray.load_generator(generator)
    stage = SearchStage(
        generator=generator, restarts=restarts, steps=steps, eps=eps, seed=seed, keep=keep,
        upsample_fn=_upsample_fn or pulse_ray.upsample, generator_obj=g,
    )
    items = collect_inputs(inputs)
    metas = []
    for start in range(0, len(items), max(1, batch_size)):
        chunk = items[start:start + batch_size]
        t = pa.table({"id": pa.array([s for _, s in chunk], pa.string()),
                      "uri": pa.array([u for u, _ in chunk], pa.string())})
        t = prepare_batch(t, resolution=int(g.resolution), bases=[os.getcwd()])
        t = stage(t)
        status = t.column("status").to_pylist()
        error = t.column("error").to_pylist()
        kind = t.column("error_kind").to_pylist()
        srs = t.column("_sr").to_pylist()
        size = int(g.resolution)
        sr_uri = [None] * t.num_rows
        import numpy as np

        for i, (_, stem) in enumerate(chunk):
            if status[i] != "ok":
                continue
            try:
                uri = storage.join(output, stem + ".png")
                storage.write_bytes(uri, images.encode_png(np.frombuffer(srs[i], np.uint8).reshape(size, size, 3)))
                sr_uri[i] = uri
            except Exception as exc:
                status[i], error[i], kind[i] = "failed", f"write failed: {exc}", "write_error"
        from datetime import datetime, timezone

        now = datetime.now(timezone.utc)
        for name, vals, typ in (("status", status, pa.string()), ("error", error, pa.string()),
                                ("error_kind", kind, pa.string()), ("sr_uri", sr_uri, pa.string())):
            t = t.set_column(t.column_names.index(name), name, pa.array(vals, typ)) if name in t.column_names \
                else t.append_column(name, pa.array(vals, typ))
        t = t.append_column("finished_at", pa.array([now] * t.num_rows, pa.timestamp("us", tz="UTC")))
        m = to_metadata(t)
        metas.append(m)
        if on_row is not None:
            for row in m.to_pylist():
                on_row(row)
    table = pa.concat_tables(metas, promote_options="permissive") if metas else pa.table({n: [] for n in METADATA_NAMES})
    write_table(table, storage.join(output, "metadata.parquet"))
    return LocalResult(table=table, seconds=time.perf_counter() - t0)
