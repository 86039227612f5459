"""Microbenchmarks of the hot paths (pytest-benchmark): run with `nox -s bench`.

Not collected by the default `pytest` run (testpaths = tests). Each benchmark also asserts its
result, so a fast but wrong path cannot pass.
"""

from __future__ import annotations

import orjson
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from cryptostream.binance import frames
from cryptostream.binance.frames import parse_frame
from cryptostream.core import codec
from cryptostream.core.codec import decode_trade, encode_trade
from cryptostream.core.trades import Trade
from cryptostream.processor.batch import Batch, Group, RawRecord, apply_call
from cryptostream_lab.harness.schedule import SyntheticTrades, symbol_names, symbol_sequence

BatchPayload = tuple[Batch, dict[int, int]]

TRADE = {
    "e": "trade",
    "E": 1718000000001,
    "s": "BTCUSDT",
    "t": 4242424242,
    "p": "66398.85000000",
    "q": "0.00120000",
    "T": 1718000000000,
    "m": False,
    "M": True,
}
RAW_FRAME = orjson.dumps(TRADE)
COMBINED_FRAME = orjson.dumps({"stream": "btcusdt@trade", "data": TRADE})


def _records(count: int, symbols: int) -> list[RawRecord]:
    names = symbol_names(symbols)
    gen = SyntheticTrades(names, symbol_sequence(count, symbols, 1.0, 7), 10_000, 7)
    values = [
        encode_trade(gen.trade(i, 1_700_000_000_000 + i), (1_700_000_000_000 + i) * 1000)
        for i in range(count)
    ]
    return [RawRecord(i % 8, i // 8, v) for i, v in enumerate(values)]


def _cold_parse(raw: bytes) -> object:
    """One frame with the fast path's memos empty: the checks' cost, not a memo hit's (a
    benchmark repeating one frame would otherwise measure hits only)."""
    frames.clear_memos()
    return parse_frame(raw)


def _cold_decode(value: bytes) -> object:
    codec.clear_memos()
    return decode_trade(value)


def test_parse_frame_raw(benchmark: BenchmarkFixture) -> None:
    trade = benchmark(_cold_parse, RAW_FRAME)
    assert isinstance(trade, Trade) and trade.trade_id == 4242424242


def test_parse_frame_combined(benchmark: BenchmarkFixture) -> None:
    trade = benchmark(_cold_parse, COMBINED_FRAME)
    assert isinstance(trade, Trade) and trade.price == "66398.85000000"


def test_codec_encode(benchmark: BenchmarkFixture) -> None:
    trade = Trade("BTCUSDT", 4242424242, "66398.85", "0.0012", 1718000000000, 1718000000001, False)
    value = benchmark(encode_trade, trade, 1718000000001234)
    assert decode_trade(value).trade == trade


def test_codec_decode(benchmark: BenchmarkFixture) -> None:
    trade = Trade("BTCUSDT", 4242424242, "66398.85", "0.0012", 1718000000000, 1718000000001, False)
    value = encode_trade(trade, 1718000000001234)
    record = benchmark(_cold_decode, value)
    assert isinstance(record, codec.TradeRecord) and record.trade == trade


@pytest.mark.parametrize("symbols", [10, 1000])
def test_batch_coalescing_5000_records(benchmark: BenchmarkFixture, symbols: int) -> None:
    """Batch.add over one full batch: decode + per-symbol views (latest, candles, totals)."""
    records = _records(5000, symbols)

    def coalesce() -> Batch:
        codec.clear_memos()  # each round as the first sight of its texts (repeats within it hit)
        batch = Batch()
        for record in records:
            batch.add(record)
        return batch

    batch = benchmark(coalesce)
    assert batch.records == 5000 and not batch.poison
    assert len(batch.symbols) <= symbols


@pytest.mark.parametrize("symbols", [10, 1000])
def test_redis_batch_payload(benchmark: BenchmarkFixture, symbols: int) -> None:
    """The Lua script's JSON argument for a coalesced batch of 5000 records."""
    batch = Batch()
    for record in _records(5000, symbols):
        batch.add(record)
    parts = [[str(p), "-1", str(last)] for p, (_first, last) in batch.parts.items()]
    group = Group(0, parts, list(batch.symbols.items()))

    def encode() -> tuple[list[str], list[str | bytes]]:
        return apply_call([group], "raw.trades", 8, 1_700_000_000_000, 86_400_000, 600_000)

    _keys, args = benchmark(encode)
    doc = orjson.loads(args[4])
    assert len(doc["symbols"]) == len(batch.symbols) and len(doc["groups"][0]["parts"]) == 8
