import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.core.codec import RecordFields, encode_trade
from cryptostream.core.keys import candle_member, home_partition, partition_tag
from cryptostream.core.trades import Trade
from cryptostream.core.views import compute_views
from cryptostream.processor.batch import (
    Batch,
    Group,
    RawRecord,
    _dec,
    apply_call,
    parse_conflicts,
    symbol_row,
)

N = 8  # the layout's partition count in these tests


def _payload(batch: Batch, positions: dict[int, int], now_ms: int) -> dict:  # type: ignore[type-arg]
    """The script's batch argument for every symbol of ``batch`` in one group (partition 0)."""
    parts = [
        [str(p), str(positions.get(p, -1)), str(last)] for p, (_f, last) in batch.parts.items()
    ]
    group = Group(0, parts, list(batch.symbols.items()))
    _keys, args = apply_call([group], "raw.trades", N, now_ms, 60_000, 600_000)
    return orjson.loads(args[4])  # type: ignore[no-any-return]


def record(partition: int, offset: int, symbol: str, trade_id: int, price: str) -> RawRecord:
    trade = Trade(symbol, trade_id, price, "1", 1000 + trade_id, 1001 + trade_id, False)
    return RawRecord(partition, offset, encode_trade(trade, 1_718_000_000_123_456))


def test_batch_keeps_offset_spans_and_newest_trade_per_symbol() -> None:
    batch = Batch()
    for rec in [
        record(0, 10, "BTCUSDT", 5, "1.0"),
        record(0, 11, "BTCUSDT", 7, "3.0"),
        record(0, 12, "BTCUSDT", 6, "2.0"),  # older trade id arriving later must not win
        record(3, 99, "ETHUSDT", 1, "9.5"),
        RawRecord(3, 100, b"garbage"),
    ]:
        batch.add(rec)
    assert batch.parts == {0: [10, 12], 3: [99, 100]}
    assert batch.symbols["BTCUSDT"].latest.price == "3.0"
    assert batch.symbols["BTCUSDT"].totals()[0] == 3
    assert [p.reason[:8] for p in batch.poison] == ["not JSON"]
    assert batch.records == 5


def test_one_fetch_folded_at_once_skips_what_was_applied_and_equals_one_by_one() -> None:
    """add_all over interleaved partitions: records at or below a partition's applied offset are
    skipped and counted; the rest fold exactly as record-by-record adds do."""
    fetch = [
        record(0, 10, "BTCUSDT", 5, "1.0"),
        record(1, 3, "ETHUSDT", 1, "9.5"),  # at the applied offset: stale
        record(0, 11, "BTCUSDT", 7, "3.0"),
        record(1, 4, "ETHUSDT", 2, "9.0"),
        RawRecord(0, 12, None),
        record(2, 0, "BTCUSDT", 6, "2.0"),
    ]
    batch = Batch()
    assert batch.add_all(fetch, {1: 3, 0: 9}) == 1
    one_by_one = Batch()
    for rec in fetch[:1] + fetch[2:]:
        one_by_one.add(rec)
    assert batch.parts == one_by_one.parts == {0: [10, 12], 1: [4, 4], 2: [0, 0]}
    assert batch.records == one_by_one.records == 5
    assert [(p.record.offset, p.reason) for p in batch.poison] == [(12, "record has no value")]
    rows = {s: symbol_row(s, v, 0) for s, v in batch.symbols.items()}
    assert rows == {s: symbol_row(s, v, 0) for s, v in one_by_one.symbols.items()}
    assert set(rows) == {"BTCUSDT", "ETHUSDT"}


