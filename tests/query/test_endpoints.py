"""Every read endpoint on a real Redis, populated the way the processor writes it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import redis

from cryptostream.config import Settings
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import free_port
from tests.conftest import both_topologies
from tests.query.conftest import (
    put_candle,
    put_price,
    put_stats,
    start_service,
    stop_service,
)

MIN = 60_000
T0 = 1_718_000_040_000 - 1_718_000_040_000 % (60 * MIN)  # an hour boundary


@both_topologies
def test_prices_many_with_missing(http: httpx.Client, r: redis.Redis) -> None:
    put_price(r, "BTCUSDT", "66398.85000000")
    put_price(r, "ETHUSDT", "3120.50")
    resp = http.get("/prices", params={"symbols": "btcusdt,ETHUSDT,XYZUSDT,BTCUSDT"})
    assert resp.status_code == 200
    assert resp.json() == {
        "prices": {"BTCUSDT": 66398.85, "ETHUSDT": 3120.5},
        "missing": ["XYZUSDT"],
    }


def test_prices_input_is_bounded_and_validated(http: httpx.Client, r: redis.Redis) -> None:
    too_many = ",".join(f"S{i:04d}" for i in range(Settings().query_max_symbols + 1))
    for params in [
        {"symbols": too_many},
        {"symbols": "BTC-USDT"},
        {"symbols": ",,"},
        {"symbols": "A B"},
        {},
    ]:
        resp = http.get("/prices", params=params)
        assert resp.status_code == 400, params
        assert set(resp.json()) == {"error"}


@both_topologies
def test_latest_trade_record_and_age(http: httpx.Client, r: redis.Redis) -> None:
    now = int(time.time() * 1000)
    put_price(r, "BTCUSDT", "66398.85000000", trade_id=42, quantity="0.5", trade_time=now - 1000)
    body = http.get("/trades/latest/btcusdt").json()
    assert body["symbol"] == "BTCUSDT"
    assert body["price"] == "66398.85000000"
    assert body["quantity"] == "0.5"
    assert body["trade_id"] == 42
    assert body["trade_time"] == now - 1000
    assert body["event_time"] == now - 999
    assert isinstance(body["update_time"], int)
    assert isinstance(body["ingest_time_us"], int)
    assert 1000 <= body["age_ms"] < 1000 + 10_000
    assert http.get("/trades/latest/NOPE").status_code == 404
    assert http.get("/trades/latest/N-O").status_code == 400


@both_topologies
def test_stats(http: httpx.Client, r: redis.Redis) -> None:
    put_stats(r, "BTCUSDT", 1234, "18.12000000", "1210554.77")
    assert http.get("/stats/BTCUSDT").json() == {
        "symbol": "BTCUSDT",
        "trades": 1234,
        "base_volume": "18.12000000",
        "quote_volume": "1210554.77",
    }
    resp = http.get("/stats/ETHUSDT")
    assert resp.status_code == 404
    assert resp.json() == {"error": "stats not available"}


@both_topologies
def test_symbols(http: httpx.Client, r: redis.Redis) -> None:
    assert http.get("/symbols").json() == {"symbols": [], "count": 0}
    for s in ["ETHUSDT", "BTCUSDT"]:
        put_price(r, s, "1")
    assert http.get("/symbols").json() == {"symbols": ["BTCUSDT", "ETHUSDT"], "count": 2}


def _minutes(r: redis.Redis, symbol: str, count: int, start: int = T0) -> None:
    """``count`` consecutive minutes with known, exactly-summable values."""
    for i in range(count):
        base = 100 + i
        put_candle(
            r,
            symbol,
            start + i * MIN,
            f"{base}.10",
            f"{base}.90",
            f"{base}.00",
            f"{base}.50",
            "0.10000001",
            "10.00000003",
            i + 1,
        )


def test_candles_1m(http: httpx.Client, r: redis.Redis) -> None:
    """Decimals in the one canonical form of the views (no trailing zeros), whatever the
    stored spelling, so 1m candles and their roll-ups read alike."""
    _minutes(r, "BTCUSDT", 10)
    body = http.get("/candles/BTCUSDT", params={"interval": "1m", "limit": 3}).json()
    assert body["symbol"] == "BTCUSDT"
    assert body["interval"] == "1m"
    assert [c["open_time"] for c in body["candles"]] == [T0 + 7 * MIN, T0 + 8 * MIN, T0 + 9 * MIN]
    last = body["candles"][-1]
    assert last == {
        "open_time": T0 + 9 * MIN,
        "close_time": T0 + 10 * MIN - 1,
        "open": "109.1",
        "high": "109.9",
        "low": "109",
        "close": "109.5",
        "volume": "0.10000001",
        "quote_volume": "10.00000003",
        "trades": 10,
    }


@both_topologies
def test_candles_5m_rolled_up_exactly(http: httpx.Client, r: redis.Redis) -> None:
    _minutes(r, "BTCUSDT", 12)  # minutes 0-11: buckets [0-4], [5-9], [10-11]
    body = http.get("/candles/BTCUSDT", params={"interval": "5m", "limit": 2}).json()
    assert [c["open_time"] for c in body["candles"]] == [T0 + 5 * MIN, T0 + 10 * MIN]
    full, partial = body["candles"]
    assert full == {
        "open_time": T0 + 5 * MIN,
        "close_time": T0 + 10 * MIN - 1,
        "open": "105.1",
        "high": "109.9",
        "low": "105",
        "close": "109.5",
        "volume": "0.50000005",
        "quote_volume": "50.00000015",
        "trades": 6 + 7 + 8 + 9 + 10,
    }
    assert partial["volume"] == "0.20000002"
    assert partial["trades"] == 11 + 12


def test_candles_1h_and_15m(http: httpx.Client, r: redis.Redis) -> None:
    _minutes(r, "BTCUSDT", 75)
    hours = http.get("/candles/BTCUSDT", params={"interval": "1h", "limit": 5}).json()["candles"]
    assert [c["open_time"] for c in hours] == [T0, T0 + 60 * MIN]
    assert hours[0]["trades"] == sum(range(1, 61))
    assert hours[0]["volume"] == "6.0000006"  # canonical: the one formatter of the views
    quarters = http.get("/candles/BTCUSDT?interval=15m&limit=100").json()["candles"]
    assert len(quarters) == 5
    assert quarters[-1]["open"] == "160.1"


def test_candles_errors(http: httpx.Client, r: redis.Redis) -> None:
    assert http.get("/candles/BTCUSDT").json() == {"error": "no candles"}
    assert http.get("/candles/BTCUSDT").status_code == 404
    _minutes(r, "BTCUSDT", 1)
    for query in ["interval=2m", f"limit={Settings().query_max_candles + 1}", "limit=0", "limit=x"]:
        resp = http.get(f"/candles/BTCUSDT?{query}")
        assert resp.status_code == 400, query
        assert resp.json()["error"].startswith("invalid request")
    assert http.get("/candles/B!").status_code == 400


def test_metrics_exposes_request_counts(http: httpx.Client, r: redis.Redis) -> None:
    put_price(r, "BTCUSDT", "1")
    http.get("/price/BTCUSDT")
    http.get("/symbols")
    text = http.get("/metrics").text
    assert 'csp_query_requests_total{route="/price/{symbol}",status="200"}' in text
    assert 'csp_query_requests_total{route="/symbols",status="200"}' in text
    assert "csp_query_request_seconds_bucket" in text


def test_openapi_documents_every_endpoint_with_an_example(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    expected = {
        "/price/{symbol}",
        "/prices",
        "/trades/latest/{symbol}",
        "/candles/{symbol}",
        "/stats/{symbol}",
        "/symbols",
        "/health",
        "/ready",
        "/metrics",
        "/stream/prices",
    }
    assert expected <= set(schema["paths"])
    components = schema["components"]["schemas"]
    for path in expected:
        ok = schema["paths"][path]["get"]["responses"]["200"]
        content = next(iter(ok["content"].values()))
        ref = content.get("schema", {}).get("$ref", "")
        model = components.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
        assert "example" in content or "examples" in model, path
        assert "422" not in schema["paths"][path]["get"]["responses"]


def test_request_bounds_come_from_the_settings(
    redis_server: RedisServer, tmp_path: Path, r: redis.Redis
) -> None:
    settings = Settings(
        redis_url=redis_server.url,
        query_port=free_port(),
        run_dir=tmp_path,
        query_max_symbols=2,
        query_max_candles=3,
    )
    running = start_service(settings)
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            assert client.get("/prices", params={"symbols": "AAA,BBB"}).status_code == 200
            too_many = client.get("/prices", params={"symbols": "AAA,BBB,CCC"})
            assert too_many.status_code == 400, too_many.text
            assert client.get("/candles/BTCUSDT", params={"limit": 3}).status_code == 404
            assert client.get("/candles/BTCUSDT", params={"limit": 4}).status_code == 400
    finally:
        stop_service(running)
