"""The distributed batch job: ``submit`` (steps run by the Ray Data executor), ``status``, ``nightly``.

See :mod:`pulse_ray.job.steps` for the pipeline and the Step protocol."""

from pulse_ray.io.manifest import ManifestError

from .options import JobOptions, UsageError
from .submit import SubmitSummary, submit

__all__ = ["JobOptions", "ManifestError", "SubmitSummary", "UsageError", "submit"]
