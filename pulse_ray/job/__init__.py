"""The distributed batch job: ``submit`` (Ray Data pipeline), ``status``, manifest / LR tools."""

from pulse_ray.io.manifest import ManifestError

from .submit import SubmitOptions, SubmitSummary, UsageError, submit

__all__ = ["ManifestError", "SubmitOptions", "SubmitSummary", "UsageError", "submit"]
