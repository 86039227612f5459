"""Kafka's partitioner as the layout computes it (core/partitioner.py) against where the
producers' records really land: librdkafka's ``murmur2_random``, on real topics."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cryptostream.core.keys import home_partition
from cryptostream.core.partitioner import kafka_partition
from cryptostream.kafka_clients import producer_config
from cryptostream.topics import TopicSpec, create_topics
from tests.conftest import Env

pytestmark = pytest.mark.integration

KEYS = [f"S{i:03d}USDT" for i in range(300)] + ["BTCUSDT", "ETHUSDT", "btcusdt", "", "ÄBC"]


@pytest.mark.parametrize("partitions", [8, 5])
def test_records_land_in_the_computed_partition(isolated: Env, partitions: int) -> None:
    topic = f"{isolated.settings.topic}.p{partitions}"
    create_topics(isolated.settings.kafka, [TopicSpec(topic, partitions, 1)])
    producer = Producer(producer_config(isolated.settings))  # the services' partitioner
    for key in KEYS:
        producer.produce(topic, key.encode() or b"-", key.encode())
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": isolated.settings.kafka_bootstrap,
            "group.id": f"{topic}.reader",
            "enable.auto.commit": False,
        }
    )
    landed: dict[bytes, int] = {}
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        while len(landed) < len(KEYS):
            message = consumer.poll(10)
            assert message is not None, f"only {len(landed)} of {len(KEYS)} records read"
            assert message.error() is None, message.error()
            landed[message.key()] = message.partition()
    finally:
        consumer.close()
    assert {k: kafka_partition(k, partitions) for k in landed} == landed
    assert len(set(landed.values())) == partitions  # every partition got some
    for key in ("BTCUSDT", "ETHUSDT"):
        assert home_partition(key, partitions) == landed[key.encode()]
