"""A closed Kafka port: the commands name the address, suggest a fix and give up quickly."""

from __future__ import annotations

import socket
import time

import pytest

from tests.cli.conftest import Run


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "command", [["processor"], ["ingest"], ["topics", "create"], ["rebuild", "--yes"]]
)
def test_unreachable_kafka_is_named_and_fails_fast(csp: Run, command: list[str]) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = csp(*command, CSP_KAFKA_BOOTSTRAP=address, CSP_KAFKA_CONNECT_TIMEOUT_S="1")
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert f"cannot reach Kafka at {address}" in output and "csp stack up" in output
    # (generous for a loaded machine: interpreter start-up alone can take seconds there)
    assert elapsed < 15, f"took {elapsed:.1f} s with a 1 s connect timeout"


def test_topics_create_default_timeout_is_seconds_not_half_a_minute(csp: Run) -> None:
    started = time.monotonic()
    result = csp("topics", "create", CSP_KAFKA_BOOTSTRAP=f"127.0.0.1:{_closed_port()}")
    assert result.returncode == 2
    assert time.monotonic() - started < 20  # it waited 30 s for metadata before
