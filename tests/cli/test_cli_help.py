"""The CLI explains itself: version, effective configuration, variables per command, help."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import orjson
import psutil
import pytest

from cryptostream.config import Settings, describe_settings
from marketsim.cli import build_parser
from tests.cli.conftest import CSP, ROOT, Run


def test_version(csp: Run) -> None:
    result = csp("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"csp {version('crypto-streaming-platform')}"


def test_config_prints_every_setting_with_secrets_masked(csp: Run) -> None:
    result = csp(
        "config",
        CSP_PARTITIONS="4",
        CSP_KAFKA_SASL_PASSWORD="hunter2",
        CSP_REDIS_URL="redis://:s3cret@db.example:6380/1",
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(lines) == {f"CSP_{name.upper()}" for name in Settings.model_fields}
    assert lines["CSP_PARTITIONS"] == "4  # environment"
    assert lines["CSP_BATCH_MAX"] == "5000  # default"
    assert lines["CSP_REDIS_URL"] == "redis://:***@db.example:6380/1  # environment"
    assert lines["CSP_KAFKA_SASL_PASSWORD"] == "***  # environment"
    assert "hunter2" not in result.stdout and "s3cret" not in result.stdout


def test_config_of_one_command(csp: Run) -> None:
    result = csp("config", "--service", "query")
    assert result.returncode == 0, result.stderr
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert names == {name for name, _, _ in describe_settings("query")}
    assert "CSP_QUERY_PORT" in names and "CSP_BATCH_MAX" not in names
    assert "CSP_PARTITIONS" in names  # the key layout: a symbol's keys carry its partition


@pytest.mark.parametrize(
    ("command", "absent"),
    [
        (["ingest"], "CSP_QUERY_PORT"),
        (["processor"], "CSP_SYMBOLS"),
        (["query"], "CSP_BATCH_MAX"),
        (["topics", "create"], "CSP_REDIS_URL"),
    ],
)
def test_service_help_lists_the_variables_it_reads(
    csp: Run, command: list[str], absent: str
) -> None:
    result = csp(*command, "--help")
    assert result.returncode == 0
    service = command[0]
    rows = describe_settings(service)
    assert rows
    for name, default, meaning in rows:
        line = next((x for x in result.stdout.splitlines() if f" {name} " in x + " "), None)
        assert line is not None, f"{name} missing from `csp {' '.join(command)} --help`"
        if default:
            assert f"{name} = {default}" in line
        assert meaning.split()[0] in line
    assert absent not in result.stdout


def test_experiment_help_lists_the_experiments(csp: Run) -> None:
    result = csp("experiment", "--help")
    assert result.returncode == 0
    from cryptostream_lab.harness.model import shipped_experiments

    names = sorted(shipped_experiments())
    assert names
    for name in names:
        assert f"• {name}:" in result.stdout, name


def test_simulator_help_names_itself_and_shows_typed_defaults(csp: Run) -> None:
    result = csp("simulator", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: csp simulator ")
    assert "(default: BTCUSDT,ETHUSDT," in result.stdout
    assert "('BTCUSDT'" not in result.stdout
    assert "(default: None)" not in result.stdout  # the wall-clock default is said in words
    assert "the wall clock" in " ".join(result.stdout.split())


def test_every_simulator_option_has_a_description() -> None:
    undocumented = [a.option_strings[0] for a in build_parser()._actions if not a.help]
    assert undocumented == []


@pytest.mark.integration
@pytest.mark.parametrize("redis_cluster", [False, True], ids=["redis", "redis-cluster"])
def test_stack_status_and_down(csp: Run, tmp_path: Path, redis_cluster: bool) -> None:
    """A real `csp stack up`: status sees it and its servers, down stops it, status then not.
    With CSP_REDIS_CLUSTER=true its Redis is a cluster of 6 nodes, all gone after down."""
    assert csp("stack", "status").returncode == 1
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CSP_")}
    env["CSP_RUN_DIR"] = str(tmp_path)
    if redis_cluster:
        env["CSP_REDIS_CLUSTER"] = "true"
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [CSP, "stack", "up", "--no-create-topics"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "stack.json").exists():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        status = csp("stack", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"stack up (pid {up.pid}): Kafka 127.0.0.1:" in status.stdout
        assert status.stdout.count(" answers") == 2
        nodes = []
        if redis_cluster:  # the other commands learn it from the stack file
            doc = orjson.loads((tmp_path / "stack.json").read_bytes())
            assert doc["redis_cluster"] is True
            assert len(set(doc["redis_cluster_nodes"])) == 6, doc  # every node is a seed
            config = csp("config", CSP_RUN_DIR=str(tmp_path))
            assert "CSP_REDIS_CLUSTER=true  # csp stack up" in config.stdout, config.stdout
            assert "CSP_REDIS_CLUSTER_NODES=127.0.0.1:" in config.stdout, config.stdout
            nodes = [
                p
                for p in psutil.Process(up.pid).children(recursive=True)
                if p.name() == "redis-server"
            ]
            assert len(nodes) == 6
        down = csp("stack", "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert down.stdout.strip() == f"stack stopped (pid {up.pid})"
        assert up.wait(timeout=5) == 0
        assert csp("stack", "status").returncode == 1
        assert not [p for p in nodes if p.is_running() and p.status() != "zombie"]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()
