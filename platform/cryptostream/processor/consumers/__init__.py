"""Kafka group consumers for the processor: one interface (:mod:`.base`), two backends."""

from __future__ import annotations

from cryptostream.config import Settings
from cryptostream.processor.consumers.base import (
    BEGINNING,
    ConsumerError,
    GroupConsumer,
    Listener,
)

__all__ = ["BEGINNING", "ConsumerError", "GroupConsumer", "Listener", "make_group_consumer"]


def make_group_consumer(settings: Settings) -> GroupConsumer:
    """The backend named by ``CSP_PROCESSOR_KAFKA_CLIENT`` (imported only when chosen)."""
    if settings.processor_kafka_client == "aiokafka":
        from cryptostream.processor.consumers.aiokafka_backend import AiokafkaConsumer

        return AiokafkaConsumer(settings)
    from cryptostream.processor.consumers.confluent_backend import ConfluentConsumer

    return ConfluentConsumer(settings)
