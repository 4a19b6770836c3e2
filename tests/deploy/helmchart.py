"""Paths and a thin helm wrapper shared by the chart tests."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "postwarden"
GET_HELM = ROOT / "scripts" / "get-helm.sh"
HELM_SHA256 = "419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
RELEASE = "pw"
NAMESPACE = "mail"

VALUES_FILES: dict[str, Path | None] = {
    "default": None,
    "small": CHART / "values-small.yaml",
    "large": CHART / "values-large.yaml",
}


@dataclass
class Helm:
    binary: Path

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=120,
            # Keep helm from reading or writing the developer's own helm config.
            env={**os.environ, "HELM_CACHE_HOME": str(ROOT / ".cache" / "helm" / "cache"),
                 "HELM_CONFIG_HOME": str(ROOT / ".cache" / "helm" / "config"),
                 "HELM_DATA_HOME": str(ROOT / ".cache" / "helm" / "data")},
        )
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def template(self, *extra: str, values: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        if values is not None:
            args += ["-f", str(values)]
        return self.run(*args, *extra, check=check)

    def render(self, *extra: str, values: Path | None = None) -> list[dict]:
        out = self.template(*extra, values=values).stdout
        return [d for d in yaml.safe_load_all(out) if d]
