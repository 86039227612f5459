"""CSP_TEST_BACKEND: local child processes or testcontainers, and the fallback without Docker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cryptostream.config import Settings
from cryptostream_lab.backends import (
    BackendError,
    EngineProbe,
    choose_backend,
    kafka_container_env,
    probe_docker_engine,
    start_stack,
)
from tests.containers.conftest import environment, load_compose

NO_ENGINE = EngineProbe(False, "no Docker engine answers: connection refused")
ENGINE = EngineProbe(True, "Docker engine 27.3.1 answers")


def _never() -> EngineProbe:
    raise AssertionError("CSP_TEST_BACKEND=local must not probe for Docker")


def test_auto_falls_back_to_local_with_a_clear_message() -> None:
    choice = choose_backend("auto", lambda: NO_ENGINE)
    assert choice.backend == "local"
    assert "no Docker engine answers" in choice.reason
    assert "falling back to local Kafka and Redis child processes" in choice.reason


def test_auto_uses_containers_when_an_engine_answers() -> None:
    assert choose_backend("auto", lambda: ENGINE).backend == "docker"
    assert choose_backend("docker", lambda: ENGINE).backend == "docker"


def test_local_never_probes() -> None:
    assert choose_backend("local", _never).backend == "local"


def test_docker_requested_without_an_engine_fails_clearly() -> None:
    with pytest.raises(BackendError, match=r"CSP_TEST_BACKEND=docker, but no Docker engine"):
        choose_backend("docker", lambda: NO_ENGINE)


def test_the_setting_accepts_only_known_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.model_fields["test_backend"].default == "auto"
    monkeypatch.setenv("CSP_TEST_BACKEND", "podman")
    with pytest.raises(ValueError, match="test_backend"):
        Settings()


def test_the_real_probe_here_finds_no_engine() -> None:
    """This machine has the docker client but no engine: the probe says so, quickly."""
    probe = probe_docker_engine(timeout_s=2)
    if probe.available:  # pragma: no cover - only on machines with an engine
        pytest.skip(f"a Docker engine answers here ({probe.detail})")
    assert probe.detail.startswith("no Docker engine answers")


def test_start_stack_reports_the_fallback_and_starts_local(tmp_path: Path) -> None:
    """No engine, auto: the report says why, and the local stack is what starts."""
    reports: list[str] = []
    started: list[object] = []

    class FakeLocal:
        def __init__(self, settings: Settings, workdir: Path) -> None:
            started.append(workdir)

        def start(self) -> FakeLocal:
            return self

    import cryptostream_lab.backends as backends

    original = backends.LocalStack
    backends.LocalStack = FakeLocal  # type: ignore[misc,assignment]
    try:
        stack = start_stack(
            Settings(test_backend="auto"), tmp_path, probe=lambda: NO_ENGINE, report=reports.append
        )
    finally:
        backends.LocalStack = original  # type: ignore[misc]
    assert isinstance(stack, FakeLocal) and started == [tmp_path]
    assert len(reports) == 1 and "falling back" in reports[0]


def test_pytest_with_docker_requested_and_no_engine_stops_with_the_reason(tmp_path: Path) -> None:
    """The session fixture turns BackendError into a clean pytest exit naming the cause."""
    if probe_docker_engine().available:  # pragma: no cover
        pytest.skip("a Docker engine answers here")
    test = tmp_path / "test_needs_stack.py"
    test.write_text("def test_uses_stack(stack):\n    raise AssertionError('must not run')\n")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--rootdir={root}",
            "-c",
            str(root / "pyproject.toml"),
            "-p",
            "tests.conftest",
            str(test),
        ],
        env={**os.environ, "CSP_TEST_BACKEND": "docker"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 4, output
    assert "CSP_TEST_BACKEND=docker, but no Docker engine answers" in output


def test_container_kafka_matches_the_compose_broker() -> None:
    """testcontainers' broker is configured like compose's: KRaft, no auto-creation."""
    container = kafka_container_env(advertised="localhost:12345")
    compose = environment(load_compose()["services"]["kafka"])
    for key in (
        "KAFKA_PROCESS_ROLES",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
    ):
        assert container[key] == compose[key], key
    assert container["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://localhost:12345"
