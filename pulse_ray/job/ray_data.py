"""The Ray Data executor: the job's steps as a streaming Ray Data pipeline::

    read_parquet(manifest files)                      CPU tasks
      -> map_batches(task step)                       light CPU tasks (prepare)
      -> repartition(target_num_rows_per_block=B)     so that W actors share the work
      -> map_batches(actor step, ActorPoolStrategy(W), one replica per actor (setup() once),
                     num_gpus=G)                      G GPUs each (CPU threads otherwise)
      -> map_batches(task step)                       light CPU tasks (write)
      -> iter_batches()                               the driver only counts (progress)

Ray restarts a killed actor and retries its batch (``max_restarts`` / ``max_task_retries``
default to -1 for Ray Data actor pools); a retried write rewrites the same deterministic
part file, so nothing is lost or duplicated.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from .steps import ManifestSource, Step

__all__ = ["RayDataExecutor", "LIGHT_CPUS"]

LIGHT_CPUS = 0.25  # logical CPU claim of the I/O-bound task steps


class _ActorStep:
    """Ray Data's callable class around an actor step: ``setup()`` once per actor."""

    def __init__(self, step: Step):
        step.setup()
        self.step = step

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.step(batch)


@dataclass(frozen=True)
class RayDataExecutor:
    """``workers`` actors of ``cpus_per_worker`` CPUs / ``gpus_per_worker`` GPUs for actor steps,
    ``batch_size`` rows per actor call. Ray must be initialised (see :mod:`pulse_ray.job.cluster`)."""

    workers: int
    batch_size: int
    cpus_per_worker: float
    gpus_per_worker: float = 0.0

    def run(self, source: ManifestSource, steps: list[Step]) -> Iterator[pa.Table]:
        """The last step's output, batch by batch, as the pipeline streams."""
        import ray
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.raise_original_map_exception = True  # a step's own error reaches the CLI's one line
        fs, _ = source.store.arrow_filesystem(source.files[0])
        paths = [source.store.arrow_filesystem(f)[1] for f in source.files]
        ds = ray.data.read_parquet(paths, filesystem=fs, partitioning=None)
        for step in steps:
            if step.actor:
                ds = ds.repartition(target_num_rows_per_block=self.batch_size)
                ds = ds.map_batches(
                    _ActorStep, fn_constructor_kwargs={"step": step}, batch_format="pyarrow",
                    batch_size=self.batch_size, compute=ActorPoolStrategy(size=self.workers),
                    num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or None)
            else:
                ds = ds.map_batches(step, batch_format="pyarrow", batch_size=None, zero_copy_batch=False,
                                    num_cpus=LIGHT_CPUS)
        with _ray_data_console_quiet():
            batches = iter(ds.iter_batches(batch_format="pyarrow", batch_size=None))
            try:
                yield from batches
            finally:  # an interrupt stops the pipeline now, not when the iterator is garbage-collected
                batches.close()


@contextlib.contextmanager
def _ray_data_console_quiet():
    """Ray Data's terminal handlers say nothing while the job runs (its log file,
    ``<Ray session>/logs/ray-data/``, keeps every record): the job reports progress itself,
    and a failure is the CLI's one line, not Ray Data's advice to ignore failed blocks."""
    handlers = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for h, level in zip(handlers, levels):
            h.setLevel(level)
