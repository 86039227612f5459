"""`csp stack up` watches every process of its stack, and `csp stack status` asks each broker:
with a 3-node Kafka cluster, node 2 or 3 exiting must be noticed too (the cluster still
answers through the others, so nothing else would tell). Fake processes, no servers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from cryptostream import cli
from cryptostream.config import Settings
from cryptostream.stack.cluster import KafkaCluster
from cryptostream.stack.kafka import KafkaBroker
from cryptostream.stack.local import LocalStack, first_exit
from cryptostream.stack.redis_cluster import RedisCluster
from cryptostream.stack.redis_server import RedisServer


@dataclass
class FakeProcess:
    code: int | None = None  # None: running

    def alive(self) -> bool:
        return self.code is None

    def returncode(self) -> int | None:
        return self.code

    def log_tail(self, lines: int = 25) -> str:
        return "ERROR the disk is full"


def _cluster_stack(tmp_path: Path) -> LocalStack:
    nodes = [
        KafkaBroker(tmp_path / f"node-{i}", tmp_path, port=9000 + i, node_id=i) for i in (1, 2, 3)
    ]
    redis_nodes = [RedisServer(tmp_path / f"r{p}", port=p) for p in (7001, 7002)]
    stack = LocalStack(
        Settings(),
        tmp_path,
        cluster=KafkaCluster(tmp_path, tmp_path, nodes=nodes),
        kafka=nodes[0],
        redis_cluster=RedisCluster(tmp_path, nodes=redis_nodes),
    )
    for server in (*nodes, *redis_nodes):
        server.process = FakeProcess()  # type: ignore[assignment]
    return stack


def test_every_broker_and_redis_node_is_watched(tmp_path: Path) -> None:
    stack = _cluster_stack(tmp_path)
    labels = [label for label, _ in stack.watched()]
    assert labels == [
        "Kafka node 1 (127.0.0.1:9001)",
        "Kafka node 2 (127.0.0.1:9002)",
        "Kafka node 3 (127.0.0.1:9003)",
        "Redis Cluster node 127.0.0.1:7001",
        "Redis Cluster node 127.0.0.1:7002",
    ]
    assert first_exit(stack.watched()) is None
    assert stack.cluster is not None
    stack.cluster.nodes[2].process.code = 1  # type: ignore[union-attr]
    report = first_exit(stack.watched())
    assert report is not None
    assert report.startswith("Kafka node 3 (127.0.0.1:9003) exited unexpectedly (exit code 1)")
    assert report.endswith("last lines of its log:\nERROR the disk is full")


def test_a_single_broker_and_redis_are_watched(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", tmp_path, port=9092)
    redis = RedisServer(tmp_path / "redis", port=6379)
    stack = LocalStack(Settings(), tmp_path, kafka=broker, redis=redis)
    broker.process, redis.process = FakeProcess(), FakeProcess(-9)  # type: ignore[assignment]
    assert [label for label, _ in stack.watched()] == [
        "Kafka (127.0.0.1:9092)",
        "Redis (127.0.0.1:6379)",
    ]
    report = first_exit(stack.watched())
    assert report is not None and report.startswith("Redis (127.0.0.1:6379) exited")
    assert first_exit([("not started", None)]) is None


def test_status_asks_each_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster with one broker down: status names it and exits 1."""
    monkeypatch.setenv("CSP_RUN_DIR", str(tmp_path))
    brokers = "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003"
    doc = {"pid": os.getpid(), "kafka_bootstrap": brokers, "redis_url": "redis://127.0.0.1:7001"}
    (tmp_path / "stack.json").write_bytes(orjson.dumps(doc))
    asked: list[str] = []

    def answers(address: str, settings: Settings) -> bool:
        asked.append(address)
        return address != "127.0.0.1:9002"

    monkeypatch.setattr(cli, "_kafka_answers", answers)
    monkeypatch.setattr(cli, "_redis_answers", lambda url: True)
    result = CliRunner().invoke(cli.app, ["stack", "status"])
    assert asked == brokers.split(",")
    assert result.exit_code == 1, result.output
    assert (
        "Kafka 127.0.0.1:9001 answers, 127.0.0.1:9002 DOES NOT ANSWER, 127.0.0.1:9003 answers"
        in result.output
    )
    monkeypatch.setattr(cli, "_kafka_answers", lambda address, settings: True)
    assert CliRunner().invoke(cli.app, ["stack", "status"]).exit_code == 0
