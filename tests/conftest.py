"""Shared fixtures: one real Kafka broker + Redis server per test session, isolated per test.

Redis topologies: a test runs on the session's single Redis node unless it asks for
``redis_topology`` (``both_topologies`` parametrizes it over ``single`` and ``cluster``); the
cluster (3 masters with a replica each, :class:`~cryptostream.stack.redis_cluster.RedisCluster`)
is started once per session, on first use.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cryptostream.config import Settings
from cryptostream.redisconn import Client, make_client, stored_offsets
from cryptostream.stack.local import LocalStack
from cryptostream.stack.redis_cluster import RedisCluster
from cryptostream.stack.supervisor import StackError
from cryptostream.topics import create_topics, required_topics
from cryptostream_lab.backends import BackendError, ContainerStack, start_stack
from tests.servers import SERVER_FIXTURES, server_fixture

TOPOLOGIES = ("single", "cluster")
both_topologies = pytest.mark.parametrize("redis_topology", TOPOLOGIES, indirect=True)
CLUSTER_NODE_TIMEOUT_MS = 1000  # a dead master's replica takes over within ~2-3 s


@server_fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[LocalStack | ContainerStack]:
    """The real broker and Redis, started once: local child processes (Kafka's jars fetched by
    Maven on first use) or containers, as CSP_TEST_BACKEND chooses (auto: containers only when a
    Docker engine answers). Tests that restart a server use ``local_stack`` instead."""
    try:
        started = start_stack(
            Settings(), tmp_path_factory.mktemp("stack"), report=_reporter(pytestconfig)
        )
    except BackendError as exc:
        pytest.exit(str(exc), returncode=4)
    try:
        yield started
    finally:
        started.stop()


@server_fixture(scope="session")
def local_stack(
    stack: LocalStack | ContainerStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """A stack whose servers can be restarted (``.kafka.restart()``): the session stack when it
    is local, otherwise a local one of its own."""
    if isinstance(stack, LocalStack):
        yield stack
        return
    local = LocalStack(Settings(), tmp_path_factory.mktemp("local-stack")).start()
    try:
        yield local
    finally:
        local.stop()


def _reporter(config: pytest.Config) -> Callable[[str], None]:
    """Say which backend runs the stack on the terminal, past output capturing."""

    def report(reason: str) -> None:
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if terminal is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            terminal.write_line(f"\n[stack] {reason}")

    return report


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 masters with a replica each, for the whole session."""
    try:
        cluster = RedisCluster(
            tmp_path_factory.mktemp("redis-cluster"), node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS
        ).start()
    except StackError as exc:  # no redis-server binary (container backend): cannot form one
        pytest.skip(f"no local Redis Cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_topology(request: pytest.FixtureRequest) -> str:
    """``single`` unless a test parametrizes it (``both_topologies``)."""
    return str(getattr(request, "param", "single"))


@dataclass
class Env:
    """One test's slice of the shared stack: its own topics, group and an empty Redis."""

    settings: Settings
    env: dict[str, str]
    redis: Client  # decode_responses=True
    workdir: Path
    cluster: RedisCluster | None = None  # the cluster, on that topology

    @property
    def partitions(self) -> int:
        return self.settings.partitions

    def client(self, **options: Any) -> Client:
        """Another client of this test's Redis (bytes replies unless told otherwise)."""
        return make_client(self.settings.redis_url, self.settings.redis_cluster, **options)

    def applied(self, topic: str | None = None) -> dict[int, int]:
        """Partition -> last applied offset stored in Redis (the processor's fences)."""
        return stored_offsets(
            self.redis, topic or self.settings.topic, range(self.partitions), self.partitions
        )


@pytest.fixture
def isolated(
    stack: LocalStack | ContainerStack,
    tmp_path: Path,
    redis_topology: str,
    request: pytest.FixtureRequest,
) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:8]
    cluster: RedisCluster | None = None
    redis_url = stack.redis_url
    if redis_topology == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        redis_url = cluster.url
    env = {
        "CSP_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "CSP_REDIS_URL": redis_url,
        "CSP_REDIS_CLUSTER": "true" if cluster is not None else "false",
        "CSP_TOPIC": f"raw.trades.{suffix}",
        "CSP_DLQ_TOPIC": f"raw.trades.dlq.{suffix}",
        "CSP_GAP_TOPIC": f"raw.trades.gaps.{suffix}",
        "CSP_DEPTH_TOPIC": f"raw.depth.{suffix}",
        "CSP_GROUP_ID": f"stream-processor-{suffix}",
        "CSP_RUN_DIR": str(tmp_path),
    }
    settings = Settings(
        kafka_bootstrap=env["CSP_KAFKA_BOOTSTRAP"],
        redis_url=env["CSP_REDIS_URL"],
        redis_cluster=cluster is not None,
        topic=env["CSP_TOPIC"],
        dlq_topic=env["CSP_DLQ_TOPIC"],
        gap_topic=env["CSP_GAP_TOPIC"],
        depth_topic=env["CSP_DEPTH_TOPIC"],
        group_id=env["CSP_GROUP_ID"],
        run_dir=tmp_path,
    )
    create_topics(settings.kafka, required_topics(settings))
    client = make_client(redis_url, cluster is not None, decode_responses=True)
    client.flushall()  # on a cluster: every master
    try:
        yield Env(settings, env, client, tmp_path, cluster)
    finally:
        client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that gets a real Kafka or Redis (a fixture declared with ``server_fixture``:
    ``stack``, ``local_stack``, the query tests' ``redis_server``, directly or through another
    fixture) is an integration test whatever its module says, so that ``-m "not integration"``
    runs exactly the tests that need no server."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
