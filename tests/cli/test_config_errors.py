"""A configuration mistake is one line naming the variable, its value and what is expected."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Run


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CSP_PARTITIONS", "abc", "an integer >= 1"),
        ("CSP_REDIS_URL", "nonsense", "redis://"),
        ("CSP_LOG_LEVEL", "verbose", "one of DEBUG, INFO"),
        ("CSP_KAFKA_BOOTSTRAP", "nonsense", "host:port"),
        ("CSP_BATCH_MAX", "0", ">= 1"),
        ("CSP_PROCESSOR_KAFKA_CLIENT", "kafka-python", "one of confluent, aiokafka"),
    ],
)
def test_processor_config_mistake_is_one_line_exit_2(
    csp: Run, variable: str, value: str, expected: str
) -> None:
    result = csp("processor", **{variable: value})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {variable}='{value}': ")
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CSP_SYMBOLS", "BTC-USDT", "2-20 ASCII letters or digits"),
        ("CSP_BINANCE_WS_URL", "nonsense", "ws:// or wss://"),
        ("CSP_STREAM_KIND", "trades", "one of trade, aggTrade"),
        ("CSP_INGEST_BACKFILL", "maybe", "true or false"),
    ],
)
def test_ingest_config_mistake_is_one_line_exit_2(
    csp: Run, variable: str, value: str, expected: str
) -> None:
    result = csp("ingest", **{variable: value})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"{variable}='{value}'" in result.stderr and expected in result.stderr


def test_every_mistake_gets_its_own_line(csp: Run) -> None:
    result = csp("topics", "create", CSP_PARTITIONS="abc", CSP_REPLICATION_FACTOR="-1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split("=")[0] for line in lines] == [
        "error: CSP_PARTITIONS",
        "error: CSP_REPLICATION_FACTOR",
    ]


def test_a_service_validates_only_what_it_reads(csp: Run) -> None:
    """The query API reads neither the batch size nor the symbols: only its Redis URL fails."""
    result = csp("query", CSP_BATCH_MAX="abc", CSP_SYMBOLS="BTC-USDT", CSP_REDIS_URL="nonsense")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: CSP_REDIS_URL='nonsense'"), lines


def test_redis_password_is_not_echoed(csp: Run) -> None:
    result = csp("processor", CSP_REDIS_URL="http://user:hunter2@host:6379/0")
    assert result.returncode == 2
    assert "hunter2" not in result.stderr and "CSP_REDIS_URL=" in result.stderr


def test_unknown_csp_variable_is_a_warning(csp: Run) -> None:
    result = csp("processor", CSP_KAFKA_BOOTSTRAPS="x", CSP_PARTITIONS="abc")
    assert result.returncode == 2
    first, second = result.stderr.strip().splitlines()
    assert first == (
        "warning: CSP_KAFKA_BOOTSTRAPS is not a setting (did you mean CSP_KAFKA_BOOTSTRAP?); "
        "ignored"
    )
    assert second.startswith("error: CSP_PARTITIONS=")
