"""confluent-kafka client construction in one place (config shared by every service)."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from cryptostream.config import Settings


def security_config(settings: Settings) -> dict[str, Any]:
    """librdkafka's security properties from the settings (empty for PLAINTEXT): the same for
    producers, consumers and admin clients."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_file is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
    return config


def admin_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "logger": logging.getLogger("cryptostream.kafka.admin"),
        **security_config(settings),
    }
    config.update(overrides)
    return config


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    return AdminClient(admin_config(settings, **overrides))


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,  # implies acks=all and safe retries without duplicates
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 262144,
        "compression.type": "lz4",
        # Java-compatible key hashing, so every client language agrees on a symbol's partition.
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 200000,
        "logger": logging.getLogger("cryptostream.kafka.producer"),
        **security_config(settings),
    }
    config.update(overrides)
    return config


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    return Producer(producer_config(settings, **overrides))


def make_consumer(settings: Settings, **overrides: Any) -> Consumer:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
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
        **security_config(settings),
    }
    config.update(overrides)
    return Consumer(config)
