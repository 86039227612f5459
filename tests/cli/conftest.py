"""The real ``csp`` executable as a subprocess, with a clean ``CSP_*`` environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CSP = str(Path(sys.executable).with_name("csp"))
ROOT = Path(__file__).resolve().parents[2]

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def csp(tmp_path: Path) -> Run:
    """``csp(*args, timeout=.., **CSP_VARS)``: run the installed entry point to completion."""

    def run(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith("CSP_")}
        base.update({"CSP_RUN_DIR": str(tmp_path), "COLUMNS": "200", **env})
        return subprocess.run(
            [CSP, *args],
            env=base,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
