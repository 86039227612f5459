"""Live push on real Redis pub/sub: delivery, subscriptions, SSE, slow clients, Redis restarts."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from websockets.sync.client import ClientConnection, connect

from cryptostream.core.keys import PRICE_CHANNEL
from cryptostream.stack.redis_cluster import RedisCluster
from cryptostream.stack.redis_server import RedisServer
from tests.query.conftest import RunningService, publish, trade_update, wait_for

DEADLINE_S = 5.0


def _wait_subscribed(r: redis.Redis) -> None:
    """The worker's hub holds one subscription to the channel (re-made after a restart)."""
    wait_for(lambda: dict(r.pubsub_numsub(PRICE_CHANNEL)).get(PRICE_CHANNEL, 0) >= 1)


def _recv(ws: ClientConnection, timeout: float = DEADLINE_S) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(ws.recv(timeout=timeout))
    return doc


@pytest.fixture
def ws_url(service: RunningService, r: redis.Redis) -> str:
    _wait_subscribed(r)
    return service.ws_url + "/ws/prices"


def test_client_receives_a_published_update_within_deadline(ws_url: str, r: redis.Redis) -> None:
    with connect(f"{ws_url}?symbols=btcusdt,ETHUSDT") as ws:
        assert _recv(ws) == {"type": "subscribed", "symbols": ["BTCUSDT", "ETHUSDT"]}
        update = trade_update("BTCUSDT", "66398.85000000", trade_id=7)
        sent = time.monotonic()
        publish(r, [update, trade_update("SOLUSDT", "150.1", trade_id=9)])
        msg = _recv(ws)
        assert time.monotonic() - sent < DEADLINE_S
        assert msg == {"type": "prices", "updates": [update]}  # SOLUSDT not subscribed


def test_subscribe_and_unsubscribe_messages(ws_url: str, r: redis.Redis) -> None:
    with connect(ws_url) as ws:
        assert _recv(ws) == {"type": "subscribed", "symbols": []}
        ws.send(orjson.dumps({"op": "subscribe", "symbols": ["ethusdt", "BTCUSDT"]}).decode())
        assert _recv(ws) == {"type": "subscribed", "symbols": ["BTCUSDT", "ETHUSDT"]}
        ws.send(orjson.dumps({"op": "unsubscribe", "symbols": ["BTCUSDT"]}).decode())
        assert _recv(ws) == {"type": "subscribed", "symbols": ["ETHUSDT"]}
        for bad in ["nonsense", '{"op": "subscribe", "symbols": ["B-C"]}', '{"op": "x"}', "[]"]:
            ws.send(bad)
            assert _recv(ws)["type"] == "error"
        publish(r, [trade_update("BTCUSDT", "1", trade_id=1)])
        eth = trade_update("ETHUSDT", "2", trade_id=2)
        publish(r, [eth])
        assert _recv(ws) == {"type": "prices", "updates": [eth]}


def test_invalid_symbols_on_connect_close_with_an_error(ws_url: str) -> None:
    with connect(f"{ws_url}?symbols=BTC-USDT") as ws:
        msg = _recv(ws)
        assert msg["type"] == "error"
        assert "invalid symbol" in msg["error"]
        with pytest.raises(Exception):  # noqa: B017 - closed by the server (1008)
            ws.recv(timeout=DEADLINE_S)
        assert ws.close_code == 1008


