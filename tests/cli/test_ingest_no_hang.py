"""``csp ingest`` whose connection task dies exits at once with the error, instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import Env

pytestmark = pytest.mark.integration

# The settings validation rejects such a URL up front (tests/cli/test_config_errors.py); here it
# is smuggled past it (model_copy does not validate) to reach the crash inside the running
# service: any exception a connection supervisor does not handle must stop the process.
SCRIPT = """
import sys
from cryptostream.config import load_settings
from cryptostream.ingest.service import main
settings = load_settings("ingest").model_copy(update={"binance_ws_url": sys.argv[1]})
sys.exit(main(settings))
"""


@pytest.mark.parametrize("url", ["nonsense", "ws://" + "a" * 70 + ".example:1"])
def test_ingest_exits_when_a_connection_task_dies(isolated: Env, url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CSP_")}
    env.update(isolated.env, CSP_INGEST_RESUME_SCAN="0", CSP_INGEST_TAIL_CHECK_S="0")
    try:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ingest still running 60 s after its connection task died: {exc.stdout!r}")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert any('"ingest failed, stopping' in line for line in lines), result.stdout
    assert any('"message":"stopped"' in line for line in lines), result.stdout
