"""Conformance: client libraries from PyPI (ccxt, python-binance, cryptofeed) as their users call them,
against the simulator on 127.0.0.1; values checked against the simulator's REST."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import aiohttp.connector as aiohttp_connector
import ccxt.pro as ccxtpro
import httpx
import pytest
from binance import AsyncClient, BinanceSocketManager
from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import CANDLES, L2_BOOK, TICKER, TRADES
from cryptofeed.exchanges import Binance

from marketsim.server import Simulator
from marketsim.testing import SimulatorProcess
from marketsim.tls import self_signed_cert

from .conftest import cfg

LIVE = {"start_time_us": None, "rate": 400.0, "symbols": ("BTCUSDT", "ETHUSDT")}


def _ccxt(sim: Simulator) -> Any:
    ex = ccxtpro.binance(
        {
            "options": {
                "defaultType": "spot",
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
            }
        }
    )
    api = ex.urls["api"]
    for key in ("public", "private", "v1", "v3"):
        if key in api:
            api[key] = sim.rest_url + "/api/v3"
    api["ws"]["spot"] = sim.ws_url + "/ws"
    return ex


async def test_ccxt_watches_trades_tickers_klines() -> None:
    async with Simulator(cfg(**LIVE)) as sim, httpx.AsyncClient(base_url=sim.rest_url) as http:
        ex = _ccxt(sim)
        try:
            markets = await ex.load_markets()
            assert {"BTC/USDT", "ETH/USDT"} <= set(markets)
            trades = await asyncio.wait_for(ex.watch_trades("BTC/USDT"), 10)
            ticker = await asyncio.wait_for(ex.watch_ticker("BTC/USDT"), 10)
            ohlcv = await asyncio.wait_for(ex.watch_ohlcv("BTC/USDT", "5m"), 10)
            fetched = await ex.fetch_ohlcv("BTC/USDT", "5m")
        finally:
            await ex.close()
        rest_trades = (
            await http.get(
                "/api/v3/historicalTrades",
                params={"symbol": "BTCUSDT", "fromId": trades[0]["id"], "limit": 1},
            )
        ).json()
        rest_5m = (
            await http.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "5m"})
        ).json()
    assert rest_trades[0]["id"] == int(trades[0]["id"])
    assert float(rest_trades[0]["price"]) == trades[0]["price"]
    assert ticker["symbol"] == "BTC/USDT" and ticker["last"] > 0 and ticker["baseVolume"] > 0
    assert ohlcv[-1][0] == rest_5m[-1][0] == fetched[-1][0]  # the same open candle
    assert ohlcv[-1][1] == float(rest_5m[-1][1])  # ... with the same open price
    assert ohlcv[-1][5] <= float(rest_5m[-1][5])  # and no more volume than REST has seen since


async def test_python_binance_sockets_and_rest() -> None:
    async with Simulator(cfg(**LIVE)) as sim:
        client_cls = type("SimClient", (AsyncClient,), {"API_URL": sim.rest_url + "/api"})
        client = await client_cls.create()  # pings and reads the server time at start
        try:
            bm_cls = type("SimSockets", (BinanceSocketManager,), {"STREAM_URL": sim.ws_url + "/"})
            bm = bm_cls(client)
            got: dict[str, Any] = {}
            sockets = {
                "trade": bm.trade_socket("BTCUSDT"),
                "kline": bm.kline_socket("BTCUSDT", "15m"),
                "ticker": bm.symbol_ticker_socket("BTCUSDT"),
                "mini": bm.symbol_miniticker_socket("BTCUSDT"),
                "multi": bm.multiplex_socket(["btcusdt@aggTrade", "ethusdt@trade"]),
            }
            for name, sock in sockets.items():
                async with sock as s:
                    got[name] = await asyncio.wait_for(s.recv(), 10)
            ticker = await client.get_ticker(symbol="BTCUSDT")
            klines = await client.get_klines(symbol="BTCUSDT", interval="15m")
            avg = await client.get_avg_price(symbol="BTCUSDT")
            server = await client.get_server_time()
        finally:
            await client.close_connection()
    assert got["trade"]["e"] == "trade" and got["trade"]["s"] == "BTCUSDT"
    assert got["kline"]["k"]["i"] == "15m" and got["kline"]["k"]["t"] == klines[-1][0]
    assert got["ticker"]["e"] == "24hrTicker" and got["mini"]["e"] == "24hrMiniTicker"
    assert got["multi"]["stream"] in ("btcusdt@aggTrade", "ethusdt@trade")
    assert int(ticker["count"]) >= got["ticker"]["n"] > 0
    assert avg["mins"] == 5 and float(avg["price"]) > 0
    assert abs(server["serverTime"] - got["trade"]["T"]) < 60_000  # one clock


async def test_cryptofeed_trades_ticker_candles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cryptofeed insists on ``wss://``: the simulator serves TLS with a self-signed certificate
    the client is told to trust. It loads its symbols with a blocking REST call, so the
    simulator runs as a child process."""
    cert, key = self_signed_cert(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    # the book's REST snapshot goes through aiohttp, whose verifying context was built at import
    # (before SSL_CERT_FILE was set): it trusts the certificate too (for this process)
    aiohttp_connector._SSL_CONTEXT_VERIFIED.load_verify_locations(str(cert))
    args = [
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--rate",
        "400",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ]
    with SimulatorProcess(args, tmp_path / "sim") as sim:

        class SimBinance(Binance):  # type: ignore[misc]
            websocket_endpoints: ClassVar = [WebsocketEndpoint(sim.ws_url)]
            rest_endpoints: ClassVar = [
                RestEndpoint(
                    sim.rest_url,
                    routes=Routes(
                        "/api/v3/exchangeInfo", l2book="/api/v3/depth?symbol={}&limit={}"
                    ),
                )
            ]

        got: dict[str, Any] = {}
        books: list[tuple[int, bool, Decimal, Decimal]] = []
        three = asyncio.Event()

        async def on_event(obj: Any, receipt_time: float) -> None:
            got.setdefault(type(obj).__name__, obj)
            if len(got) == 3 and len(books) >= 20:
                three.set()

        async def on_book(book: Any, receipt_time: float) -> None:
            # cryptofeed's own L2 book: REST snapshot + @depth@100ms diffs, sequence-checked
            # (a break resets it and fetches a new snapshot: a second delta-less callback)
            bid = book.book.bids.index(0)[0]
            ask = book.book.asks.index(0)[0]
            books.append((book.sequence_number, book.delta is None, bid, ask))
            if len(got) == 3 and len(books) >= 20:
                three.set()

        fh = FeedHandler(config={"log": {"disabled": True}, "uvloop": False})
        fh.add_feed(
            SimBinance(
                symbols=["BTC-USDT"],
                channels=[TRADES, TICKER, CANDLES, L2_BOOK],
                callbacks={
                    TRADES: on_event,
                    TICKER: on_event,
                    CANDLES: on_event,
                    L2_BOOK: on_book,
                },
                candle_closed_only=False,  # the open candle too (else: wait for the minute)
            )
        )
        fh.run(start_loop=False, install_signal_handlers=False)
        try:
            await asyncio.wait_for(three.wait(), 20)
        finally:
            await fh.stop_async()
        async with httpx.AsyncClient(base_url=sim.rest_url, verify=str(cert)) as http:
            trade = (
                await http.get(
                    "/api/v3/aggTrades",
                    params={"symbol": "BTCUSDT", "fromId": got["Trade"].id, "limit": 1},
                )
            ).json()[0]
            klines = (
                await http.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m"})
            ).json()
            depth = (await http.get("/api/v3/depth", params={"symbol": "BTCUSDT"})).json()
    assert [snapshot for _s, snapshot, _b, _a in books].count(True) == 1  # never reset
    seqs = [seq for seq, *_ in books]
    assert seqs == sorted(seqs) and seqs[-1] <= depth["lastUpdateId"]
    assert all(bid < ask for _s, _n, bid, ask in books)
    # cryptofeed's Binance trades are the aggTrade stream: the id is the aggTrade id
    assert str(got["Trade"].id) == str(trade["a"]) and got["Trade"].price == Decimal(trade["p"])
    assert got["Ticker"].bid < got["Ticker"].ask  # from @bookTicker
    candle = got["Candle"]
    assert candle.interval == "1m" and int(candle.start * 1000) in {k[0] for k in klines}


async def test_ccxt_order_book_rest_and_watched() -> None:
    """ccxt's ``fetch_order_book`` (REST depth) and ``watch_order_book`` (its own local book from
    ``@depth@100ms`` diffs and a REST snapshot, Binance's procedure with its sequence checks):
    once the market ends, ccxt's book is the simulator's REST book level by level."""
    config = cfg(**(LIVE | {"max_trades": 2500, "rate": 500.0}))
    async with Simulator(config) as sim, httpx.AsyncClient(base_url=sim.rest_url) as http:
        ex = _ccxt(sim)
        try:
            await ex.load_markets()
            fetched = await ex.fetch_order_book("BTC/USDT", 10)
            book = await asyncio.wait_for(ex.watch_order_book("BTC/USDT"), 10)
            first_nonce = book["nonce"]
            await sim.wait_done(20)
            final = (
                await http.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 1000})
            ).json()
            async with asyncio.timeout(10):
                while book["nonce"] != final["lastUpdateId"]:
                    book = await ex.watch_order_book("BTC/USDT")
        finally:
            await ex.close()
    assert len(fetched["bids"]) == len(fetched["asks"]) == 10
    assert fetched["bids"][0][0] < fetched["asks"][0][0] and isinstance(fetched["nonce"], int)
    assert book["nonce"] > first_nonce
    assert [[float(p), float(q)] for p, q in final["bids"]] == [list(x) for x in book["bids"]]
    assert [[float(p), float(q)] for p, q in final["asks"]] == [list(x) for x in book["asks"]]


async def test_python_binance_order_book() -> None:
    async with Simulator(cfg(**LIVE)) as sim, httpx.AsyncClient(base_url=sim.rest_url) as http:
        client_cls = type("SimClient", (AsyncClient,), {"API_URL": sim.rest_url + "/api"})
        client = await client_cls.create()
        try:
            await asyncio.sleep(0.3)
            depth = await client.get_order_book(symbol="BTCUSDT", limit=20)
            ticker = await client.get_orderbook_ticker(symbol="BTCUSDT")
        finally:
            await client.close_connection()
        again = (await http.get("/api/v3/depth", params={"symbol": "BTCUSDT"})).json()
    assert len(depth["bids"]) == len(depth["asks"]) == 20
    assert again["lastUpdateId"] >= depth["lastUpdateId"] > 0
    assert float(depth["bids"][0][0]) < float(depth["asks"][0][0])
    assert float(ticker["bidPrice"]) < float(ticker["askPrice"])
