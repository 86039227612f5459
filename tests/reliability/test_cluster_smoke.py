"""The replicated local stack (issue 20): three KRaft nodes come up, topics are created at
replication factor 3 with ``min.insync.replicas=2``, a record written with ``acks=all`` is read
back, and every JVM is gone after stop. Fast enough (~30 s) for the regular test run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from cryptostream.kafka_clients import producer_config
from tests.reliability.cluster_stack import cluster_env

pytestmark = pytest.mark.integration  # real brokers and Redis, without the session stack


def test_three_broker_cluster_round_trip(tmp_path: Path) -> None:
    with cluster_env(tmp_path) as ce:
        cluster, settings = ce.cluster, ce.env.settings
        assert cluster.live_brokers() == {1, 2, 3}
        assert len(settings.kafka_bootstrap.split(",")) == 3
        for topic, count in ((settings.topic, settings.partitions), (settings.dlq_topic, 1)):
            states = cluster.partitions(topic)
            assert len(states) == count
            for state in states.values():
                assert sorted(state.replicas) == [1, 2, 3], (topic, state)
                assert state.isr == (1, 2, 3), (topic, state)
        admin = AdminClient(settings.kafka.librdkafka())
        resource = ConfigResource(ResourceType.TOPIC, settings.topic)
        configs = admin.describe_configs([resource])[resource].result(timeout=10)
        assert configs["min.insync.replicas"].value == "2"
        assert cluster.active_controller() in {1, 2, 3}

        producer = Producer(producer_config(settings))
        producer.produce(settings.topic, b"hello", b"BTCUSDT")
        assert producer.flush(30) == 0
        consumer = Consumer(
            settings.kafka.librdkafka(
                {
                    "group.id": settings.group_id,
                    "auto.offset.reset": "earliest",
                }
            )
        )
        consumer.subscribe([settings.topic])
        try:
            deadline = time.monotonic() + 30
            got = None
            while got is None and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and msg.error() is None:
                    got = msg.value()
            assert got == b"hello"
        finally:
            consumer.close()
        processes = [n.process for n in cluster.nodes]
    assert all(p is not None and not p.alive() for p in processes)


@pytest.mark.reliability
@pytest.mark.slow  # the regular run keeps one cluster test; this one runs in nox -s reliability
def test_cluster_not_ready_in_time_stops_every_jvm(tmp_path: Path) -> None:
    """The readiness deadline fails clearly (with every node's log tail) and leaves no JVM."""
    from cryptostream.config import Settings
    from cryptostream.stack.cluster import KafkaCluster
    from cryptostream.stack.kafka import resolve_kafka_jars
    from cryptostream.stack.supervisor import StackError

    settings = Settings()
    lib = resolve_kafka_jars(settings.cache_dir, settings.kafka_version)
    cluster = KafkaCluster(tmp_path / "kafka", lib, size=3, heap="256m")
    with pytest.raises(StackError, match="not ready within 1s") as failure:
        cluster.start(timeout=1.0)
    assert "node-3/logs/stdout.log" in str(failure.value)
    assert len(cluster.nodes) == 3
    assert all(n.process is not None and not n.process.alive() for n in cluster.nodes)
