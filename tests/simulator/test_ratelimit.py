"""REST rate limits: weights, the used-weight headers, 429 with Retry-After, 418 bans, off."""

from __future__ import annotations

import httpx

from marketsim.ratelimit import BAN_FIRST_S, RestLimiter, request_weight
from marketsim.server import Simulator

from .conftest import cfg


def test_weights_follow_binance() -> None:
    assert request_weight("/api/v3/ping", {}) == 1
    assert request_weight("/api/v3/exchangeInfo", {}) == 20
    assert request_weight("/api/v3/historicalTrades", {"symbol": "X"}) == 25
    assert request_weight("/api/v3/aggTrades", {"symbol": "X"}) == 4
    assert request_weight("/api/v3/ticker/24hr", {"symbol": "X"}) == 2
    assert request_weight("/api/v3/ticker/24hr", {"symbols": '["A","B"]'}) == 2
    assert (
        request_weight(
            "/api/v3/ticker/24hr", {"symbols": str([f"S{i}" for i in range(30)]).replace("'", '"')}
        )
        == 40
    )
    assert request_weight("/api/v3/ticker/24hr", {}) == 80
    assert request_weight("/api/v3/ticker/price", {}) == 4
    assert request_weight("/api/v3/ticker", {"symbols": '["A","B","C"]'}) == 12
    assert request_weight("/sim/stats", {}) == 0


def test_windows_reset_and_bans_double() -> None:
    lim = RestLimiter(weight_limit=10, ban_after=2)
    assert [lim.check("a", 5, 0.0).status for _ in range(3)] == [200, 200, 429]
    assert lim.check("b", 5, 1.0).status == 200  # per IP
    assert lim.check("a", 5, 60.0).status == 200  # a new minute
    assert [lim.check("a", 10, 61.0).status for _ in range(3)] == [429] * 3  # ban_after=2 more
    v = lim.check("a", 10, 61.0)  # and one more: banned
    assert v.status == 418 and v.retry_after == BAN_FIRST_S
    assert lim.check("a", 1, 61.0 + BAN_FIRST_S - 1).status == 418
    assert lim.check("a", 1, 61.0 + BAN_FIRST_S).status == 200
    for _ in range(4):
        v = lim.check("a", 100, 300.0)
    assert v.status == 418 and v.retry_after == 2 * BAN_FIRST_S  # a second ban lasts twice as long
    off = RestLimiter(weight_limit=0)
    assert all(off.check("a", 1000, 0.0).status == 200 for _ in range(100))


async def test_limit_enforced_over_http() -> None:
    async with Simulator(cfg(rest_weight_limit=100)) as sim:
        async with httpx.AsyncClient(base_url=sim.rest_url) as http:
            info = await http.get("/api/v3/exchangeInfo")
            weights = [
                r["limit"]
                for r in info.json()["rateLimits"]
                if r["rateLimitType"] == "REQUEST_WEIGHT"
            ]
            assert weights == [100]
            assert info.headers["X-MBX-USED-WEIGHT-1M"] == "20"
            ping = await http.get("/api/v3/ping")
            assert ping.headers["X-MBX-USED-WEIGHT-1M"] == "21"
            replies = [await http.get("/api/v3/exchangeInfo") for _ in range(4)]
            assert [r.status_code for r in replies] == [200, 200, 200, 429]
            refused = replies[-1]
            assert (
                refused.json()["code"] == -1003 and 1 <= int(refused.headers["Retry-After"]) <= 60
            )
            assert refused.headers["X-MBX-USED-WEIGHT-1M"] == "81"
            assert (await http.get("/api/v3/ping")).status_code == 200  # 1 still fits
            more = [await http.get("/api/v3/exchangeInfo") for _ in range(12)]
            assert more[-1].status_code == 418 and int(more[-1].headers["Retry-After"]) >= 100
            assert (await http.get("/api/v3/ping")).status_code == 418
            assert (await http.get("/sim/stats")).status_code == 200  # not Binance's: never limited
        assert sim.stats()["rest_banned"] >= 1


async def test_limits_off() -> None:
    async with (
        Simulator(cfg(rest_weight_limit=0)) as sim,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):
        codes = {(await http.get("/api/v3/exchangeInfo")).status_code for _ in range(400)}
    assert codes == {200}
