"""bench/model_cv.py refuses arguments it cannot run with before it reads the corpus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

MODEL_CV = Path(__file__).resolve().parents[2] / "bench" / "model_cv.py"


@pytest.mark.parametrize("args, error", [
    (["--folds", "1"], "--folds must be at least 2, not 1"),
    (["--processes", "0"], "--processes must be at least 1, not 0"),
    (["--partitions", "0"], "--partitions must be at least 1, not 0"),
    (["--start", "-1"], "--start must be at least 0, not -1"),
])
def test_bad_arguments_get_one_usage_error(tmp_path, args, error):
    # A corpus that is not there: reaching it would fail differently, so the
    # error below can only come from the argument check.
    env = {"POSTWARDEN_CORPUS_DIR": str(tmp_path / "none"),
           "POSTWARDEN_CORPUS_MANIFEST": str(tmp_path / "none.tsv"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(MODEL_CV), *args], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert error in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
