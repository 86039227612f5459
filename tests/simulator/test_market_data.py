"""Every accepted stream answers; REST market data agrees with the streams and the trades; one
clock for streams and REST."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from marketsim.generator import DEFAULT_START_TIME_US
from marketsim.market import INTERVALS
from marketsim.server import Simulator
from marketsim.units import parse8

from .conftest import cfg, connect, drain, recv_reply

PERIODIC = [
    "btcusdt@ticker",
    "btcusdt@miniTicker",
    "btcusdt@ticker_1h",
    "btcusdt@ticker_4h",
    "btcusdt@ticker_1d",
    "btcusdt@avgPrice",
    "!miniTicker@arr",
    "!ticker_1h@arr",
    "!ticker_4h@arr",
    "!ticker_1d@arr",
]
KLINES = [f"btcusdt@kline_{i}" for i in INTERVALS] + ["btcusdt@kline_1d@+08:00"]


async def test_every_accepted_stream_answers() -> None:
    streams = PERIODIC + KLINES
    async with (
        Simulator(cfg(rate=400.0, symbols=("BTCUSDT", "ETHUSDT"))) as sim,
        connect(sim.ws_url + "/stream") as ws,
    ):
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1}))
        assert (await recv_reply(ws))["result"] is None
        seen: dict[str, Any] = {}
        async with asyncio.timeout(10):
            while len(seen) < len(streams):
                msg = json.loads(await ws.recv())
                seen.setdefault(msg["stream"], msg["data"])
    assert set(seen) == set(streams)
    assert seen["btcusdt@ticker"]["e"] == "24hrTicker"
    assert seen["btcusdt@miniTicker"]["e"] == "24hrMiniTicker"
    assert seen["btcusdt@ticker_4h"]["e"] == "4hTicker"
    assert seen["btcusdt@avgPrice"]["e"] == "avgPrice" and seen["btcusdt@avgPrice"]["i"] == "5m"
    assert {t["s"] for t in seen["!miniTicker@arr"]} <= {"BTCUSDT", "ETHUSDT"}
    for i in INTERVALS:
        assert seen[f"btcusdt@kline_{i}"]["k"]["i"] == i
    # 2025-01-01 00:00 UTC is 08:00 in UTC+8: that day's candle opened at 2024-12-31 16:00 UTC
    assert seen["btcusdt@kline_1d@+08:00"]["k"]["t"] == DEFAULT_START_TIME_US // 1000 - 8 * 3600_000


@pytest.mark.parametrize(
    "stream", ["btcusdt@foo", "btcusdt@kline_2m", "!ticker@arr", "!bookTicker", "btcusdt@ticker_2h"]
)
async def test_unknown_or_retired_streams_are_refused(sim: Simulator, stream: str) -> None:
    async with connect(sim.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": [stream], "id": 9}))
        reply = await recv_reply(ws)
    assert reply == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 9}
    with pytest.raises(Exception, match="400"):
        async with connect(sim.ws_url + "/ws/" + stream):
            pass


async def test_rest_klines_equal_the_streamed_closed_klines() -> None:
    streams = "btcusdt@trade/btcusdt@kline_1m/btcusdt@kline_3m/btcusdt@kline_1s"
    config = cfg(fast=True, max_trades=6000, wait_for_subscribers=1, symbols=("BTCUSDT",), rate=5.0)
    async with (
        Simulator(config) as sim,
        connect(sim.ws_url + "/stream?streams=" + streams) as ws,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):
        await sim.wait_done(20)
        frames = [json.loads(m) for m in await drain(ws)]
        rest = {}
        for i in ("1s", "1m", "3m"):
            r = await http.get(
                "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": i, "limit": 1000}
            )
            assert r.status_code == 200
            rest[i] = {row[0]: row for row in r.json()}
        ui = await http.get("/api/v3/uiKlines", params={"symbol": "BTCUSDT", "interval": "3m"})
        assert ui.json() == list(rest["3m"].values())[-500:]
        bad = await http.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "2m"})
        assert bad.status_code == 400 and bad.json()["code"] == -1120
    trades = [f["data"] for f in frames if f["stream"] == "btcusdt@trade"]
    for i in ("1s", "1m", "3m"):
        closed = [
            f["data"]["k"]
            for f in frames
            if f["stream"] == f"btcusdt@kline_{i}" and f["data"]["k"]["x"]
        ]
        assert len(closed) >= 3, i
        for k in closed:
            if i == "1s" and k["t"] not in rest[i]:
                continue  # older than the REST trade history the 1s klines come from
            row = rest[i][k["t"]]
            assert row == [
                k["t"],
                k["o"],
                k["h"],
                k["l"],
                k["c"],
                k["v"],
                k["T"],
                k["q"],
                k["n"],
                k["V"],
                k["Q"],
                "0",
            ]
            in_k = [t for t in trades if k["t"] <= t["T"] <= k["T"]]
            assert k["n"] == len(in_k) and parse8(k["v"]) == sum(parse8(t["q"]) for t in in_k)


async def test_24h_ticker_equals_the_trades_of_its_window() -> None:
    config = cfg(
        fast=True,
        max_trades=4000,
        wait_for_subscribers=1,
        symbols=("BTCUSDT", "ETHUSDT"),
        rate=10.0,
    )
    async with (
        Simulator(config) as sim,
        connect(sim.ws_url + "/stream?streams=btcusdt@trade/btcusdt@aggTrade") as ws,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):
        await sim.wait_done(20)
        frames = [json.loads(m) for m in await drain(ws)]
        t24 = (await http.get("/api/v3/ticker/24hr", params={"symbol": "BTCUSDT"})).json()
        roll = (
            await http.get("/api/v3/ticker", params={"symbol": "BTCUSDT", "windowSize": "1m"})
        ).json()
        every = (await http.get("/api/v3/ticker/24hr")).json()
        mini = (
            await http.get("/api/v3/ticker/24hr", params={"symbols": '["BTCUSDT"]', "type": "MINI"})
        ).json()
        price = (await http.get("/api/v3/ticker/price", params={"symbol": "BTCUSDT"})).json()
        book = (await http.get("/api/v3/ticker/bookTicker", params={"symbol": "BTCUSDT"})).json()
        avg = (await http.get("/api/v3/avgPrice", params={"symbol": "BTCUSDT"})).json()
        server_time = (await http.get("/api/v3/time")).json()["serverTime"]
        last_any = sim.truth.last_time_us // 1000  # the last trade of any symbol
    trades = [f["data"] for f in frames if f["stream"] == "btcusdt@trade"]
    last_agg = [f["data"] for f in frames if f["stream"] == "btcusdt@aggTrade"][-1]
    assert server_time == last_any  # a fixed clock: REST time is the market's
    for body, size_ms in ((t24, 86_400_000), (roll, 60_000)):
        assert body["closeTime"] == server_time
        assert body["openTime"] == (server_time - size_ms) // 60_000 * 60_000
        win = [t for t in trades if t["T"] >= body["openTime"]]
        assert body["count"] == len(win) and len(win) > 0
        assert body["firstId"] == win[0]["t"] and body["lastId"] == win[-1]["t"]
        assert body["openPrice"] == win[0]["p"] and body["lastPrice"] == win[-1]["p"]
        assert parse8(body["highPrice"]) == max(parse8(t["p"]) for t in win)
        assert parse8(body["lowPrice"]) == min(parse8(t["p"]) for t in win)
        vol = sum(parse8(t["q"]) for t in win)
        quote = sum(parse8(t["p"]) * parse8(t["q"]) for t in win)
        assert parse8(body["volume"]) == vol and parse8(body["quoteVolume"]) == quote // 10**8
        assert parse8(body["weightedAvgPrice"]) == quote // vol
    assert len(trades) > len([t for t in trades if t["T"] >= roll["openTime"]])  # 1m is narrower
    assert t24["lastQty"] == trades[-1]["q"] and t24["askPrice"] and t24["bidPrice"]
    assert {b["symbol"] for b in every} == {"BTCUSDT", "ETHUSDT"}
    assert mini == [{k: t24[k] for k in mini[0]}] and "priceChange" not in mini[0]
    assert price == {"symbol": "BTCUSDT", "price": trades[-1]["p"]}
    assert parse8(book["bidPrice"]) < parse8(book["askPrice"])
    assert last_agg["p"] in (book["bidPrice"], book["askPrice"])
    win5 = [t for t in trades if t["T"] >= server_time // 60_000 * 60_000 - 4 * 60_000]
    v5 = sum(parse8(t["q"]) for t in win5)
    assert avg == {
        "mins": 5,
        "price": f"{sum(parse8(t['p']) * parse8(t['q']) for t in win5) // v5 / 1e8:.8f}",
        "closeTime": trades[-1]["T"],
    }


async def test_default_clock_is_the_wall_clock() -> None:
    for fast in (False, True):
        config = cfg(
            start_time_us=None,
            fast=fast,
            rate=200.0,
            max_trades=500 if fast else None,
            wait_for_subscribers=1,
        )
        async with (
            Simulator(config) as sim,
            connect(sim.ws_url + "/ws/btcusdt@trade", max_queue=None) as ws,
            httpx.AsyncClient(base_url=sim.rest_url) as http,
        ):
            first = json.loads(await ws.recv())
            await asyncio.sleep(0.3)
            server = (await http.get("/api/v3/time")).json()["serverTime"]
            info = (await http.get("/api/v3/exchangeInfo")).json()["serverTime"]
            now = time.time() * 1000
            await sim.wait_done(20) if fast else None
            last_t = sim.truth.last_time_us // 1000
        assert abs(first["T"] - now) < 5_000, fast
        assert abs(server - now) < 1_000 and abs(info - now) < 1_000
        assert (
            last_t <= time.time() * 1000 + 50
        )  # never ahead of real time, even as fast as possible


async def test_fixed_start_paced_clock_agrees_everywhere() -> None:
    config = cfg(rate=500.0, lifetime=1.0)
    async with (
        Simulator(config) as sim,
        connect(sim.ws_url + "/ws/btcusdt@trade") as ws,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):
        msgs = [json.loads(m) async for m in ws]  # until the lifetime closes it
        server = (await http.get("/api/v3/time")).json()["serverTime"]
    at = next(i for i, m in enumerate(msgs) if m.get("e") == "serverShutdown")
    shutdown = msgs[at]
    before = [m for m in msgs[:at] if m.get("e") == "trade"]
    after = [m for m in msgs[at:] if m.get("e") == "trade"]
    assert before and after  # the notice comes before the close (half the lifetime here)
    start = DEFAULT_START_TIME_US // 1000
    assert start <= before[0]["T"] <= start + 1000
    assert before[-1]["T"] <= shutdown["E"] <= after[0]["T"]  # on the market's clock
    assert shutdown["event"] == {"e": "serverShutdown", "E": shutdown["E"]}
    assert 0 <= server - shutdown["E"] < 5_000
