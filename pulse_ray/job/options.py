"""The job's own options (:class:`JobOptions`: workers, GPUs, batch size, cluster, output
handling), each declared once with its default and help; the search's are a
:class:`~pulse_ray.search.options.SearchOptions` inside it. The ``submit`` command's flags
(:mod:`pulse_ray.cli_options`) and nightly's (:mod:`pulse_ray.job.nightly`) are generated
from these fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from pulse_ray.io import images
from pulse_ray.search.options import OptionError, SearchOptions

__all__ = ["DEFAULT_WAIT_FOR_RESOURCES", "JobOptions", "ResourcesUnavailable", "UsageError"]

DEFAULT_CPU_BATCH = 4  # images per search batch on CPUs
DEFAULT_GPU_BATCH = 16  # ... and on GPUs
DEFAULT_WAIT_FOR_RESOURCES = 600.0  # seconds --address waits for the autoscaler to add GPUs


class UsageError(OptionError):
    """Bad options or an unusable output / generator (CLI exit code 2)."""


class ResourcesUnavailable(RuntimeError):
    """The Ray cluster did not get the GPUs the job asked for within
    ``--wait-for-resources`` seconds (an infrastructure failure: CLI exit code 1)."""


def _opt(default, help: str, cli: bool = True, **extra):
    return field(default=default, metadata={"help": help, "cli": cli, **extra})


@dataclass(frozen=True)
class JobOptions:
    """How ``submit`` runs (``cli=True`` fields are ``submit`` flags; nightly offers all but ``dry_run``)."""

    generator: str | None = _opt(None, "Generator name, path or URI (default: bundled).")
    workers: int | None = _opt(None, "Search actors (default: one per GPU, else one per CPU core). On an "
                               "autoscaling cluster pass it to scale out: without it the job uses the GPUs "
                               "present when it starts (at least one).")
    gpus_per_worker: float = _opt(0.0, "GPUs per search actor (default: 1 when the cluster has GPUs).")
    batch_size: int | None = _opt(None, "Images per search batch (default: 16 on GPU, 4 on CPU).")
    address: str | None = _opt(None, "Ray cluster: 'auto' or ray://host:port (default: embedded Ray).")
    overwrite: bool = _opt(False, "Redo ids that already have an ok row.")
    dry_run: bool = _opt(False, "Validate the manifest and plan; run and write nothing.")
    s3_endpoint_url: str | None = _opt(None, "S3-compatible endpoint (default: $AWS_ENDPOINT_URL).")
    wait_for_resources: float = _opt(DEFAULT_WAIT_FOR_RESOURCES, "With --address and GPUs: how long to wait for "
                                     "the Ray autoscaler to add them before failing (exit 1).", metavar="SECONDS")
    num_cpus: int | None = _opt(None, "Embedded Ray only: CPUs to use (default: all).")
    threads_per_worker: int | None = _opt(None, "Torch CPU threads per search actor (default: the actor's "
                                          "share of the cores).")
    max_pixels: int = _opt(images.DEFAULT_MAX_PIXELS, "Largest input image, in pixels.", cli=False)
    max_bytes: int = _opt(images.DEFAULT_MAX_BYTES, "Largest input image file, in bytes.", cli=False)
    object_store_memory: int | None = _opt(None, "Embedded Ray only: object store bytes.", cli=False)
    progress: bool = _opt(True, "Progress lines on stderr.", cli=False)
    compact: bool = _opt(True, "Compact the output's metadata to one row per id at the end.", cli=False)
    search: SearchOptions = field(default_factory=SearchOptions)

    def __post_init__(self):
        for name in ("workers", "threads_per_worker", "batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
        if self.gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker must be >= 0 (got {self.gpus_per_worker})")
        if not (self.wait_for_resources >= 0 and math.isfinite(self.wait_for_resources)):
            raise UsageError(f"--wait-for-resources must be >= 0 seconds (got {self.wait_for_resources})")
        if not isinstance(self.search, SearchOptions):
            raise UsageError(f"search must be a SearchOptions, not {type(self.search).__name__}")

    def record(self) -> dict:
        """Plain values (the job's, then ``search``: the search's), for run records and ledgers."""
        rec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "search"}
        rec["search"] = self.search.record()
        return rec


def job_fields(*, cli_only: bool = False) -> list[dataclasses.Field]:
    """The job's option fields (not ``search``), optionally only the ``submit`` flags."""
    return [f for f in dataclasses.fields(JobOptions)
            if f.name != "search" and (f.metadata.get("cli") or not cli_only)]