def test_script_call_carries_numbers_as_strings_and_declares_every_key() -> None:
    # two symbols of one home partition, as the processor's per-partition batches hold them
    names = [f"S{i}USDT" for i in range(200)]
    p = home_partition("BTCUSDT", N)
    other = next(s for s in names if home_partition(s, N) == p)
    batch = Batch()
    batch.add(record(p, 5, "BTCUSDT", 2**40, "1.5"))
    batch.add(record(p, 6, other, 7, "2"))
    keys, args = batch.script_call(
        "raw.trades", {p: 4}, now_ms=123, history_ms=60_000, max_future_ms=600_000, partitions=N
    )
    tag = partition_tag(p, N)
    assert keys == [
        f"offsets:{tag}:raw.trades",
        f"symbols:{tag}",
        f"outbox:{tag}:raw.trades",
        f"price:{tag}:BTCUSDT",
        f"candles:1m:{tag}:BTCUSDT",
        f"stats:{tag}:BTCUSDT",
        f"price:{tag}:{other}",
        f"candles:1m:{tag}:{other}",
        f"stats:{tag}:{other}",
    ]
    assert args[:4] == ["123", "60000", "600000", "updates:price"]
    payload = orjson.loads(args[4])
    assert payload["groups"] == [{"parts": [[str(p), "4", "6"]]}]
    row = payload["symbols"][0]
    assert row["s"] == "BTCUSDT" and row["id"] == str(2**40)
    assert dict(zip(row["p"][::2], row["p"][1::2], strict=True)) == {
        "price": "1.5",
        "quantity": "1",
        "trade_id": str(2**40),
        "trade_time": str(1000 + 2**40),
        "event_time": str(1001 + 2**40),
        "ingest_time_us": "1718000000123456",
        "update_time": "123",
    }
    assert row["c"][0][-2:] == [str(2**40), str(2**40)]  # ids as strings
    assert orjson.loads(row["u"])["update_time"] == 123
    assert "n" not in row and "g" not in row  # one candle: the totals are its own; group 1
    assert _payload(batch, {}, now_ms=1)["groups"][0]["parts"] == [[str(p), "-1", "6"]]
    two_minutes = Batch()
    for offset, t in enumerate([1_000, 61_000]):
        trade = Trade("BTCUSDT", offset, "1.5", "2", t, t, False)
        two_minutes.add(RawRecord(0, offset, encode_trade(trade, 1_718_000_000_123_456)))
    (row,) = _payload(two_minutes, {}, now_ms=1)["symbols"]
    assert (row["n"], row["v"], row["qv"]) == (2, "4", "6")


def test_groups_put_each_symbol_in_its_home_partition_and_refuse_a_misrouted_one() -> None:
    names = [f"S{i}USDT" for i in range(200)]
    a = names[0]
    b = next(s for s in names if home_partition(s, N) != home_partition(a, N))
    batch = Batch()
    batch.add(record(home_partition(a, N), 1, a, 1, "1"))
    batch.add(record(home_partition(b, N), 1, b, 1, "1"))
    groups = batch.groups({}, N)
    assert {g.tag: [s for s, _ in g.symbols] for g in groups} == {
        home_partition(a, N): [a],
        home_partition(b, N): [b],
    }
    keys, args = apply_call(groups, "t", N, 1, 60_000, 600_000)
    assert len(keys) == 3 * 2 + 3 * 2  # two groups' offsets/symbols/outbox, 3 keys per symbol
    assert [row.get("g", 1) for row in orjson.loads(args[4])["symbols"]] == [1, 2]
    stray = Batch()
    stray.add(record(home_partition(b, N), 2, a, 2, "1"))  # a's record on b's partition
    with pytest.raises(ValueError, match="not in this batch"):
        stray.groups({}, N)


def test_parse_conflicts() -> None:
    assert parse_conflicts([0, b"3", b"41", b"5", b"7"]) == {3: 41, 5: 7}


