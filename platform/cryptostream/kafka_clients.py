"""confluent-kafka client construction in one place: each client's own properties on top of
the one connection value (``Settings.kafka``, see :mod:`cryptostream.kafka_connection`)."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from cryptostream.config import Settings
from cryptostream.kafka_connection import ClientConfig


def admin_config(settings: Settings, **overrides: Any) -> ClientConfig:
    return settings.kafka.librdkafka(
        {"logger": logging.getLogger("cryptostream.kafka.admin"), **overrides}
    )


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    return AdminClient(admin_config(settings, **overrides))


def producer_config(settings: Settings, **overrides: Any) -> ClientConfig:
    return settings.kafka.librdkafka(
        {
            "enable.idempotence": True,  # implies acks=all and safe retries without duplicates
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 262144,
            "compression.type": "lz4",
            # Java-compatible key hashing, so every client language agrees on a symbol's
            # partition.
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 200000,
            "logger": logging.getLogger("cryptostream.kafka.producer"),
            **overrides,
        }
    )


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    return Producer(producer_config(settings, **overrides))


def consumer_config(settings: Settings, **overrides: Any) -> ClientConfig:
    return settings.kafka.librdkafka(
        {
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": 50,
            # Larger fetches and a deeper prefetch queue than librdkafka's defaults, so that one
            # processor's consume loop is never waiting on the broker while it drains a backlog.
            "max.partition.fetch.bytes": 8 << 20,
            "queued.min.messages": 200_000,
            "queued.max.messages.kbytes": 256 << 10,
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
            "logger": logging.getLogger("cryptostream.kafka.consumer"),
            **overrides,
        }
    )


def make_consumer(settings: Settings, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, **overrides))
