"""The in-process price view (``CSP_QUERY_PRICE_VIEW``): its freshness bound, its fallback to
Redis when the channel is lost, and the exact 404 -- on a real Redis, writes made the way the
processor makes them (the hash and the ``updates:price`` message in one atomic step)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis

from cryptostream.config import Settings
from cryptostream.core.keys import PRICE_CHANNEL, home_partition, price_key, symbols_key
from cryptostream.query.view import PriceView
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import free_port
from tests.query.conftest import (
    N,
    RunningService,
    start_service,
    stop_service,
    trade_update,
    wait_for,
)

MAX_LAG_MS = 100.0


@pytest.fixture(scope="module")
def view_service(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    settings = Settings(
        redis_url=redis_server.url,
        query_host="127.0.0.1",
        query_port=free_port(),
        query_price_view=True,
        query_price_view_max_lag_ms=MAX_LAG_MS,
        run_dir=tmp_path_factory.mktemp("view-run"),
    )
    running = start_service(settings)
    try:
        yield running
    finally:
        stop_service(running)


def the_view(service: RunningService) -> PriceView:
    view = service.app.state.view
    assert view is not None
    return view


def wait_fresh(service: RunningService) -> None:
    """Until the subscription is confirmed by a pong (the view answers from then on)."""
    view = the_view(service)
    wait_for(lambda: view.live and time.monotonic() < view.fresh_until, timeout=10)


def write_like_the_processor(r: redis.Redis, symbol: str, price: str, trade_id: int) -> None:
    """HSET price:{SYMBOL} + PUBLISH in one MULTI/EXEC, as apply_batch.lua does atomically."""
    update = trade_update(symbol, price, trade_id=trade_id)
    pipe = r.pipeline(transaction=True)
    pipe.hset(price_key(symbol, N), mapping={"price": price, "trade_id": str(trade_id)})
    pipe.sadd(symbols_key(home_partition(symbol, N), N), symbol)
    pipe.publish(PRICE_CHANNEL, orjson.dumps([update]))
    pipe.execute()


# --- the pure core -----------------------------------------------------------------------------


def test_view_merges_by_trade_id_and_answers_only_while_confirmed() -> None:
    view = PriceView(max_lag_s=0.1)
    view.subscribed()
    view.apply({"symbol": "BTCUSDT", "price": "2.5", "trade_id": 7})
    assert view.lookup("BTCUSDT") is None  # subscribed, but no pong yet: not fresh
    view.confirmed(time.monotonic())
    assert view.lookup("BTCUSDT") == b'{"symbol":"BTCUSDT","price":2.5}'
    view.apply({"symbol": "BTCUSDT", "price": "1.0", "trade_id": 6})  # older: ignored
    assert view.lookup("BTCUSDT") == b'{"symbol":"BTCUSDT","price":2.5}'
    token = view.read_token()
    view.learn(token, "BTCUSDT", 5, b"older")  # a read older than the channel's value
    assert view.lookup("BTCUSDT") == b'{"symbol":"BTCUSDT","price":2.5}'
    view.learn(token, "BTCUSDT", 8, b"newer")
    assert view.lookup("BTCUSDT") == b"newer"
    view.apply({"symbol": "BTCUSDT", "price": "not-a-number", "trade_id": 9})
    assert view.lookup("BTCUSDT") is None  # Redis answers a malformed price (500), not the view
    # A pong older than the bound does not make it fresh.
    stale = PriceView(max_lag_s=0.1)
    stale.subscribed()
    stale.apply({"symbol": "BTCUSDT", "price": "2.5", "trade_id": 7})
    stale.confirmed(time.monotonic() - 0.2)
    assert stale.lookup("BTCUSDT") is None


def test_reads_from_before_a_lost_subscription_are_not_learned() -> None:
    view = PriceView(max_lag_s=10)
    assert view.read_token() is None  # never subscribed: reads are not learned
    view.subscribed()
    assert view.read_token() is None  # SUBSCRIBE not yet confirmed by a pong
    view.confirmed(time.monotonic())
    token = view.read_token()
    view.lost()
    assert view.lookup("X1") is None
    view.subscribed()
    view.confirmed(time.monotonic())
    view.learn(token, "X1", 1, b"from before the gap")
    assert view.lookup("X1") is None
    view.learn(view.read_token(), "X1", 1, b"now")
    assert view.lookup("X1") == b"now"


# --- against a real Redis ----------------------------------------------------------------------


def test_unknown_symbol_is_404_and_served_as_soon_as_redis_has_it(
    view_service: RunningService, r: redis.Redis
) -> None:
    wait_fresh(view_service)
    with httpx.Client(base_url=view_service.url, timeout=10) as http:
        for _ in range(3):
            assert http.get("/price/NEWUSDT").status_code == 404
        # Written without any channel message: a 404 is never cached.
        r.hset(price_key("NEWUSDT", N), mapping={"price": "3.25", "trade_id": "1"})
        assert http.get("/price/NEWUSDT").json() == {"symbol": "NEWUSDT", "price": 3.25}
        assert http.get("/price/bad-symbol").status_code == 400


def test_view_answers_match_redis_byte_for_byte(
    view_service: RunningService, r: redis.Redis
) -> None:
    wait_fresh(view_service)
    view = the_view(view_service)
    write_like_the_processor(r, "BTCUSDT", "66398.85000000", 10)
    with httpx.Client(base_url=view_service.url, timeout=10) as http:
        wait_for(lambda: "BTCUSDT" in view.entries, timeout=5)
        hits = view.hits
        resp = http.get("/price/BTCUSDT")
        assert view.hits == hits + 1  # served by the view
        assert resp.content == b'{"symbol":"BTCUSDT","price":66398.85}'
        assert resp.headers["content-type"] == "application/json"


def test_view_is_never_older_than_redis_by_more_than_the_bound(
    view_service: RunningService, r: redis.Redis
) -> None:
    """A writer changes one symbol every ~2 ms the processor's way, recording when each trade
    id became visible in Redis; every answer must carry at least the newest trade id visible
    MAX_LAG_MS before the request was sent. Most answers must come from the view, or this would
    prove nothing about it."""
    wait_fresh(view_service)
    view = the_view(view_service)
    visible: list[tuple[float, int]] = []  # (monotonic time the write completed, trade id)
    stop = threading.Event()

    def writer() -> None:
        client = redis.Redis.from_url(_url(r))
        trade_id = 0
        try:
            while not stop.is_set():
                trade_id += 1
                write_like_the_processor(client, "ETHUSDT", f"{trade_id}.0", trade_id)
                visible.append((time.monotonic(), trade_id))
                time.sleep(0.002)
        finally:
            client.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    checked = 0
    hits_before = view.hits
    try:
        wait_for(lambda: len(visible) > 5, timeout=5)
        with httpx.Client(base_url=view_service.url, timeout=10) as http:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                sent = time.monotonic()
                resp = http.get("/price/ETHUSDT")
                assert resp.status_code == 200
                served = int(resp.json()["price"])
                must_have = max(
                    (tid for t, tid in list(visible) if t < sent - MAX_LAG_MS / 1000), default=0
                )
                assert served >= must_have, (served, must_have)
                checked += 1
    finally:
        stop.set()
        thread.join(timeout=5)
    assert checked > 50
    assert view.hits - hits_before > checked // 2, (view.hits - hits_before, checked)


def test_lost_channel_falls_back_to_redis(view_service: RunningService, r: redis.Redis) -> None:
    """Kill the worker's subscription: prices written meanwhile without any channel message
    (missed by the view) must be served from Redis, within the bound, and the view comes back
    with the re-subscription."""
    wait_fresh(view_service)
    view = the_view(view_service)
    write_like_the_processor(r, "SOLUSDT", "150.0", 1)
    with httpx.Client(base_url=view_service.url, timeout=10) as http:
        wait_for(lambda: "SOLUSDT" in view.entries, timeout=5)
        assert http.get("/price/SOLUSDT").json() == {"symbol": "SOLUSDT", "price": 150.0}
        generation = view.generation
        subscribers = _subscribers(r)
        assert r.client_kill_filter(_type="pubsub") >= 1  # every worker's, the session's too
        # A change the channel never carries (as if published while unsubscribed).
        r.hset(price_key("SOLUSDT", N), mapping={"price": "151.0", "trade_id": "2"})
        time.sleep(MAX_LAG_MS / 1000)
        assert http.get("/price/SOLUSDT").json() == {"symbol": "SOLUSDT", "price": 151.0}
        wait_for(lambda: view.generation > generation, timeout=5)  # it noticed the loss
        wait_fresh(view_service)
        assert http.get("/price/SOLUSDT").json() == {"symbol": "SOLUSDT", "price": 151.0}
        write_like_the_processor(r, "SOLUSDT", "152.0", 3)
        wait_for(lambda: view.entries.get("SOLUSDT", (0, b""))[0] == 3, timeout=5)
        hits = view.hits
        assert http.get("/price/SOLUSDT").json() == {"symbol": "SOLUSDT", "price": 152.0}
        assert view.hits == hits + 1
    # Leave the other services of the session subscribed again, as found.
    wait_for(lambda: _subscribers(r) >= subscribers, timeout=10)


def _subscribers(r: redis.Redis) -> int:
    return int(dict(r.pubsub_numsub(PRICE_CHANNEL)).get(PRICE_CHANNEL, 0))


def _url(r: redis.Redis) -> str:
    kwargs = r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
