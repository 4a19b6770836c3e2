"""The container image recipe. Docker cannot run here, so these tests check
the Dockerfile's structure and build the same wheel its builder stage builds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from configparser import ConfigParser

from tests.deploy.helmchart import ROOT

DOCKERFILE = ROOT / "Dockerfile"
# Top-level packages the image runs (pyproject.toml's packages.find).
PACKAGES = ("postwarden", "ingest", "streams", "sinks", "web", "dashboards")


def stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """(FROM line, [(instruction, arguments)]) per stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            result.append((args, []))
        else:
            result[-1][1].append((instruction.upper(), args.strip()))
    return result


def test_multi_stage_with_slim_non_root_runtime():
    all_stages = stages()
    assert len(all_stages) >= 2
    build_from, build = all_stages[0]
    runtime_from, runtime = all_stages[-1]
    assert re.match(r"python:3\.11[-\w.]*\s+AS\s+build", build_from, re.I)
    assert re.match(r"python:3\.11-slim[-\w.]*\s", runtime_from)
    assert any(i == "RUN" and "pip wheel" in a for i, a in build)

    runs = " ".join(a for i, a in runtime if i == "RUN")
    assert "from=build" in runs and "--no-index" in runs, "runtime installs only the built wheels"
    for compiler in ("gcc", "build-essential", "g++", "clang"):
        assert compiler not in runs, f"runtime stage must not install {compiler}"
    # The one Debian package at run time is bsdtar, without its recommends or apt's lists.
    installs = re.findall(r"apt-get install ([^&]*)", runs)
    assert [i.split() for i in installs] == [["-y", "--no-install-recommends", "libarchive-tools"]]
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert "--uid 10001" in runs
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    (entrypoint,) = [a for i, a in runtime if i == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["postwarden"]


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".cache", "tests", "deploy"} <= ignored


def test_builder_stage_wheel_has_the_postwarden_command(tmp_path):
    """What `pip wheel .` produces in the builder stage, minus the dependencies."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("postwarden-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        parser = ConfigParser()
        parser.read_string(zf.read(entry_points).decode())
    assert parser["console_scripts"]["postwarden"] == "postwarden.cli:main"
    assert not any(n.startswith(("tests/", "deploy/")) for n in names)
    # Every file the packages read at run time: the spam model, the Message
    # Center's templates and assets, the API description, dashboards, examples.
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    data = [n for n in tracked if not n.endswith(".py")]
    for wanted in ("streams/models/", "web/templates/", "web/static/", "web/openapi.json",
                   "dashboards/provisioning/", "postwarden/examples/tenants.yaml"):
        assert any(n.startswith(wanted) for n in data), wanted
    missing = sorted(set(data) - set(names))
    assert not missing, f"package data left out of the wheel (pyproject.toml package-data): {missing}"
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, package


def test_runtime_listens_beyond_loopback():
    (_, runtime) = stages()[-1]
    env = " ".join(a for i, a in runtime if i == "ENV")
    for name in ("POSTWARDEN_SMTP_HOST", "POSTWARDEN_WEB_HOST", "POSTWARDEN_HEALTH_HOST"):
        assert f"{name}=0.0.0.0" in env, name
