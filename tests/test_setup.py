"""The test suite says what it needs: without ``../shared`` beside the checkout it stops at
collection with one line naming the folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .conftest import REPO


def test_missing_shared_folder_stops_collection_with_one_clear_line(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "helpers.py"):
        shutil.copy(os.path.join(REPO, "tests", name), checkout / "tests" / name)
    (checkout / "tests" / "test_any.py").write_text("def test_any():\n    assert True\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(checkout / "tests")],
                       cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    lines = [ln for ln in out.splitlines() if "shared" in ln]
    assert len(lines) == 1, out
    assert str(tmp_path / "shared" / "fixtures") in lines[0] and "README" in lines[0]
    assert "Traceback" not in out and "passed" not in out
