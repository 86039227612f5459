"""Order books through the real server: diff streams + REST depth rebuilt with Binance's documented
local-book procedure, partial books, bookTicker, REST errors and weights, replay of the genuine
recordings, and the depth faults."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from marketsim.faults import FaultConfig
from marketsim.replay import replay_factory
from marketsim.server import Simulator
from marketsim.units import parse8

from .conftest import cfg, connect
from .test_replay import SHARED

Levels = dict[int, int]


class LocalBook:
    """A client's book, kept as Binance documents: buffer the diffs, fetch a snapshot, drop the
    diffs with u <= lastUpdateId, the first applied has U <= lastUpdateId + 1 <= u, then every
    U = previous u + 1."""

    def __init__(self) -> None:
        self.buffer: list[dict[str, Any]] = []
        self.last_id: int | None = None
        self.bids: Levels = {}
        self.asks: Levels = {}
        self.applied = 0

    def load(self, snap: dict[str, Any]) -> None:
        first_u = self.buffer[0]["U"] if self.buffer else None
        assert first_u is None or snap["lastUpdateId"] >= first_u - 1, "stale snapshot"
        self.last_id = snap["lastUpdateId"]
        self.bids = {parse8(p): parse8(q) for p, q in snap["bids"]}
        self.asks = {parse8(p): parse8(q) for p, q in snap["asks"]}
        buffered, self.buffer = self.buffer, []
        for d in buffered:
            self.on_diff(d)

    def on_diff(self, d: dict[str, Any]) -> None:
        assert d["e"] == "depthUpdate" and isinstance(d["U"], int) and isinstance(d["u"], int)
        if self.last_id is None:
            self.buffer.append(d)
            return
        if d["u"] <= self.last_id:
            return
        if self.applied == 0:
            assert d["U"] <= self.last_id + 1 <= d["u"], (d["U"], d["u"], self.last_id)
        else:
            assert d["U"] == self.last_id + 1, ("break", d["U"], self.last_id)
        for side, key in ((self.bids, "b"), (self.asks, "a")):
            for p, q in d[key]:
                assert isinstance(p, str) and isinstance(q, str)
                if parse8(q) == 0:
                    side.pop(parse8(p), None)
                else:
                    side[parse8(p)] = parse8(q)
        self.last_id = d["u"]
        self.applied += 1

    def top(self, n: int | None = None) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        bids = sorted(self.bids.items(), reverse=True)[:n]
        asks = sorted(self.asks.items())[:n]
        return bids, asks


async def recv_for(ws: Any, seconds: float) -> list[Any]:
    """Every message received within ``seconds`` (the market keeps going: no idle end)."""
    out: list[Any] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            out.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return out


def _levels(rows: list[list[str]]) -> list[tuple[int, int]]:
    return [(parse8(p), parse8(q)) for p, q in rows]


STREAMS = "btcusdt@depth@100ms/btcusdt@depth/btcusdt@bookTicker/btcusdt@trade"


async def test_diffs_and_rest_rebuild_the_book_level_by_level() -> None:
    config = cfg(rate=1500.0, max_trades=2500, symbols=("BTCUSDT", "ETHUSDT"))
    async with (
        Simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
        connect(sim.ws_url + "/stream?streams=" + STREAMS) as ws,
    ):
        fast, slow = LocalBook(), LocalBook()
        frames: list[dict[str, Any]] = []
        snap_fetched = False
        async with asyncio.timeout(20):
            while True:
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 0.6))
                except TimeoutError:
                    if sim.truth.done:
                        break
                    continue
                frames.append(msg)
                if msg["stream"] == "btcusdt@depth@100ms":
                    fast.on_diff(msg["data"])
                elif msg["stream"] == "btcusdt@depth":
                    slow.on_diff(msg["data"])
                if not snap_fetched and fast.buffer and slow.buffer:
                    r = await http.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 5000})
                    assert r.status_code == 200 and r.headers["X-MBX-USED-WEIGHT"] == "250"
                    fast.load(r.json())
                    slow.load(r.json())
                    snap_fetched = True
        final = (await http.get("/api/v3/depth", params={"symbol": "BTCUSDT"})).json()
        full = (await http.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 1000})).json()
        ticker = (await http.get("/api/v3/ticker/bookTicker", params={"symbol": "BTCUSDT"})).json()
    assert snap_fetched and fast.applied > 5 and slow.applied >= 1
    # the market ended: the last diffs went out, so the books meet REST's exactly
    assert fast.last_id == slow.last_id == final["lastUpdateId"] == full["lastUpdateId"]
    for book in (fast, slow):
        bids, asks = book.top()
        assert bids == _levels(full["bids"]) and asks == _levels(full["asks"])
        assert book.top(100) == (_levels(final["bids"]), _levels(final["asks"]))
        assert bids[0][0] < asks[0][0]
    assert len(final["bids"]) == 100 and isinstance(final["lastUpdateId"], int)
    # bookTicker: the book's best levels, u its update id; the last one is the final book's
    books = [m["data"] for m in frames if m["stream"] == "btcusdt@bookTicker"]
    last = books[-1]
    bids, asks = fast.top(1)
    assert last["u"] == final["lastUpdateId"]
    assert (parse8(last["b"]), parse8(last["B"]), parse8(last["a"]), parse8(last["A"])) == (
        *bids[0],
        *asks[0],
    )
    assert (ticker["bidPrice"], ticker["askPrice"]) == (last["b"], last["a"])
    # each bookTicker follows its order: the trade hit the best bid (m) or lifted the best ask
    trades = [m["data"] for m in frames if m["stream"] == "btcusdt@trade"]
    assert len(trades) >= len(books) > 100


async def test_partial_books_are_the_top_of_the_rebuilt_book() -> None:
    """Every partial book whose lastUpdateId the rebuilt book has reached equals its top N."""
    config = cfg(rate=1000.0, max_trades=2000, symbols=("ETHUSDT",))
    streams = "ethusdt@depth@100ms/ethusdt@depth5@100ms/ethusdt@depth20@100ms/ethusdt@depth10"
    async with (
        Simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
        connect(sim.ws_url + "/stream?streams=" + streams) as ws,
    ):
        book = LocalBook()
        checked = 0
        async with asyncio.timeout(20):
            while True:
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 0.6))
                except TimeoutError:
                    break
                d = msg["data"]
                if msg["stream"] == "ethusdt@depth@100ms":
                    book.on_diff(d)
                    if book.last_id is None:
                        snap = await http.get(
                            "/api/v3/depth", params={"symbol": "ETHUSDT", "limit": 5000}
                        )
                        book.load(snap.json())
                    continue
                n = int(msg["stream"].split("@")[1][5:])
                assert len(d["bids"]) == len(d["asks"]) == n
                if book.last_id == d["lastUpdateId"] and book.applied:
                    assert book.top(n) == (_levels(d["bids"]), _levels(d["asks"]))
                    checked += 1
    assert checked >= 5


async def test_rest_depth_errors_and_weights() -> None:
    async with Simulator(cfg(rate=200.0)) as sim, httpx.AsyncClient(base_url=sim.rest_url) as http:
        await asyncio.sleep(0.2)

        async def get(**params: Any) -> httpx.Response:
            return await http.get("/api/v3/depth", params=params)

        r = await get(symbol="NOPEUSDT")
        assert r.status_code == 400 and r.json() == {"code": -1121, "msg": "Invalid symbol."}
        r = await get()
        assert r.status_code == 400 and r.json()["code"] == -1102
        for bad in ("abc", "0", "-5", "1.5"):
            r = await get(symbol="BTCUSDT", limit=bad)
            assert r.status_code == 400 and r.json()["code"] == -1100, bad
        used = []
        for limit in (None, 100, 101, 500, 1000, 5000, 9999):
            params = {"symbol": "btcusdt"} | ({"limit": limit} if limit else {})
            before = int((await http.get("/api/v3/ping")).headers["X-MBX-USED-WEIGHT"])
            r = await http.get("/api/v3/depth", params=params)
            assert r.status_code == 200
            used.append(int(r.headers["X-MBX-USED-WEIGHT"]) - before)
            body = r.json()
            assert set(body) == {"lastUpdateId", "bids", "asks"}
            n = min(limit or 100, 5000)
            assert 1 <= len(body["bids"]) <= n and len(body["asks"]) <= n
        assert used == [5, 5, 25, 25, 50, 250, 250]
        r = await get(symbol="BTCUSDT", limit=3)
        b = r.json()
        assert len(b["bids"]) == len(b["asks"]) == 3
        prices = [parse8(p) for p, _ in b["bids"]]
        assert prices == sorted(prices, reverse=True) and parse8(b["asks"][0][0]) > prices[0]
        assert all(isinstance(p, str) and isinstance(q, str) for p, q in b["bids"] + b["asks"])


async def test_bookless_market_has_no_depth() -> None:
    """``--book-levels 0``: trades only (the old generator); REST depth says so, 503."""
    async with (
        Simulator(cfg(rate=200.0, book_levels=0)) as sim,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):
        r = await http.get("/api/v3/depth", params={"symbol": "BTCUSDT"})
    assert r.status_code == 503 and r.json()["code"] == -1001


# ---------- faults ----------


async def test_dropped_diff_shows_as_a_gap() -> None:
    config = cfg(
        rate=1500.0,
        symbols=("BTCUSDT",),
        faults=FaultConfig(depth_gap_rate=0.3, seed=3, connections=1),
    )
    async with Simulator(config) as sim, connect(sim.ws_url + "/ws/btcusdt@depth@100ms") as ws:
        diffs = await recv_for(ws, 1.5)
        counts = sim.stats()["faults"]["0"]
        # an unfaulted connection sees the whole chain over the same time
        async with connect(sim.ws_url + "/ws/btcusdt@depth@100ms") as clean:
            whole = await recv_for(clean, 1.0)
    gaps = sum(1 for a, b in itertools.pairwise(diffs) if b["U"] != a["u"] + 1)
    assert len(diffs) >= 8 and gaps >= 1
    assert counts["depth_gaps"] >= gaps  # (a dropped last diff leaves no visible gap)
    assert all(b["U"] > a["u"] for a, b in itertools.pairwise(diffs))
    assert all(b["U"] == a["u"] + 1 for a, b in itertools.pairwise(whole))


async def test_stale_snapshot_is_older_than_the_stream() -> None:
    faults = FaultConfig(stale_snapshots=1, stale_snapshot_age=2.0)
    config = cfg(rate=1000.0, speed=4.0, symbols=("BTCUSDT",), faults=faults)
    async with (
        Simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):
        await asyncio.sleep(1.2)  # 4.8 s of market time: stale copies are 2 s old by now
        async with connect(sim.ws_url + "/ws/btcusdt@depth@100ms") as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 3))
            stale = (await http.get("/api/v3/depth", params={"symbol": "BTCUSDT"})).json()
            fresh = (await http.get("/api/v3/depth", params={"symbol": "BTCUSDT"})).json()
            book = LocalBook()
            book.on_diff(first)
            with pytest.raises(AssertionError, match="stale"):
                book.load(stale)
            book.load(fresh)  # the refetch fits
            for m in await recv_for(ws, 0.5):
                book.on_diff(m)
        stats = sim.stats()
    assert stale["lastUpdateId"] < first["U"] - 1 <= fresh["lastUpdateId"]
    assert book.applied >= 1 and stats["stale_snapshots_served"] == 1


# ---------- replay of the genuine recordings ----------


def _recorded(path: Path) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """(the REST snapshot line, [(stream, raw data text)] of the depth and bookTicker frames)."""
    snap = None
    frames = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = line.rstrip("\n").partition(" ")[2]
            obj = json.loads(text)
            if "stream" not in obj:
                snap = obj
                continue
            if "@depth" in obj["stream"] or obj["stream"].endswith("@bookTicker"):
                data = text[text.index('"data":') + 7 : text.rindex("}")]
                frames.append((obj["stream"], data))
    return snap, frames


def _independent_book(snap: dict[str, Any], diffs: list[dict[str, Any]]) -> LocalBook:
    book = LocalBook()
    for d in diffs:
        book.on_diff(d)
    book.load(snap)
    return book


RECORDED = [
    p
    for p in (
        SHARED / "hftbacktest_spot_btcusdt_20240808.gz",
        SHARED / "hftbacktest_spot_ethusdt_20240808.gz",
    )
    if p.is_file()
]


@pytest.mark.skipif(not RECORDED, reason="no genuine recordings in shared/data")
@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
async def test_replayed_depth_rebuilds_the_recorded_book(path: Path) -> None:
    """The recorded diffs and bookTickers go out verbatim, in order; a client that fetches REST
    depth mid-replay and follows the procedure ends with the book an independent
    reconstruction of the file gives, level by level, and so does REST at the end."""
    snap, recorded = _recorded(path)
    assert snap is not None
    sym = recorded[0][0].split("@")[0]
    streams = f"{sym}@depth@100ms/{sym}@bookTicker/{sym}@depth/{sym}@depth5"
    config = cfg(speed=100.0, wait_for_subscribers=1, source_factory=replay_factory([path]))
    async with (
        Simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
        connect(sim.ws_url + "/stream?streams=" + streams) as ws,
    ):
        book, slow = LocalBook(), LocalBook()
        got: list[tuple[str, str]] = []
        partial = 0
        early = None
        async with asyncio.timeout(60):
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    break
                assert isinstance(raw, str)
                obj = json.loads(raw)
                if obj["stream"].endswith("@depth"):  # 1000 ms, merged from the recorded diffs
                    slow.on_diff(obj["data"])
                    continue
                if obj["stream"].endswith("@depth5"):
                    d = obj["data"]
                    if book.applied and d["lastUpdateId"] == book.last_id:
                        assert book.top(5) == (_levels(d["bids"]), _levels(d["asks"]))
                        partial += 1
                    continue
                got.append((obj["stream"], raw[raw.index('"data":') + 7 : -1]))
                if obj["stream"].endswith("@depth@100ms"):
                    book.on_diff(obj["data"])
                    if book.last_id is None and len(book.buffer) >= 3:
                        params = {"symbol": sym.upper(), "limit": 5000}
                        r = await http.get("/api/v3/depth", params=params)
                        if r.status_code == 503:
                            early = r.json()
                            continue
                        book.load(r.json())
                        slow.load(r.json())
        await sim.wait_done(5)
        final = (
            await http.get("/api/v3/depth", params={"symbol": sym.upper(), "limit": 5000})
        ).json()
        stats = sim.stats()
    assert early is None or early["code"] == -1001
    assert got == recorded  # verbatim, in recorded order
    diffs = [json.loads(d) for s, d in recorded if s.endswith("@depth@100ms")]
    ref = _independent_book(snap, diffs)
    assert book.applied > 10 and book.last_id == ref.last_id == diffs[-1]["u"]
    assert book.top() == ref.top() == slow.top() and slow.last_id == ref.last_id
    assert slow.applied >= 1 and partial >= 1  # (how many: how far the client lags the replay)
    assert final["lastUpdateId"] == ref.last_id
    assert (_levels(final["bids"]), _levels(final["asks"])) == ref.top()
    assert stats["replay_book_breaks"] == 0


def test_cli_book_and_depth_fault_options() -> None:
    from marketsim.cli import build_parser, config_from_args

    args = [
        "--book-levels",
        "7",
        "--fault-depth-gap-rate",
        "0.2",
        "--fault-stale-snapshots",
        "2",
        "--fault-stale-snapshot-age",
        "3",
    ]
    c = config_from_args(build_parser().parse_args(args))
    assert c.book_levels == 7
    assert (c.faults.depth_gap_rate, c.faults.stale_snapshots, c.faults.stale_snapshot_age) == (
        0.2,
        2,
        3.0,
    )
    assert c.faults.applies_to(0)  # the depth gap is a per-connection fault
    default = config_from_args(build_parser().parse_args([]))
    assert default.book_levels == 100 and not default.faults.applies_to(0)
