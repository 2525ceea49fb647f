"""``pulse-ray report OUT``: a static HTML report of a job (summary, plots, gallery)."""

from .build import REPORT_DIR, ReportResult, build_report, default_destination

__all__ = ["REPORT_DIR", "ReportResult", "build_report", "default_destination"]
