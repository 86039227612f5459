"""``csp processor`` stopped by SIGTERM while Redis is down exits cleanly (no traceback)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from tests.cli.conftest import CSP
from tests.conftest import Env

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("client", ["confluent", "aiokafka"])
def test_sigterm_while_redis_is_down_exits_cleanly(isolated: Env, client: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CSP_")}
    env.update(isolated.env, CSP_PROCESSOR_KAFKA_CLIENT=client)
    env["CSP_REDIS_URL"] = f"redis://127.0.0.1:{_closed_port()}/0"
    out = isolated.workdir / "processor.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen([CSP, "processor"], env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while b"Redis unavailable" not in out.read_bytes():
                assert proc.poll() is None, out.read_text()
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert '"message":"stopped' in text.strip().splitlines()[-1]
