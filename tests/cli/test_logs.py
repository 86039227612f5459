"""Log format: ECS JSON when stdout is not a terminal, readable lines on one, or as chosen;
a start-up error is the last line."""

from __future__ import annotations

import os
import pty
import socket
import subprocess

import orjson
import pytest

from tests.cli.conftest import CSP, ROOT, Run


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unreachable_kafka() -> dict[str, str]:
    return {
        "CSP_KAFKA_BOOTSTRAP": f"127.0.0.1:{_closed_port()}",
        "CSP_KAFKA_CONNECT_TIMEOUT_S": "1",
    }


def test_json_lines_when_stdout_is_not_a_terminal(csp: Run) -> None:
    result = csp("processor", **_unreachable_kafka())
    assert result.returncode == 2
    doc = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert doc["log.level"] == "error" and doc["service"]["name"] == "processor"
    assert doc["message"].startswith("cannot reach Kafka at 127.0.0.1:")
    assert "ecs.version" in doc


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_format_chosen_explicitly(csp: Run, log_format: str) -> None:
    result = csp("processor", CSP_LOG_FORMAT=log_format, **_unreachable_kafka())
    last = result.stdout.strip().splitlines()[-1]
    if log_format == "json":
        assert orjson.loads(last)["log.level"] == "error"
    else:
        assert " ERROR   processor: cannot reach Kafka at 127.0.0.1:" in last
        assert "\x1b[" not in last  # no colours in a pipe or file


def test_readable_lines_on_a_terminal(tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CSP_")}
    env.update(_unreachable_kafka(), CSP_RUN_DIR=str(tmp_path))
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [CSP, "processor"],
            env=env,
            cwd=ROOT,
            stdout=follower,
            stderr=follower,
            stdin=subprocess.DEVNULL,
        )
        os.close(follower)
        follower = -1
        assert proc.wait(timeout=60) == 2
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = output.decode()
    assert "processor: cannot reach Kafka at 127.0.0.1:" in text
    assert '"log.level"' not in text  # not JSON


def test_query_port_in_use_is_the_last_line(csp: Run) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = csp("query", CSP_QUERY_PORT=str(port), CSP_LOG_FORMAT="text")
    assert result.returncode == 2
    last = result.stdout.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{port}" in last and "address already in use" in last
