"""The in-process executor: the same step objects as the Ray one, run in this process
(``pulse-ray upsample``, fast tests). Actor steps are set up once, then every batch goes
through every step in order."""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow as pa

from pulse_ray.io import images, storage

from .metadata import METADATA_FIELDS
from .options import DEFAULT_CPU_BATCH
from .output import FlatOutput
from .search_step import SearchStep
from .steps import PrepareStep, Step
from .write_step import WriteStep

__all__ = ["InProcessExecutor", "UpsampleResult", "collect_inputs", "upsample_files"]


class InProcessExecutor:
    """Cuts the source's tables into batches of ``batch_size`` rows and runs the steps on each."""

    def __init__(self, batch_size: int = 4):
        self.batch_size = max(1, int(batch_size))

    def run(self, source: Iterable[pa.Table], steps: list[Step]) -> Iterator[pa.Table]:
        """The last step's output, batch by batch."""
        for step in steps:
            if step.actor:
                step.setup()
        for table in source:
            for start in range(0, table.num_rows, self.batch_size):
                batch = table.slice(start, self.batch_size)
                for step in steps:
                    batch = step(batch)
                yield batch


# ----------------------------------------------------------------------------- pulse-ray upsample


@dataclass
class UpsampleResult:
    table: pa.Table  # one metadata row per input (the job's columns)
    seconds: float = 0.0


def collect_inputs(inputs: list[str], store: storage.Storage | None = None) -> list[tuple[str, str]]:
    """``(uri, stem)`` for image files and every image under folders; stems made unique."""
    from pulse_ray.tools import list_images

    store = store or storage.Storage()
    found: list[tuple[str, str]] = []
    for inp in inputs:
        inp = os.fspath(inp)
        if store.isdir(inp):
            lst = list_images(inp, store)
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


def upsample_files(inputs: list[str], output: str, search: SearchStep, *, batch_size: int = DEFAULT_CPU_BATCH,
                   on_row=None, store: storage.Storage | None = None) -> UpsampleResult:
    """The search on image files / folders in this process: ``DIR/<stem>.png`` per input and
    ``DIR/metadata.parquet`` (the job's columns). Bad inputs get a ``failed`` row, never a crash."""
    t0 = time.perf_counter()
    store = store or storage.Storage()
    items = collect_inputs(inputs, store)
    search.setup()
    out = FlatOutput(str(output), store)
    source = [pa.table({"id": pa.array([s for _, s in items], pa.string()),
                        "uri": pa.array([u for u, _ in items], pa.string())})]
    steps = [PrepareStep(int(search.g.resolution), (os.getcwd(),), store), search,
             WriteStep(out, save_restarts=False)]
    metas = []
    for meta in InProcessExecutor(batch_size).run(source, steps):
        metas.append(meta)
        for row in meta.to_pylist() if on_row is not None else ():
            on_row(row)
    table = pa.concat_tables(metas, promote_options="permissive") if metas else \
        pa.schema(METADATA_FIELDS).empty_table()
    out.write_metadata(table)
    return UpsampleResult(table=table, seconds=time.perf_counter() - t0)