def test_widest_schema_decimals_sum_exactly_in_one_batch() -> None:
    """Two 20+20-digit trades: their notional sum needs more than 80 digits (this killed the
    processor with decimal.Inexact before the views' precision was sized for the schema)."""
    from decimal import Context, Decimal

    widest = "9" * 20 + "." + "9" * 20
    batch = Batch()
    for offset in range(2):
        trade = Trade("BTCUSDT", offset, widest, widest, 1000, 1001, False)
        batch.add(RawRecord(0, offset, encode_trade(trade, 1_718_000_000_123_456)))
    assert not batch.poison
    wide = Context(prec=1000)
    notional = wide.multiply(Decimal(widest), Decimal(widest))
    (candle,) = batch.symbols["BTCUSDT"].views().values()
    assert candle.quote_volume == wide.add(notional, notional)
    _payload(batch, {}, 1)  # encodable


def test_an_exception_while_folding_makes_that_record_poison_not_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_fold = Batch._fold

    def fold(self: Batch, r: RecordFields, symbol: str, price: int, qty: int) -> None:
        if r.trade_id == 6:
            raise ArithmeticError("boom")
        real_fold(self, r, symbol, price, qty)

    monkeypatch.setattr(Batch, "_fold", fold)
    batch = Batch()
    for rec in [
        record(0, 1, "BTCUSDT", 5, "1"),
        record(0, 2, "BTCUSDT", 6, "2"),
        record(0, 3, "BTCUSDT", 7, "3"),
    ]:
        batch.add(rec)
    assert [p.record.offset for p in batch.poison] == [2]
    assert "cannot apply: ArithmeticError: boom" in batch.poison[0].reason
    assert batch.symbols["BTCUSDT"].totals()[0] == 2 and batch.parts == {0: [1, 3]}


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["BTCUSDT", "ethusdt", "A1"]),
            st.integers(0, 2**63 - 1),
            st.sampled_from(
                [
                    "1",
                    "0.00000001",
                    "66398.85000000",
                    "9" * 20 + "." + "9" * 20,
                    "12.5",
                    "100",
                    "0." + "0" * 19 + "1",
                ]
            ),
            st.sampled_from(["1", "0.5", "3.14159265", "9" * 20, "0.00000000000000000001"]),
            st.integers(0, 5 * 60_000),
        ),
        max_size=60,
        unique_by=lambda row: (row[0].upper(), row[1]),
    )
)
def test_integer_folding_equals_the_reference_views(
    rows: list[tuple[str, int, str, str, int]],
) -> None:
    """The processor's scaled-integer fold gives exactly the candles, latest trades and totals
    of the Decimal reference (core/views.py), digit for digit."""
    batch = Batch()
    trades = []
    for offset, (symbol, tid, price, qty, t) in enumerate(rows):
        trade = Trade(symbol, tid, price, qty, 1_718_000_000_000 + t, 1, False)
        batch.add(RawRecord(0, offset, encode_trade(trade, 1_718_000_000_000_000 + t * 1000)))
        trades.append(Trade(symbol.upper(), tid, price, qty, 1_718_000_000_000 + t, 1, False))
    assert not batch.poison
    want = compute_views(trades)
    assert set(batch.symbols) == set(want)
    for symbol, views in want.items():
        got = batch.symbols[symbol]
        assert got.latest.trade_id == views.latest.trade_id
        assert {m: candle_member(c) for m, c in got.views().items()} == {
            m: candle_member(c) for m, c in views.candles.items()
        }
        totals = views.totals
        trades_n, base, quote = got.totals()
        assert (trades_n, _dec(base), _dec(quote, 40)) == (
            totals.trades,
            totals.base_volume,
            totals.quote_volume,
        )


def test_far_future_and_lower_case_records() -> None:
    batch = Batch(max_future_ms=600_000)
    future = Trade("BTCUSDT", 1, "1", "1", 4_102_444_800_000, 4_102_444_800_000, False)
    batch.add(RawRecord(0, 0, encode_trade(future, 1_718_000_000_000_000)))
    lower = Trade("ethusdt", 2, "1", "1", 1_718_000_000_000, 1_718_000_000_000, False)
    batch.add(RawRecord(0, 1, encode_trade(lower, 1_718_000_000_000_000)))
    assert "after the record's ingest time" in batch.poison[0].reason
    assert list(batch.symbols) == ["ETHUSDT"]
