"""Redis going away and coming back: 503 JSON errors while down, recovery without a restart."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from cryptostream.config import Settings
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import free_port
from tests.query.conftest import put_price, start_service, stop_service, wait_for
from tests.servers import server_fixture

HUNG_TIMEOUT_S = 0.5
VIEW_LAG_MS = 100.0


def test_503_while_redis_is_down_then_recovers(
    http: httpx.Client, r: redis.Redis, redis_server: RedisServer
) -> None:
    put_price(r, "BTCUSDT", "100.5")
    assert http.get("/price/BTCUSDT").status_code == 200
    assert redis_server.process is not None

    redis_server.process.stop(timeout=10)
    try:
        for path in [
            "/price/BTCUSDT",
            "/ready",
            "/prices?symbols=BTCUSDT",
            "/symbols",
            "/stats/BTCUSDT",
            "/trades/latest/BTCUSDT",
            "/candles/BTCUSDT",
        ]:
            resp = http.get(path)
            assert resp.status_code == 503, path
            assert resp.json() == {"error": "redis unavailable"}
        assert http.get("/health").status_code == 200  # alive, just not ready
        assert http.get("/price/bad-symbol").status_code == 400  # input is checked first
    finally:
        redis_server.process.start()
        redis_server.process.wait_until(redis_server.ping, timeout=20, what="a PING reply")

    # A restarted Redis without persistence is empty until the processor rebuilds it.
    wait_for(lambda: http.get("/ready").status_code == 200, timeout=10)
    assert http.get("/price/BTCUSDT").status_code == 404
    fresh = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        put_price(fresh, "BTCUSDT", "101.25")
    finally:
        fresh.close()
    assert http.get("/price/BTCUSDT").json() == {"symbol": "BTCUSDT", "price": 101.25}


@server_fixture()
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test alone: it gets frozen (SIGSTOP), which must not stall the
    session's server."""
    server = RedisServer(tmp_path_factory.mktemp("hung-redis")).start()
    try:
        yield server
    finally:
        proc = server.process
        if proc is not None and proc.proc is not None and proc.alive():
            os.kill(proc.proc.pid, signal.SIGCONT)
        server.stop()


@pytest.mark.parametrize("price_view", [False, True], ids=["redis", "price-view"])
def test_hung_redis_answers_503_within_the_timeout_then_recovers(
    own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory, price_view: bool
) -> None:
    """Redis accepts but does not answer (stopped with SIGSTOP): every pending /price fails with
    503 once the oldest reply is overdue -- within the configured timeout, not twice it (no
    retry on a timeout) -- and the service reconnects by itself when Redis answers again.
    With the price view, its pings go unanswered too, so after its lag bound it stops
    answering and /price reads (the hung) Redis like without it."""
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    put_price(client, "BTCUSDT", "100.5")
    client.close()
    settings = Settings(
        redis_url=own_redis.url,
        query_host="127.0.0.1",
        query_port=free_port(),
        query_redis_timeout_s=HUNG_TIMEOUT_S,
        query_price_view=price_view,
        query_price_view_max_lag_ms=VIEW_LAG_MS,
        run_dir=tmp_path_factory.mktemp("hung-run"),
    )
    service = start_service(settings)
    proc = own_redis.process
    assert proc is not None and proc.proc is not None
    try:
        with httpx.Client(base_url=service.url, timeout=10) as http:
            assert http.get("/price/BTCUSDT").json() == {"symbol": "BTCUSDT", "price": 100.5}
            view = service.app.state.view
            if price_view:  # the view is answering for BTCUSDT before Redis hangs
                assert view is not None
                wait_for(lambda: time.monotonic() < view.fresh_until, timeout=10)
                http.get("/price/BTCUSDT")  # learned from this read
                hits = view.hits
                assert http.get("/price/BTCUSDT").status_code == 200
                assert view.hits == hits + 1
            os.kill(proc.proc.pid, signal.SIGSTOP)
            try:
                if price_view:
                    time.sleep(VIEW_LAG_MS / 1000)  # the last pong's bound has passed

                def timed_get(_: int) -> tuple[int, object, float]:
                    started = time.monotonic()
                    resp = http.get("/price/BTCUSDT")
                    return resp.status_code, resp.json(), time.monotonic() - started

                with ThreadPoolExecutor(8) as pool:
                    answers = list(pool.map(timed_get, range(16)))
                for status, body, elapsed in answers:
                    assert (status, body) == (503, {"error": "redis unavailable"})
                    # Not long before the deadline, and well short of a second one. The
                    # deadline is the connection's (one watchdog per Redis connection), so a
                    # request that joins a connection already waiting may hear a little early.
                    assert HUNG_TIMEOUT_S * 0.8 <= elapsed < HUNG_TIMEOUT_S * 1.8, elapsed
            finally:
                os.kill(proc.proc.pid, signal.SIGCONT)
            wait_for(lambda: http.get("/price/BTCUSDT").status_code == 200, timeout=10)
            assert http.get("/price/BTCUSDT").json() == {"symbol": "BTCUSDT", "price": 100.5}
            assert http.get("/price/NOPEUSDT").status_code == 404
    finally:
        stop_service(service)
