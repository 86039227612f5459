"""Replay readers (recorded frames, archive CSVs in every variant) and replay through the server."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import httpx
import pytest

from marketsim.model import Order, RawFrame
from marketsim.replay import ReplaySource, read_archive, read_recorded, split_frame
from marketsim.server import Simulator
from marketsim.units import fmt8
from tests.shared_data import SHARED_DATA as SHARED

from .conftest import cfg, connect, drain

TRADES = [
    (14764081, "7599.00000000", "0.22477000", "1708.02723000", 1518048000016, "True", "True"),
    (14764082, "7599.50000000", "0.10000000", "759.95000000", 1518048000020, "False", "True"),
    (14764083, "7600.00000000", "0.01000000", "76.00000000", 1518048000100, "False", "True"),
]
AGG = [
    (100, "7599.00000000", "0.30000000", 14764081, 14764083, 1518048000016, "true", "true"),
    (101, "7600.00000000", "0.00000002", 14764084, 14764086, 1518048000200, "false", "true"),
]


def _csv(rows: list[tuple[object, ...]], header: str | None = None, micro: bool = False) -> str:
    lines = [header] if header else []
    for r in rows:
        cells = list(r)
        if micro:
            ti = 4 if len(r) == 7 else 5
            cells[ti] = int(cells[ti]) * 1000 + 123  # type: ignore[call-overload]
        lines.append(",".join(str(c) for c in cells))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("micro", [False, True])
@pytest.mark.parametrize("zipped", [False, True])
def test_archive_trades_variants(tmp_path: Path, header: bool, micro: bool, zipped: bool) -> None:
    text = _csv(
        TRADES, "id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch" if header else None, micro
    )
    name = "BTCUSDT-trades-2018-02-08.csv"
    path = tmp_path / name
    if zipped:
        path = tmp_path / (name[:-4] + ".zip")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(name, text)
    else:
        path.write_text(text)
    orders = list(read_archive(path))
    assert [o.first_id for o in orders] == [14764081, 14764082, 14764083]
    assert all(o.symbol == "BTCUSDT" and len(o.qtys) == 1 for o in orders)
    assert fmt8(orders[0].price) == "7599.00000000" and fmt8(orders[0].qtys[0]) == "0.22477000"
    assert orders[0].buyer_maker is True and orders[1].buyer_maker is False
    assert orders[0].time_us == 1518048000016000 + (123 if micro else 0)


@pytest.mark.parametrize("header", [False, True])
def test_archive_agg_trades(tmp_path: Path, header: bool) -> None:
    h = "aggTradeId,price,qty,firstTradeId,lastTradeId,timestamp,isBuyerMaker,isBestMatch"
    path = tmp_path / "data.csv"
    path.write_text(_csv(AGG, h if header else None))
    orders = list(read_archive(path, symbol="ethbtc"))
    assert [(o.agg_id, o.first_id, o.last_id) for o in orders] == [
        (100, 14764081, 14764083),
        (101, 14764084, 14764086),
    ]
    assert sum(orders[0].qtys) == 30_000_000 and orders[0].qtys == [10_000_000] * 3
    assert sum(orders[1].qtys) == 2  # split in 1e-8 units, remainder on the last trade
    assert orders[0].symbol == "ETHBTC" and orders[0].buyer_maker is True


def test_archive_needs_symbol(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text(_csv(TRADES))
    with pytest.raises(ValueError, match="symbol"):
        list(read_archive(p))


def _record(path: Path, frames: list[tuple[int, str]], gz: bool = False, extra: str = "") -> None:
    data = "".join(json.dumps({"recv_time_us": t, "frame": f}) + "\n" for t, f in frames) + extra
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(data)
    else:
        path.write_text(data)


def _trade_frame(sym: str, tid: int, price: str, t_ms: int, combined: bool) -> str:
    p = f'{{"e":"trade","E":{t_ms},"s":"{sym}","t":{tid},"p":"{price}","q":"0.10000000","T":{t_ms},"m":true,"M":true}}'
    return f'{{"stream":"{sym.lower()}@trade","data":{p}}}' if combined else p


@pytest.mark.parametrize("gz", [False, True])
def test_recorded_reader(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / ("rec.jsonl.gz" if gz else "rec.jsonl")
    _record(
        path,
        [
            (1_000_000, _trade_frame("BTCUSDT", 1, "100.00000000", 1000, True)),
            (1_000_100, '{"result":null,"id":1}'),
            (1_000_200, _trade_frame("ETHUSDT", 7, "10.00000000", 1000, False)),
            (
                1_000_300,
                '{"u":5,"s":"BTCUSDT","b":"1.00000000","B":"1.00000000","a":"2.00000000","A":"1.00000000"}',
            ),
            (1_000_400, "not json"),
        ],
        gz,
        extra="garbage line\n\n",
    )
    frames = list(read_recorded(path))
    assert [f.stream for f in frames] == ["btcusdt@trade", "ethusdt@trade", "btcusdt@bookTicker"]
    assert frames[0].payload == _trade_frame("BTCUSDT", 1, "100.00000000", 1000, False).encode()
    assert frames[0].trade is not None and frames[0].trade.trade_id == 1
    assert frames[2].trade is None


def test_split_frame_kinds() -> None:
    k = '{"e":"kline","E":1,"s":"BTCUSDT","k":{"i":"5m"}}'
    assert split_frame(k)[0] == "btcusdt@kline_5m"  # type: ignore[index]
    assert split_frame('{"e":"aggTrade","s":"BNBBTC"}')[0] == "bnbbtc@aggTrade"  # type: ignore[index]
    assert split_frame("[1,2]") is None


def test_merge_in_time_order_and_loop(tmp_path: Path) -> None:
    a = tmp_path / "BTCUSDT-trades-a.csv"
    a.write_text(_csv(TRADES))
    b = tmp_path / "rec.jsonl"
    _record(
        b, [(1518048000018_000, _trade_frame("ETHUSDT", 9, "10.00000000", 1518048000018, True))]
    )
    src = ReplaySource([a, b])
    items = []
    while (it := src.next_item()) is not None:
        items.append(it)
    assert [type(i) for i in items] == [Order, RawFrame, Order, Order]
    times = [i.time_us for i in items]
    assert times == sorted(times)

    looped = ReplaySource([a], loop=True)
    got = [looped.next_item() for _ in range(7)]
    ids = [o.first_id for o in got if isinstance(o, Order)]
    assert ids == sorted(ids) and len(set(ids)) == 7
    ts = [o.time_us for o in got if o is not None]
    assert ts == sorted(ts)


async def test_replay_archive_through_server(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-aggTrades-2018-02-08.csv"
    path.write_text(_csv(AGG))
    csv2 = tmp_path / "ETHBTC-trades-2018-02-08.csv"
    csv2.write_text(_csv([(5, "0.10000000", "1.00000000", "0.1", 1518048000017, "True", "True")]))
    from marketsim.replay import replay_factory

    config = cfg(fast=True, wait_for_subscribers=1, source_factory=replay_factory([path, csv2]))
    async with Simulator(config) as sim:
        url = sim.ws_url + "/stream?streams=btcusdt@trade/btcusdt@aggTrade/ethbtc@trade"
        async with connect(url) as ws:
            frames = [json.loads(m) for m in await drain(ws)]
        stats = sim.stats()
    trades = [f["data"] for f in frames if f["stream"] == "btcusdt@trade"]
    assert [t["t"] for t in trades] == list(range(14764081, 14764087))
    aggs = [f["data"] for f in frames if f["stream"] == "btcusdt@aggTrade"]
    assert [(a["a"], a["f"], a["l"], a["q"]) for a in aggs] == [
        (100, 14764081, 14764083, "0.30000000"),
        (101, 14764084, 14764086, "0.00000002"),
    ]
    assert stats["done"] is True
    assert stats["symbols"]["BTCUSDT"]["last_price"] == "7600.00000000"
    assert stats["symbols"]["ETHBTC"]["last_price"] == "0.10000000"
    merged = [f["stream"] for f in frames if f["stream"].endswith("@trade")]
    assert merged[:4] == ["btcusdt@trade"] * 3 + ["ethbtc@trade"]  # time order across files


async def test_replay_recorded_through_server_verbatim(tmp_path: Path) -> None:
    rec = tmp_path / "rec.jsonl.gz"
    frames_in = [
        (
            1_700_000_000_000_000 + i * 1000,
            _trade_frame(
                "BTCUSDT", 50 + i, f"{100 + i}.00000000", 1_700_000_000_000 + i, i % 2 == 0
            ),
        )
        for i in range(20)
    ]
    _record(rec, frames_in, gz=True)
    from marketsim.replay import replay_factory

    config = cfg(speed=50.0, wait_for_subscribers=1, source_factory=replay_factory([rec]))
    async with Simulator(config) as sim, connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        got = await drain(ws, 0.5)
        stats = sim.stats()
    assert got == [
        _trade_frame("BTCUSDT", 50 + i, f"{100 + i}.00000000", 1_700_000_000_000 + i, False)
        for i in range(20)
    ]
    assert stats["symbols"]["BTCUSDT"]["last_trade_id"] == 69 and stats["done"]


async def test_replay_paced_real_time(tmp_path: Path) -> None:
    import time

    rec = tmp_path / "r.jsonl"
    _record(
        rec,
        [
            (
                1_700_000_000_000_000 + i * 100_000,
                _trade_frame("BTCUSDT", i, "1.00000000", 1_700_000_000_000 + i * 100, False),
            )
            for i in range(5)
        ],
    )
    from marketsim.replay import replay_factory

    config = cfg(speed=1.0, wait_for_subscribers=1, source_factory=replay_factory([rec]))
    async with Simulator(config) as sim, connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        t0 = time.monotonic()
        got = await drain(ws, 0.6)
        elapsed = time.monotonic() - t0
    assert len(got) == 5
    assert 0.35 < elapsed - 0.6 < 1.0  # 0.4 s of recorded time


SHARED_FILES = (
    sorted(p for p in SHARED.glob("*") if p.is_file() and p.name != "README.md")
    if SHARED.is_dir()
    else []
)


@pytest.mark.skipif(not SHARED_FILES, reason="no real recordings in ../shared/data yet")
@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda p: p.name)
def test_shared_data_files_readable(path: Path) -> None:
    src = ReplaySource([path])
    n = 0
    while src.next_item() is not None and n < 10_000:
        n += 1
    assert n > 0


def _collector_files() -> list[Path]:
    return sorted(SHARED.glob("hftbacktest_spot_*")) if SHARED.is_dir() else []


@pytest.mark.parametrize("path", _collector_files(), ids=lambda p: p.name)
def test_shared_collector_recordings_replay_trade_by_trade(path: Path) -> None:
    """The genuine ``<receive time> <frame>`` recordings: every @trade frame of the file, in
    order, with its exact id, price, quantity and time (read here independently of the reader);
    every other market frame kept, and the REST snapshot line (a frame for the replayed book)."""
    from marketsim.replay import ReplayStats, is_recorded
    from marketsim.units import parse8

    want, others, lines, snapshots = [], 0, 0, 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            lines += 1
            stamp, _, text = line.rstrip("\n").partition(" ")
            frame = json.loads(text)
            if "stream" not in frame:
                snapshots += 1  # the REST depth snapshot
                continue
            if frame["stream"].endswith("@trade"):
                d = frame["data"]
                want.append((int(stamp), d["s"], d["t"], parse8(d["p"]), parse8(d["q"]), d["T"]))
            else:
                others += 1
    assert is_recorded(path)
    stats = ReplayStats()
    frames = list(read_recorded(path, stats))
    got = [
        (f.time_us, f.trade.symbol, f.trade.trade_id, f.trade.price, f.trade.qty, f.trade.time_us)
        for f in frames
        if f.trade is not None
    ]
    scale = 1000 if want and want[0][0] >= 10**17 else 1  # ns files; the 2023 file is in µs
    assert got == [(t // scale, s, i, p, q, tt * 1000) for t, s, i, p, q, tt in want]
    assert len(frames) - len(got) == others + snapshots
    assert sum(1 for f in frames if f.depth is not None and f.depth.snapshot) == snapshots
    assert stats.lines == lines and stats.skipped == lines - len(frames)
    assert [i for _t, _s, i, *_ in want] == list(range(want[0][2], want[0][2] + len(want)))


def test_timestamped_lines_in_ms_and_iso_8601(tmp_path: Path) -> None:
    frame = {
        "stream": "btcusdt@trade",
        "data": {
            "e": "trade",
            "E": 2,
            "s": "BTCUSDT",
            "t": 9,
            "p": "1.5",
            "q": "2",
            "T": 1,
            "m": False,
            "M": True,
        },
    }
    text = json.dumps(frame, separators=(",", ":"))
    path = tmp_path / "rec.txt"
    path.write_text(
        f"1735689600123 {text}\n2025-01-01T00:00:00.5Z {text}\ngarbage line\n1735689600124 [1]\n"
    )
    from marketsim.replay import ReplayStats

    stats = ReplayStats()
    times = [f.time_us for f in read_recorded(path, stats)]
    assert times == [1_735_689_600_123_000, 1_735_689_600_500_000]
    assert stats.skipped == 2 and set(stats.skipped_reasons) <= {"bad record", "not a market frame"}


def test_archive_without_symbol_fails_at_start(tmp_path: Path) -> None:
    """An archive whose name names no symbol stops the simulator at start with a clear error
    (it used to kill the replay task while the server kept listening)."""
    import subprocess
    import sys

    path = tmp_path / "trades.csv"
    path.write_text(_csv(AGG))
    proc = subprocess.run(
        [sys.executable, "-m", "marketsim", "--port", "0", "--replay", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "no symbol in the file name; pass --replay-symbol" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_garbage_archive_rows_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from marketsim.replay import replay_factory

    good = _csv(AGG).splitlines()
    path = tmp_path / "BTCUSDT-aggTrades-2018-02-08.csv"
    path.write_text("\n".join([good[0], "not,a,row", good[1], "1,2,x,4,5,6,7,8"]) + "\n")
    config = cfg(fast=True, wait_for_subscribers=1, source_factory=replay_factory([path]))
    with caplog.at_level("WARNING", logger="marketsim"):
        async with Simulator(config) as sim:
            async with connect(sim.ws_url + "/ws/btcusdt@aggTrade") as ws:
                frames = [json.loads(m) for m in await drain(ws)]
            async with httpx.AsyncClient(base_url=sim.rest_url) as http:
                stats = (await http.get("/sim/stats")).json()
    assert len(frames) == 2
    rs = stats["replay"]
    assert rs["skipped"] == 2 and rs["skipped_reasons"] == {"bad row": 2}
    assert rs["first_skipped"] == {"bad row": f"{path}:2"} and rs["items"] == 2
    assert any(
        "2 unreadable" in r.getMessage() and f"{path}:2" in r.getMessage() for r in caplog.records
    )