def test_server_sent_events(service: RunningService, r: redis.Redis, http: httpx.Client) -> None:
    _wait_subscribed(r)
    update = trade_update("BTCUSDT", "66398.85", trade_id=3)
    with http.stream("GET", "/stream/prices", params={"symbols": "BTCUSDT"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        assert next(lines) == ": subscribed"
        publish(r, [update])
        data = next(line for line in lines if line.startswith("data: "))
        assert orjson.loads(data[len("data: ") :]) == [update]
    assert http.get("/stream/prices?symbols=A").status_code == 400


def test_server_sent_events_without_symbols_follow_every_symbol(
    service: RunningService, r: redis.Redis, http: httpx.Client
) -> None:
    _wait_subscribed(r)
    with http.stream("GET", "/stream/prices") as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert next(lines) == ": subscribed"
        received: dict[str, Any] = {}
        for i, symbol in enumerate(["BTCUSDT", "ETHUSDT", "SOLUSDT"]):
            update = trade_update(symbol, f"{i + 1}.5", trade_id=i + 1)
            publish(r, [update])
            data = next(line for line in lines if line.startswith("data: "))
            for got in orjson.loads(data[len("data: ") :]):
                received[got["symbol"]] = got
            assert received[symbol] == update


def test_following_every_symbol_stops_at_the_per_client_limit() -> None:
    """A follow-all client takes symbols as they appear, up to the limit, then no more."""
    from cryptostream.query.metrics import QueryMetrics
    from cryptostream.query.push import ClientFeed, PushHub

    metrics = QueryMetrics()
    hub = PushHub("redis://127.0.0.1:1/0", metrics).prices
    feed = ClientFeed(metrics)
    hub.register_all(feed, limit=2)
    for i, symbol in enumerate(["AAAUSDT", "BBBUSDT", "CCCUSDT", "AAAUSDT"]):
        hub.dispatch(orjson.dumps(trade_update(symbol, "1", trade_id=i + 1)))
    assert feed.symbols == {"AAAUSDT", "BBBUSDT"}
    assert set(feed.pending) == {"AAAUSDT", "BBBUSDT"}
    hub.unregister(feed)
    assert hub.by_symbol == {} and hub.followers_of_all == {}


# --- slow clients ------------------------------------------------------------------------------


class RawWebSocket:
    """A WebSocket client that reads only when told to (a tiny receive buffer, no reader thread)."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def frames(self) -> Iterator[bytes]:
        """Unmasked server frames (text/binary payloads; no fragmentation from this server)."""
        while True:
            b0, b1 = self._read(2)
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length)
            if b0 & 0x0F in (1, 2):
                yield payload
            elif b0 & 0x0F == 8:
                return

    def close(self) -> None:
        self.sock.close()


def _metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def test_slow_client_is_coalesced_and_does_not_slow_others(
    service: RunningService, r: redis.Redis, http: httpx.Client
) -> None:
    _wait_subscribed(r)
    symbols = [f"SYM{i:03d}USDT" for i in range(200)]
    query = "/ws/prices?symbols=" + ",".join(symbols)
    host, port = service.url.removeprefix("http://").split(":")
    slow = RawWebSocket(host, int(port), query)
    frames = slow.frames()
    assert orjson.loads(next(frames))["type"] == "subscribed"
    coalesced_before = _metric(http, "csp_query_stream_updates_coalesced_total")

    rounds = 400  # ~14 MB of updates: far more than the socket buffers between server and client
    with connect(service.ws_url + query, max_size=None) as fast:
        assert _recv(fast)["type"] == "subscribed"
        started = time.monotonic()
        for n in range(1, rounds + 1):
            publish(r, [trade_update(s, f"{n}.5", trade_id=n) for s in symbols])
        latest: dict[str, int] = {}
        while len(latest) < len(symbols) or min(latest.values()) < rounds:
            for u in _recv(fast, timeout=DEADLINE_S)["updates"]:
                latest[u["symbol"]] = u["trade_id"]
        fast_elapsed = time.monotonic() - started

    # The fast client got everyone's final price promptly although the slow one read nothing.
    assert fast_elapsed < 20, fast_elapsed
    # Memory held for the stalled client is bounded by its subscriptions, not by the backlog.
    assert _metric(http, "csp_query_stream_pending_updates") <= len(symbols)
    assert _metric(http, "csp_query_stream_updates_coalesced_total") > coalesced_before

    # When the slow client reads again it skips to the latest value of every symbol.
    slow.sock.settimeout(DEADLINE_S * 2)
    seen: dict[str, int] = {}
    count = 0
    for payload in frames:
        count += 1
        for u in orjson.loads(payload)["updates"]:
            assert u["trade_id"] >= seen.get(u["symbol"], 0)
            seen[u["symbol"]] = u["trade_id"]
        if len(seen) == len(symbols) and min(seen.values()) == rounds:
            break
    slow.close()
    assert count < rounds, "a stalled client should have had updates coalesced"


def test_push_survives_a_redis_restart(
    ws_url: str, r: redis.Redis, redis_server: RedisServer
) -> None:
    assert redis_server.process is not None
    with connect(f"{ws_url}?symbols=BTCUSDT") as ws:
        assert _recv(ws)["type"] == "subscribed"
        redis_server.process.stop(timeout=10)
        redis_server.process.start()
        redis_server.process.wait_until(redis_server.ping, timeout=20, what="a PING reply")
        fresh = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            _wait_subscribed(fresh)  # the hub re-subscribed by itself
            update = trade_update("BTCUSDT", "3", trade_id=5)
            publish(fresh, [update])
            assert _recv(ws) == {"type": "prices", "updates": [update]}
        finally:
            fresh.close()


def test_push_on_a_cluster_reaches_clients_whatever_master_publishes(
    cluster_service: RunningService, redis_cluster: RedisCluster
) -> None:
    """The hub subscribes on one node (the seed); a batch's PUBLISH runs on the master of its
    partition's slot, and the cluster bus forwards it to every node."""
    seed = redis.Redis.from_url(redis_cluster.url)
    wait_for(lambda: dict(seed.pubsub_numsub(PRICE_CHANNEL)).get(PRICE_CHANNEL.encode(), 0) >= 1)
    other = next(port for port in redis_cluster.ports[1:3])  # another master
    publisher = redis.Redis(host="127.0.0.1", port=other)
    try:
        with connect(f"{cluster_service.ws_url}/ws/prices?symbols=BTCUSDT") as ws:
            assert _recv(ws) == {"type": "subscribed", "symbols": ["BTCUSDT"]}
            update = trade_update("BTCUSDT", "66398.85000000", trade_id=7)
            publisher.publish(PRICE_CHANNEL, orjson.dumps([update]))
            assert _recv(ws) == {"type": "prices", "updates": [update]}
    finally:
        seed.close()
        publisher.close()
