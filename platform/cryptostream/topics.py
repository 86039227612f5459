"""Explicit topic creation and the start-up check every Kafka-using service makes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cryptostream.config import Settings
from cryptostream.kafka_connection import KafkaConnection


class TopicError(RuntimeError):
    """A topic is missing or has the wrong shape; the message says how to fix it."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: tuple[tuple[str, str], ...] = ()  # topic configs set at creation


def required_topics(settings: Settings) -> list[TopicSpec]:
    config: tuple[tuple[str, str], ...] = ()
    if settings.min_insync_replicas:
        config = (("min.insync.replicas", str(settings.min_insync_replicas)),)
    rf = settings.replication_factor
    return [
        TopicSpec(settings.topic, settings.partitions, rf, config),
        TopicSpec(settings.dlq_topic, 1, rf, config),
        TopicSpec(settings.gap_topic, 1, rf, config),
        # order-book diffs and snapshots, key = symbol; created even while no symbol has depth
        # on, so turning it on (CSP_DEPTH_SYMBOLS) needs no new `csp topics create`
        TopicSpec(settings.depth_topic, settings.partitions, rf, config),
    ]


def _admin(kafka: KafkaConnection) -> AdminClient:
    quiet = logging.getLogger("cryptostream.topics.client")
    quiet.setLevel(logging.CRITICAL)
    return AdminClient(kafka.librdkafka({"logger": quiet}))


def _partition_counts(admin: AdminClient, timeout: float, bootstrap: str) -> dict[str, int]:
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(unreachable(bootstrap, timeout, exc)) from None
    return {name: len(t.partitions) for name, t in meta.topics.items() if t.error is None}


def unreachable(bootstrap: str, timeout: float, exc: BaseException) -> str:
    """What to say when no broker answered: the address tried, and how to get one."""
    reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
    return (
        f"cannot reach Kafka at {bootstrap} (CSP_KAFKA_BOOTSTRAP) within {timeout:g} s "
        f"(CSP_KAFKA_CONNECT_TIMEOUT_S): {reason}; is a broker running there? "
        "`csp stack up` starts a local one"
    )


def create_topics(
    kafka: KafkaConnection,
    specs: list[TopicSpec],
    timeout: float = 30.0,
    *,
    connect_timeout: float = 5.0,
) -> list[str]:
    """Create what is missing; idempotent. Returns one human-readable line per topic.

    ``kafka`` is the whole connection (``settings.kafka``), security included, so no caller can
    forget the credentials. ``connect_timeout`` bounds the first metadata request, so an
    unreachable broker fails fast; ``timeout`` bounds the creation itself."""
    bootstrap = kafka.bootstrap
    admin = _admin(kafka)
    existing = _partition_counts(admin, connect_timeout, bootstrap)
    report: list[str] = []
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config))
                for s in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicError(f"creating topic {name!r} failed: {exc}") from None
        # Created topics show up in metadata a moment after the create call returns.
        deadline = time.monotonic() + timeout
        existing = _partition_counts(admin, timeout, bootstrap)
        while any(s.name not in existing for s in specs) and time.monotonic() < deadline:
            time.sleep(0.1)
            existing = _partition_counts(admin, timeout, bootstrap)
    for spec in specs:
        have = existing.get(spec.name)
        if have is None:
            raise TopicError(f"topic {spec.name!r} still does not exist after creating it")
        if have != spec.partitions:
            raise TopicError(
                f"topic {spec.name!r} exists with {have} partitions, but {spec.partitions} are "
                "configured; Kafka cannot shrink a topic, so delete and recreate it, or set "
                f"CSP_PARTITIONS={have}"
            )
        created = "created" if spec in missing else "exists"
        report.append(f"{spec.name}: {created}, {have} partitions")
    return report


def require_topic(
    kafka: KafkaConnection, name: str, partitions: int | None, timeout: float = 5.0
) -> int:
    """Check at service start that a topic exists (with the configured partitions)."""
    bootstrap = kafka.bootstrap
    existing = _partition_counts(_admin(kafka), timeout, bootstrap)
    if name not in existing:
        raise TopicError(
            f"topic {name!r} does not exist on {bootstrap}; topics are created explicitly: "
            "run `csp topics create` (auto-creation is disabled on purpose)"
        )
    if partitions is not None and existing[name] != partitions:
        raise TopicError(
            f"topic {name!r} has {existing[name]} partitions but {partitions} are configured "
            "(CSP_PARTITIONS)"
        )
    return existing[name]
