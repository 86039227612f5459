"""CSP_REDIS_CLUSTER_NODES: more seed nodes of a Redis Cluster than CSP_REDIS_URL's, so that a
process started while that one node is down still reaches the cluster. The settings are
validated with a clear message; the clients (the processor's and the query API's, sync and
asyncio, and the query API's pipelined cluster reader) start from any seed that answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from redis.exceptions import RedisClusterException

from cryptostream.config import ConfigError, Settings, load_settings
from cryptostream.query.store import RedisStore
from cryptostream.redisconn import make_client, node_url
from cryptostream.stack.redis_cluster import RedisCluster
from cryptostream.stack.supervisor import free_port


def test_seeds_are_parsed_and_deduplicated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSP_REDIS_CLUSTER", "true")
    monkeypatch.setenv("CSP_REDIS_URL", "redis://:pw@10.0.0.1:7000")
    monkeypatch.setenv("CSP_REDIS_CLUSTER_NODES", "10.0.0.2:7001, 10.0.0.1:7000,node-3:7002")
    settings = load_settings("processor")
    assert settings.redis_cluster_nodes == ["10.0.0.2:7001", "10.0.0.1:7000", "node-3:7002"]
    assert settings.redis_seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("node-3", 7002)]
    monkeypatch.delenv("CSP_REDIS_CLUSTER_NODES")
    assert load_settings("processor").redis_seeds == [("10.0.0.1", 7000)]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CSP_REDIS_CLUSTER_NODES": "10.0.0.2:7001"}, "it needs CSP_REDIS_CLUSTER=true"),
        (
            {"CSP_REDIS_CLUSTER": "true", "CSP_REDIS_CLUSTER_NODES": "redis://10.0.0.2:7001"},
            "expected host:port[,host:port...], got 'redis://10.0.0.2:7001'",
        ),
        (
            {"CSP_REDIS_CLUSTER": "true", "CSP_REDIS_CLUSTER_NODES": "10.0.0.2"},
            "got '10.0.0.2'",
        ),
        (
            {"CSP_REDIS_CLUSTER": "true", "CSP_REDIS_CLUSTER_NODES": "10.0.0.2:99999"},
            "got '10.0.0.2:99999'",
        ),
    ],
)
def test_invalid_seeds_are_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings("query")
    assert message in str(info.value)
    assert "CSP_REDIS_CLUSTER_NODES" in str(info.value)


def test_a_stacks_seeds_reach_the_settings_unless_redis_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`csp stack up` with a Redis Cluster publishes every node; a process that names another
    Redis itself (CSP_REDIS_URL) does not get them."""
    import os

    from cryptostream.stackfile import write_stack_file

    monkeypatch.setenv("CSP_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("CSP_REDIS_URL", raising=False)
    monkeypatch.delenv("CSP_REDIS_CLUSTER", raising=False)
    nodes = ["127.0.0.1:7001", "127.0.0.1:7002"]
    write_stack_file(
        tmp_path / "stack.json",
        kafka_bootstrap="127.0.0.1:9092",
        redis_url="redis://127.0.0.1:7001",
        redis_cluster=True,
        redis_cluster_nodes=nodes,
    )
    doc = orjson.loads((tmp_path / "stack.json").read_bytes())
    assert doc["pid"] == os.getpid() and doc["redis_cluster_nodes"] == nodes
    assert Settings().redis_seeds == [("127.0.0.1", 7001), ("127.0.0.1", 7002)]
    monkeypatch.setenv("CSP_REDIS_URL", "redis://10.0.0.9:6379/0")
    monkeypatch.setenv("CSP_REDIS_CLUSTER", "false")
    assert Settings().redis_cluster_nodes == []


def test_node_url_keeps_scheme_credentials_and_options() -> None:
    url = "rediss://user:p%40ss@a.example:7000/0?ssl_ca_certs=/ca.pem"
    assert node_url(url, "b.example", 7001) == (
        "rediss://user:p%40ss@b.example:7001/0?ssl_ca_certs=/ca.pem"
    )
    assert node_url("redis://a:1", "::1", 7002) == "redis://[::1]:7002"


@pytest.mark.integration
def test_clients_start_with_the_first_seed_down(redis_cluster: RedisCluster) -> None:
    """The first seed refuses connections (nothing listens there): with a live node among the
    seeds, every client starts; with the dead seed alone, it cannot (what the seeds fix)."""
    dead = f"redis://127.0.0.1:{free_port()}"
    live = [("127.0.0.1", redis_cluster.ports[1])]
    client = make_client(dead, True, seeds=live, socket_connect_timeout=1)
    try:
        assert client.ping()
        client.set("seeds:probe", b"1")
        assert client.get("seeds:probe") == b"1"
    finally:
        client.close()
    with pytest.raises(RedisClusterException, match="cannot be connected"):
        make_client(dead, True, socket_connect_timeout=1)

    async def query_side() -> None:
        store = RedisStore(dead, timeout=1.0, cluster=True, seeds=live)
        try:
            assert await store.client.get("seeds:probe") == b"1"
            await store.hot.refresh(force=True)  # the pipelined reader's slot map, too
            assert all(node is not None for node in store.hot.slots)  # type: ignore[union-attr]
        finally:
            await store.close()

    asyncio.run(query_side())


@pytest.mark.integration
def test_live_push_subscribes_on_the_next_seed(redis_cluster: RedisCluster) -> None:
    """Live push's one subscription: the first seed refuses, the hub moves on to the next."""
    from cryptostream.core.keys import PRICE_CHANNEL
    from cryptostream.query.metrics import QueryMetrics
    from cryptostream.query.push import PushHub

    port = free_port()
    live = redis_cluster.ports[2]
    seeds = [("127.0.0.1", port), ("127.0.0.1", live)]
    hub = PushHub(f"redis://127.0.0.1:{port}/0", QueryMetrics(), seeds=seeds)
    assert hub.urls == [f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{live}/0"]

    node = redis_cluster.client(live)

    def subscribers() -> int:
        return int(dict(node.pubsub_numsub(PRICE_CHANNEL)).get(PRICE_CHANNEL, 0))

    before = subscribers()

    async def subscribe() -> int:
        hub.start()
        try:
            await asyncio.wait_for(hub.subscribed.wait(), 10)
            return subscribers()
        finally:
            await hub.stop()

    try:
        assert asyncio.run(subscribe()) == before + 1  # the hub's subscription, on the live seed
    finally:
        node.close()
