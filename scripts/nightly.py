#!/usr/bin/env python
"""Run `submit` on every manifest under an input prefix that has not been processed yet.

    python scripts/nightly.py INPUT_PREFIX OUTPUT_ROOT [--dry-run] [--retry-failed] [any submit option]

The same as ``pulse-ray nightly``; the logic (and its documentation) is in
:mod:`pulse_ray.job.nightly`. Meant to be run by a scheduler: see infra/k8s/nightly-cronjob.yaml.
"""

import sys
from pathlib import Path

try:
    import pulse_ray  # noqa: F401
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse_ray.job.nightly import main

if __name__ == "__main__":
    sys.exit(main(prog="scripts/nightly.py"))
