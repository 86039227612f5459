"""A 3-node Kafka cluster + Redis (LocalStack with ``kafka_brokers=3``) for the cluster tests,
with topics at replication factor 3 and ``min.insync.replicas=2``; stopped on every exit path."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from cryptostream.config import Settings
from cryptostream.stack.cluster import KafkaCluster
from cryptostream.stack.local import LocalStack
from cryptostream.topics import create_topics, required_topics
from tests.conftest import Env

CLUSTER_HEAP = "256m"  # per node: three JVMs on a shared 2-core machine


@dataclass
class ClusterEnv:
    stack: LocalStack
    cluster: KafkaCluster
    env: Env


@contextmanager
def cluster_env(workdir: Path, brokers: int = 3) -> Iterator[ClusterEnv]:
    suffix = uuid.uuid4().hex[:8]
    base = Settings(kafka_brokers=brokers, kafka_heap=CLUSTER_HEAP, run_dir=workdir)
    stack = LocalStack(base, workdir / "stack")
    try:
        stack.start()
        assert stack.cluster is not None
        rf, min_isr = stack.cluster.replication
        env = {
            "CSP_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "CSP_REDIS_URL": stack.redis_url,
            "CSP_TOPIC": f"raw.trades.{suffix}",
            "CSP_DLQ_TOPIC": f"raw.trades.dlq.{suffix}",
            "CSP_GAP_TOPIC": f"raw.trades.gaps.{suffix}",
            "CSP_GROUP_ID": f"stream-processor-{suffix}",
            "CSP_RUN_DIR": str(workdir),
            "CSP_REPLICATION_FACTOR": str(rf),
            "CSP_MIN_INSYNC_REPLICAS": str(min_isr),
        }
        settings = base.model_copy(
            update={
                "kafka_bootstrap": stack.kafka_bootstrap,
                "redis_url": stack.redis_url,
                "topic": env["CSP_TOPIC"],
                "dlq_topic": env["CSP_DLQ_TOPIC"],
                "gap_topic": env["CSP_GAP_TOPIC"],
                "group_id": env["CSP_GROUP_ID"],
                "replication_factor": rf,
                "min_insync_replicas": min_isr,
            }
        )
        create_topics(settings.kafka, required_topics(settings))
        client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        try:
            yield ClusterEnv(stack, stack.cluster, Env(settings, env, client, workdir))
        finally:
            client.close()
    finally:
        stack.stop()
