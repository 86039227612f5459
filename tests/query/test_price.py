"""``GET /price/{symbol}``, ``/health``, ``/ready`` and error rendering on a real Redis."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis

from cryptostream.query.app import create_app
from tests.conftest import both_topologies
from tests.query.conftest import RunningService, put_price


@both_topologies
def test_price_of_a_known_symbol(http: httpx.Client, r: redis.Redis) -> None:
    put_price(r, "BTCUSDT", "66398.85000000")
    resp = http.get("/price/BTCUSDT")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"symbol": "BTCUSDT", "price": 66398.85}
    assert resp.content == b'{"symbol":"BTCUSDT","price":66398.85}'


def test_lower_case_is_normalized(http: httpx.Client, r: redis.Redis) -> None:
    put_price(r, "ETHUSDT", "3120.5")
    assert http.get("/price/ethusdt").json() == {"symbol": "ETHUSDT", "price": 3120.5}


@both_topologies
def test_unknown_symbol_is_404(http: httpx.Client, r: redis.Redis) -> None:
    resp = http.get("/price/NOPEUSDT")
    assert resp.status_code == 404
    assert resp.json() == {"error": "price not available"}


@pytest.mark.parametrize(
    "raw", ["A", "X" * 21, "X" * 5000, "BTC-USDT", "BTC%20USDT", "%C3%84BC", "price:*", "%2A"]
)
def test_invalid_symbol_is_400_json(http: httpx.Client, r: redis.Redis, raw: str) -> None:
    resp = http.get(f"/price/{raw}")
    assert resp.status_code == 400
    assert "invalid symbol" in resp.json()["error"]


def test_fast_path_and_fastapi_route_agree(service: RunningService, r: redis.Redis) -> None:
    """The documented FastAPI route and the hot path must answer byte for byte alike.

    A second app instance (same settings) runs in this test's own event loop: the served one
    belongs to the server thread's loop.
    """
    put_price(r, "BTCUSDT", "66398.85000000")
    app = create_app(service.app.state.settings)

    async def compare() -> None:
        await app.state.start()
        try:
            fast = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            slow = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app.api), base_url="http://t"
            )
            async with fast, slow:
                for raw in ["BTCUSDT", "btcusdt", "NOPE", "B-C", "X" * 300]:
                    a, b = await fast.get(f"/price/{raw}"), await slow.get(f"/price/{raw}")
                    assert (a.status_code, a.content) == (b.status_code, b.content), raw
                    assert a.headers["content-type"] == b.headers["content-type"]
        finally:
            await app.state.stop()

    asyncio.run(compare())


def test_health_fast_path_matches_the_fastapi_route(service: RunningService) -> None:
    """``GET /health`` is answered on the fast path (the benchmark's empty route): same bytes,
    status and content type as the documented FastAPI route, and counted in the metrics."""
    app = create_app(service.app.state.settings)

    async def compare() -> None:
        fast = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        slow = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.api), base_url="http://t")
        async with fast, slow:
            a, b = await fast.get("/health"), await slow.get("/health")
            assert (a.status_code, a.content) == (b.status_code, b.content) == (200, a.content)
            assert a.json() == {"status": "ok"}
            assert a.headers["content-type"] == b.headers["content-type"]
            assert a.headers["content-length"] == str(len(a.content))
            assert (await fast.post("/health")).status_code == 405  # other methods: FastAPI
            text = (await fast.get("/metrics")).text
            assert 'csp_query_requests_total{route="/health",status="200"} 1.0' in text

    asyncio.run(compare())


def test_concurrent_prices_share_one_connection_in_order(
    service: RunningService, r: redis.Redis
) -> None:
    """Many requests in flight at once (pipelined on one Redis connection, written together)
    each get their own symbol's answer, 404s included."""
    for i in range(50):
        put_price(r, f"SYM{i:02d}USDT", f"{i}.5")

    async def burst() -> None:
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            names = [f"SYM{i % 60:02d}USDT" for i in range(300)]
            answers = await asyncio.gather(*(client.get(f"/price/{n}") for n in names))
        for name, resp in zip(names, answers, strict=True):
            i = int(name[3:5])
            if i < 50:
                assert resp.json() == {"symbol": name, "price": i + 0.5}
            else:
                assert resp.status_code == 404

    asyncio.run(burst())


def test_other_paths_and_methods_are_json_errors(http: httpx.Client, r: redis.Redis) -> None:
    resp = http.get("/price/BTC/USDT")
    assert resp.status_code == 404
    assert "error" in resp.json()
    resp = http.post("/price/BTCUSDT")
    assert resp.status_code == 405
    assert "error" in resp.json()
    resp = http.get("/nowhere")
    assert resp.status_code == 404
    assert resp.json() == {"error": "not found"}


def test_health_and_ready(http: httpx.Client, r: redis.Redis) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    resp = http.get("/ready")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready"}
