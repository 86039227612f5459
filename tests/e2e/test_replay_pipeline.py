"""Binance archive files and recordings replayed through the whole pipeline (issue 3).

One file per supported format variant is written here, plus every data file provided in
``../shared/data/``; the simulator replays them all (merged in time order, as fast as possible)
and ``GET /price/<symbol>`` must end equal to each file's last trade price.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import httpx
import orjson
import pytest

from cryptostream.stack.pipeline import Pipeline, wait_for
from marketsim.replay import is_recorded, read_archive, read_recorded, symbol_from_name
from tests.conftest import Env
from tests.shared_data import SHARED_DATA as SHARED

pytestmark = pytest.mark.e2e


def _rows(first_id: int, n: int, t0_ms: int, micro: bool, agg: bool) -> tuple[list[str], str]:
    rows, last_price = [], ""
    for i in range(n):
        price = f"{100 + (i * 37) % 50 + i / 1000:.8f}"
        t = t0_ms + i * 10
        t_out = t * 1000 + 7 if micro else t
        if agg:  # aggTradeId,price,qty,firstTradeId,lastTradeId,timestamp,isBuyerMaker,isBestMatch
            first = first_id + 3 * i
            rows.append(f"{first_id + i},{price},0.30000000,{first},{first + 2},{t_out},True,True")
        else:  # id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch
            rows.append(f"{first_id + i},{price},0.01000000,1.00000000,{t_out},False,True")
        last_price = price
    return rows, last_price


def write_formats(folder: Path) -> dict[str, float]:
    """Write each supported variant; return the expected last price per symbol."""
    expected: dict[str, float] = {}
    trades_header = "id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch"
    agg_header = "aggTradeId,price,qty,firstTradeId,lastTradeId,timestamp,isBuyerMaker,isBestMatch"
    variants = [  # (file name, header, µs timestamps, zipped, aggTrades)
        ("BTCUSDT-trades-2024-06-01.csv", None, False, False, False),
        ("ETHUSDT-trades-2025-01-01.zip", trades_header, True, True, False),
        ("BNBUSDT-aggTrades-2024-06-01.csv", agg_header, False, False, True),
        ("SOLUSDT-aggTrades-2025-01-01.zip", None, True, True, True),
    ]
    for i, (name, header, micro, zipped, agg) in enumerate(variants):
        rows, last = _rows(1000 * (i + 1), 120, 1_735_689_600_000 + i, micro, agg)
        text = "\n".join(([header] if header else []) + rows) + "\n"
        if zipped:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                archive.writestr(name.replace(".zip", ".csv"), text)
            (folder / name).write_bytes(buffer.getvalue())
        else:
            (folder / name).write_text(text)
        expected[name.split("-")[0]] = float(last)
    # A recording in ingest's record format: combined-stream frames with receive times.
    lines = []
    for i in range(120):
        price = f"{0.5 + i / 10000:.8f}"
        data = {
            "e": "trade",
            "E": 1_735_689_600_000 + i,
            "s": "XRPUSDT",
            "t": 5000 + i,
            "p": price,
            "q": "10.00000000",
            "T": 1_735_689_600_000 + i,
            "m": False,
            "M": True,
        }
        frame = orjson.dumps({"stream": "xrpusdt@trade", "data": data}).decode()
        lines.append(orjson.dumps({"recv_time_us": 1_735_689_600_000_000 + i, "frame": frame}))
        expected["XRPUSDT"] = float(price)
    (folder / "recording.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return expected


def last_prices(path: Path) -> dict[str, float]:
    """A replay file's last trade price per symbol (by trade id), read with the simulator's reader."""
    return {symbol: price / 1e8 for symbol, (_id, price) in last_trades(path).items()}


def last_trades(
    path: Path, last: dict[str, tuple[int, int]] | None = None
) -> dict[str, tuple[int, int]]:
    """Per symbol, (trade id, price in 1e-8 units) of the highest trade id, merged into ``last``."""
    last = {} if last is None else last

    def see(symbol: str, trade_id: int, price: int) -> None:
        if symbol not in last or last[symbol][0] < trade_id:
            last[symbol] = (trade_id, price)

    if is_recorded(path):
        for frame in read_recorded(path):
            if frame.trade is not None:
                see(frame.trade.symbol, frame.trade.trade_id, frame.trade.price)
    else:
        for order in read_archive(path, symbol_from_name(path)):
            see(order.symbol, order.last_id, order.price)
    return last


def shared_files() -> list[Path]:
    if not SHARED.is_dir():
        return []
    return sorted(p for p in SHARED.iterdir() if p.name != "README.md" and p.is_file())


def test_expected_prices_agree_with_the_simulator_reader(tmp_path: Path) -> None:
    """The same reader computes the expectation for provided files: check it on known files."""
    expected = write_formats(tmp_path)
    seen: dict[str, float] = {}
    for path in tmp_path.iterdir():
        seen.update(last_prices(path))
    assert seen == pytest.approx(expected)


def test_replayed_files_end_with_their_last_prices(isolated: Env, tmp_path: Path) -> None:
    write_formats(tmp_path)
    files = sorted(p for p in tmp_path.iterdir() if p.is_file()) + shared_files()
    # The views keep the trade with the highest id per symbol, whichever file it came from
    # (BTCUSDT is in several files).
    merged: dict[str, tuple[int, int]] = {}
    for path in files:
        last_trades(path, merged)
    expected = {symbol: price / 1e8 for symbol, (_id, price) in merged.items()}
    symbols = sorted(expected)
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        symbols,
        extra_env=isolated.env,
    )
    try:
        args = ["--fast", "--wait-for-subscribers", "1"]
        for path in files:
            args += ["--replay", str(path)]
        sim = pipeline.start_simulator(args)
        pipeline.start_processor()
        query = pipeline.start_query()
        pipeline.start_ingest(sim.ws_url)

        def answers() -> dict[str, object]:
            pipeline.check_alive()
            return {
                s: httpx.get(f"{query.base_url}/price/{s}", timeout=5).json().get("price")
                for s in symbols
            }

        wait_for(lambda: answers() == expected, 90, f"last prices of {len(symbols)} symbols")
    finally:
        pipeline.stop()
