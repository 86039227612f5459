"""The local stack: Kafka + Redis as supervised children, with topics created.

``CSP_KAFKA_BROKERS=3`` makes Kafka a replicated cluster of three KRaft nodes
(:class:`~cryptostream.stack.cluster.KafkaCluster`); ``kafka`` is then its first node and
``cluster`` all of them. ``CSP_REDIS_CLUSTER=true`` makes Redis a Redis Cluster of 3 masters
with a replica each (:class:`~cryptostream.stack.redis_cluster.RedisCluster`, in
``redis_cluster``; ``redis_url`` is then its seed node's). :meth:`LocalStack.watched` and
:func:`first_exit` let ``csp stack up`` notice any of its processes exiting."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptostream.config import Settings
from cryptostream.kafka_connection import KafkaConnection
from cryptostream.stack.cluster import KafkaCluster
from cryptostream.stack.kafka import KafkaBroker, resolve_kafka_jars
from cryptostream.stack.redis_cluster import RedisCluster
from cryptostream.stack.redis_server import RedisServer, check_redis_server
from cryptostream.stack.supervisor import ManagedProcess


class Watchable(Protocol):
    """What :func:`first_exit` needs of a process (a ``ManagedProcess``, or a fake in tests)."""

    def alive(self) -> bool: ...
    def returncode(self) -> int | None: ...
    def log_tail(self, lines: int = 25) -> str: ...


def first_exit(watched: Iterable[tuple[str, Watchable | None]]) -> str | None:
    """The report of the first watched process that has exited (its label, exit code and log
    tail), or None while all run. Each is checked, not only the first node: a cluster that
    lost one broker keeps answering, so nothing else would tell."""
    for label, process in watched:
        if process is not None and not process.alive():
            return (
                f"{label} exited unexpectedly (exit code {process.returncode()}); last lines of "
                f"its log:\n{process.log_tail()}"
            )
    return None


@dataclass
class LocalStack:
    settings: Settings
    workdir: Path
    kafka_port: int = 0
    redis_port: int = 0
    kafka: KafkaBroker | None = None
    cluster: KafkaCluster | None = None
    redis: RedisServer | None = None
    redis_cluster: RedisCluster | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def start(self) -> LocalStack:
        check_redis_server()  # fail before the slow parts if a prerequisite is missing
        t0 = time.monotonic()
        lib = resolve_kafka_jars(self.settings.cache_dir, self.settings.kafka_version)
        self.timings["resolve_s"] = time.monotonic() - t0
        try:
            t1 = time.monotonic()
            self.workdir = self.workdir.resolve()
            if self.settings.redis_cluster:
                self.redis_cluster = RedisCluster(
                    self.workdir / "redis-cluster",
                    node_timeout_ms=self.settings.redis_cluster_node_timeout_ms,
                ).start()
                self.redis = self.redis_cluster.nodes[0]
            else:
                self.redis = RedisServer(self.workdir / "redis", port=self.redis_port).start()
            self.timings["redis_s"] = time.monotonic() - t1
            t2 = time.monotonic()
            if self.settings.kafka_brokers > 1:
                self.cluster = KafkaCluster(
                    self.workdir / "kafka",
                    lib,
                    size=self.settings.kafka_brokers,
                    heap=self.settings.kafka_heap,
                    first_port=self.kafka_port,
                ).start(timeout=self.settings.start_timeout_s)
                self.kafka = self.cluster.nodes[0]
            else:
                self.kafka = KafkaBroker(
                    self.workdir / "kafka",
                    lib,
                    heap=self.settings.kafka_heap,
                    port=self.kafka_port,
                ).start(timeout=self.settings.start_timeout_s)
            self.timings["kafka_s"] = time.monotonic() - t2
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def kafka_bootstrap(self) -> str:
        if self.cluster is not None:
            return self.cluster.bootstrap
        assert self.kafka is not None
        return self.kafka.bootstrap

    @property
    def kafka_connection(self) -> KafkaConnection:
        """The local brokers run without authentication."""
        return KafkaConnection(self.kafka_bootstrap)

    @property
    def redis_url(self) -> str:
        if self.redis_cluster is not None:
            return self.redis_cluster.url
        assert self.redis is not None
        return self.redis.url

    def watched(self) -> list[tuple[str, ManagedProcess | None]]:
        """Every process of the stack with a label naming it: each Kafka node (of a cluster:
        its node id and address) and each Redis node."""
        out: list[tuple[str, ManagedProcess | None]] = []
        if self.cluster is not None:
            out += [
                (f"Kafka node {n.node_id} ({n.bootstrap})", n.process) for n in self.cluster.nodes
            ]
        elif self.kafka is not None:
            out.append((f"Kafka ({self.kafka.bootstrap})", self.kafka.process))
        if self.redis_cluster is not None:
            out += [
                (f"Redis Cluster node 127.0.0.1:{n.port}", n.process)
                for n in self.redis_cluster.nodes
            ]
        elif self.redis is not None:
            out.append((f"Redis (127.0.0.1:{self.redis.port})", self.redis.process))
        return out

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        elif self.kafka is not None:
            self.kafka.stop()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
        elif self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
