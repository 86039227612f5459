"""Redis going away and coming back: 503 JSON errors while down, recovery without a restart."""

from __future__ import annotations

import httpx
import redis

from cryptostream.stack.redis_server import RedisServer
from tests.query.conftest import put_price, wait_for


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
