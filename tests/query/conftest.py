"""Query API fixtures: one real ``redis-server`` and one real uvicorn server per session.

The service runs exactly as in production (uvicorn, uvloop, httptools) in a background thread
on a free port; tests talk to it over loopback HTTP/WebSocket and populate Redis the way the
processor does (:mod:`cryptostream.core.keys`). Redis is flushed before every test.

A test parametrized over ``redis_topology`` (``both_topologies``) gets, on ``cluster``, a
second service on the session's Redis Cluster (``CSP_REDIS_CLUSTER=true``) and a cluster
client as ``r``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn

from cryptostream.config import Settings
from cryptostream.core.keys import (
    PRICE_CHANNEL,
    candle_member,
    candles_1m_key,
    home_partition,
    price_key,
    stats_key,
    symbols_key,
)
from cryptostream.core.views import Candle
from cryptostream.query.app import QueryApp
from cryptostream.query.server import uvicorn_config
from cryptostream.redisconn import Client, make_client
from cryptostream.stack.redis_cluster import RedisCluster
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import free_port
from tests.servers import server_fixture

N = Settings().partitions  # the layout's partition count of the services under test


@server_fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("query-redis")).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RunningService:
    url: str
    ws_url: str
    app: QueryApp
    server: uvicorn.Server
    thread: threading.Thread


def start_service(settings: Settings) -> RunningService:
    config = uvicorn_config(settings, workers=1)
    app = config.app
    assert isinstance(app, QueryApp)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="query-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("query service did not start")
        time.sleep(0.02)
    base = f"{settings.query_host}:{settings.query_port}"
    return RunningService(f"http://{base}", f"ws://{base}", app, server, thread)


def stop_service(service: RunningService) -> None:
    service.server.should_exit = True
    service.thread.join(timeout=15)


@pytest.fixture(scope="session")
def service(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    settings = Settings(
        redis_url=redis_server.url,
        query_host="127.0.0.1",
        query_port=free_port(),
        run_dir=tmp_path_factory.mktemp("query-run"),
    )
    running = start_service(settings)
    try:
        yield running
    finally:
        stop_service(running)


@pytest.fixture(scope="session")
def cluster_service(
    redis_cluster: RedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """The query service on the session's Redis Cluster."""
    settings = Settings(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        query_host="127.0.0.1",
        query_port=free_port(),
        run_dir=tmp_path_factory.mktemp("query-cluster-run"),
    )
    running = start_service(settings)
    try:
        yield running
    finally:
        stop_service(running)


@pytest.fixture
def r(redis_topology: str, request: pytest.FixtureRequest) -> Iterator[Client]:
    """A client on the test Redis, flushed first (restarted if a test left it stopped); on the
    cluster topology, a cluster client (FLUSHALL reaches every master)."""
    if redis_topology == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        client: Client = make_client(cluster.url, True, decode_responses=True)
    else:
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        if redis_server.process is not None and not redis_server.process.alive():
            redis_server.process.start()
            redis_server.process.wait_until(redis_server.ping, timeout=20, what="a PING reply")
        client = make_client(redis_server.url, False, decode_responses=True)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def http(redis_topology: str, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    service: RunningService = request.getfixturevalue(
        "cluster_service" if redis_topology == "cluster" else "service"
    )
    with httpx.Client(base_url=service.url, timeout=10) as client:
        yield client


# --- writing Redis the way the processor does --------------------------------------------------


def trade_update(
    symbol: str,
    price: str,
    *,
    trade_id: int = 1,
    quantity: str = "0.01000000",
    trade_time: int | None = None,
    now_ms: int | None = None,
) -> dict[str, object]:
    """One element of the ``updates:price`` message (the processor's shape)."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    t = trade_time if trade_time is not None else now - 5
    return {
        "symbol": symbol,
        "price": price,
        "quantity": quantity,
        "trade_id": trade_id,
        "trade_time": t,
        "event_time": t + 1,
        "update_time": now,
    }


def put_price(r: Client, symbol: str, price: str, **kw: int | str) -> dict[str, object]:
    """HSET ``price:{pP}:SYMBOL`` + SADD ``symbols:{pP}``, as the processor's Lua script does."""
    update = trade_update(symbol, price, **kw)  # type: ignore[arg-type]
    r.hset(
        price_key(symbol, N),
        mapping={
            "price": price,
            "quantity": str(update["quantity"]),
            "trade_id": str(update["trade_id"]),
            "trade_time": str(update["trade_time"]),
            "event_time": str(update["event_time"]),
            "ingest_time_us": str(int(update["event_time"]) * 1000 + 300),  # type: ignore[call-overload]
            "update_time": str(update["update_time"]),
        },
    )
    r.sadd(symbols_key(home_partition(symbol, N), N), symbol)
    return update


def publish(r: Client, updates: list[dict[str, object]]) -> int:
    return int(r.publish(PRICE_CHANNEL, orjson.dumps(updates)))


def put_candle(
    r: Client,
    symbol: str,
    t: int,
    o: str,
    h: str,
    low: str,
    c: str,
    v: str,
    qv: str,
    n: int,
) -> None:
    """A stored 1m candle in the processor's member spelling (core/keys.py), its trade ids
    rising with time as an exchange's do."""
    first_id = t // 1000
    candle = Candle(
        t, o, Decimal(h), Decimal(low), c, Decimal(v), Decimal(qv), n, first_id, first_id + n - 1
    )
    r.zadd(candles_1m_key(symbol, N), {orjson.dumps(candle_member(candle)): t})


def put_stats(r: Client, symbol: str, trades: int, base: str, quote: str) -> None:
    r.hset(
        stats_key(symbol, N),
        mapping={"trades": str(trades), "base_volume": base, "quote_volume": quote},
    )


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if callable(predicate) and predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(interval)


__all__ = ["Path"]
