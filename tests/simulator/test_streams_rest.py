"""Derived streams agree with the trades; REST agrees with what was streamed."""

from __future__ import annotations

import json

import httpx

from marketsim.server import Simulator
from marketsim.units import parse8

from .conftest import cfg, connect, drain

STREAMS = "btcusdt@trade/btcusdt@aggTrade/btcusdt@bookTicker/btcusdt@kline_1m"


async def test_derived_streams_consistent_with_trades() -> None:
    config = cfg(
        fast=True, max_trades=3000, wait_for_subscribers=1, symbols=("BTCUSDT",), rate=20.0
    )
    async with Simulator(config) as sim, connect(sim.ws_url + "/stream?streams=" + STREAMS) as ws:
        await sim.wait_done(10)
        frames = [json.loads(m) for m in await drain(ws)]
    trades = [f["data"] for f in frames if f["stream"] == "btcusdt@trade"]
    aggs = [f["data"] for f in frames if f["stream"] == "btcusdt@aggTrade"]
    books = [f["data"] for f in frames if f["stream"] == "btcusdt@bookTicker"]
    klines = [f["data"] for f in frames if f["stream"] == "btcusdt@kline_1m"]
    by_id = {t["t"]: t for t in trades}
    assert aggs[0]["f"] == trades[0]["t"]
    covered = 0
    for a in aggs:
        members = [by_id[i] for i in range(a["f"], a["l"] + 1)]
        assert all(t["p"] == a["p"] and t["T"] == a["T"] and t["m"] == a["m"] for t in members)
        assert sum(parse8(t["q"]) for t in members) == parse8(a["q"])
        covered += len(members)
    assert covered == len(trades)
    assert [a["a"] for a in aggs] == list(range(aggs[0]["a"], aggs[0]["a"] + len(aggs)))
    assert len(books) == len(aggs)
    for a, b in zip(aggs, books, strict=True):
        # the taker hit the best bid (m) or lifted the best ask: after it, that side's best is
        # the same price (the level had more) or a worse one (the level is gone)
        p, bid, ask = parse8(a["p"]), parse8(b["b"]), parse8(b["a"])
        assert bid < ask
        assert (bid <= p < ask) if a["m"] else (bid < p <= ask)
        assert parse8(b["b"]) < parse8(b["a"])
    assert [b["u"] for b in books] == sorted(b["u"] for b in books)
    closed = [k["k"] for k in klines if k["k"]["x"]]
    assert closed  # 3000 trades at 20/s span minute boundaries
    k = closed[0]
    in_k = [t for t in trades if k["t"] <= t["T"] <= k["T"]]
    assert k["n"] == len(in_k) and k["f"] == in_k[0]["t"] and k["L"] == in_k[-1]["t"]
    assert k["c"] == in_k[-1]["p"] and parse8(k["v"]) == sum(parse8(t["q"]) for t in in_k)
    assert parse8(k["h"]) == max(parse8(t["p"]) for t in in_k)


async def test_rest_endpoints_match_stream() -> None:
    config = cfg(fast=True, max_trades=1500, wait_for_subscribers=1, symbols=("BTCUSDT", "ETHUSDT"))
    async with (
        Simulator(config) as sim,
        connect(sim.ws_url + "/stream?streams=btcusdt@trade/btcusdt@aggTrade") as ws,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):
        await sim.wait_done(10)
        frames = [json.loads(m) for m in await drain(ws)]
        trades = [f["data"] for f in frames if f["stream"] == "btcusdt@trade"]
        aggs = [f["data"] for f in frames if f["stream"] == "btcusdt@aggTrade"]
        assert len(trades) == sim.stats()["symbols"]["BTCUSDT"]["count"]

        assert (await http.get("/api/v3/ping")).json() == {}
        assert isinstance((await http.get("/api/v3/time")).json()["serverTime"], int)
        info = (await http.get("/api/v3/exchangeInfo")).json()
        syms = {s["symbol"]: s for s in info["symbols"]}
        assert set(syms) == {"BTCUSDT", "ETHUSDT"}
        btc = syms["BTCUSDT"]
        assert (
            btc["status"] == "TRADING" and btc["baseAsset"] == "BTC" and btc["quoteAsset"] == "USDT"
        )
        filters = {f["filterType"]: f for f in btc["filters"]}
        assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"
        assert filters["LOT_SIZE"]["stepSize"] == "0.00001000"
        one = (await http.get("/api/v3/exchangeInfo", params={"symbol": "ETHUSDT"})).json()
        assert [s["symbol"] for s in one["symbols"]] == ["ETHUSDT"]
        bad = await http.get("/api/v3/exchangeInfo", params={"symbol": "NOPE"})
        assert bad.status_code == 400 and bad.json() == {"code": -1121, "msg": "Invalid symbol."}

        recent = (
            await http.get("/api/v3/trades", params={"symbol": "BTCUSDT", "limit": 50})
        ).json()
        assert [r["id"] for r in recent] == [t["t"] for t in trades[-50:]]
        r0, t0 = recent[0], trades[-50]
        assert (r0["price"], r0["qty"], r0["time"], r0["isBuyerMaker"]) == (
            t0["p"],
            t0["q"],
            t0["T"],
            t0["m"],
        )
        assert set(r0) == {"id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"}

        gap_from = trades[100]["t"]  # backfill a "gap" by trade id
        hist = (
            await http.get(
                "/api/v3/historicalTrades",
                params={"symbol": "BTCUSDT", "fromId": gap_from, "limit": 10},
            )
        ).json()
        assert [h["id"] for h in hist] == [t["t"] for t in trades[100:110]]

        a = (
            await http.get(
                "/api/v3/aggTrades",
                params={"symbol": "BTCUSDT", "fromId": aggs[5]["a"], "limit": 3},
            )
        ).json()
        assert a == [{k: x[k] for k in ("a", "p", "q", "f", "l", "T", "m", "M")} for x in aggs[5:8]]
        t_start, t_end = aggs[10]["T"], aggs[20]["T"]
        win = (
            await http.get(
                "/api/v3/aggTrades",
                params={"symbol": "BTCUSDT", "startTime": t_start, "endTime": t_end},
            )
        ).json()
        assert [w["a"] for w in win] == [x["a"] for x in aggs if t_start <= x["T"] <= t_end]
        newest = (
            await http.get("/api/v3/aggTrades", params={"symbol": "BTCUSDT", "limit": 5})
        ).json()
        assert [w["a"] for w in newest] == [x["a"] for x in aggs[-5:]]
        since = (
            await http.get(
                "/api/v3/aggTrades", params={"symbol": "BTCUSDT", "startTime": aggs[-3]["T"]}
            )
        ).json()
        assert since[-1]["a"] == aggs[-1]["a"] and all(w["T"] >= aggs[-3]["T"] for w in since)
        us = (
            await http.get(
                "/api/v3/aggTrades",
                params={"symbol": "BTCUSDT", "limit": 1},
                headers={"X-MBX-TIME-UNIT": "MICROSECOND"},
            )
        ).json()
        assert len(str(us[0]["T"])) == 16
        assert (await http.get("/api/v3/trades", params={"symbol": "NOPE"})).status_code == 400
        assert (await http.get("/api/v3/trades")).status_code == 400
        assert (
            await http.get("/api/v3/aggTrades", params={"symbol": "BTCUSDT", "fromId": "x"})
        ).status_code == 400
        assert (await http.get("/api/v3/nothing")).status_code == 404
