"""uv.lock pins every dependency, matches pyproject.toml, and is what the sessions install."""

from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")


def _locked() -> dict[str, str]:
    out = subprocess.run(
        [
            "uv",
            "export",
            "--frozen",
            "--all-extras",
            "--no-hashes",
            "--no-emit-project",
            "--format",
            "requirements-txt",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = {}
    for line in out.splitlines():
        if "==" not in line or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():  # this interpreter's
            pins[requirement.name.lower()] = str(requirement.specifier).removeprefix("==")
    return pins


def test_lock_is_in_sync_with_pyproject() -> None:
    result = subprocess.run(
        ["uv", "lock", "--locked", "--offline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"uv.lock is stale: run `nox -s lock`\n{result.stderr}"


def test_this_environment_has_the_locked_versions() -> None:
    """nox installs with the lock as constraints, so the versions here are the locked ones."""
    pins = _locked()
    assert {"fastapi", "confluent-kafka", "redis", "matplotlib"} <= set(pins)
    differ = {}
    for name, pinned in pins.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # for another platform or Python version (markers)
        if installed != pinned:
            differ[name] = (installed, pinned)
    assert differ == {}, f"installed vs locked: {differ}"
