"""View math: candles and totals are exact, and batching does not change the result."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from cryptostream.core.keys import candle_member
from cryptostream.core.trades import Trade
from cryptostream.core.views import MINUTE_MS, SymbolViews, compute_views, fmt


def trade(trade_id: int, price: str, qty: str, t: int, symbol: str = "BTCUSDT") -> Trade:
    return Trade(symbol, trade_id, price, qty, t, t, False)


def test_candle_ohlcv_by_trade_id_not_arrival_order() -> None:
    views = compute_views(
        [
            trade(3, "10.5", "1", 5),
            trade(1, "10.0", "2", 1),
            trade(2, "12.25", "0.5", 3),
            trade(4, "9.00000001", "0.1", MINUTE_MS + 1),
        ]
    )
    first, second = views["BTCUSDT"].candles.values()
    assert candle_member(first) == {
        "t": 0,
        "o": "10",
        "h": "12.25",
        "l": "10",
        "c": "10.5",
        "v": "3.5",
        "qv": "36.625",
        "n": 3,
        "ft": 1,
        "lt": 3,
    }
    assert second.open_time == MINUTE_MS and candle_member(second)["qv"] == "0.900000001"
    totals = views["BTCUSDT"].totals
    assert (totals.trades, fmt(totals.base_volume)) == (4, "3.6")
    assert views["BTCUSDT"].latest.trade_id == 4


def test_quote_volume_is_exact_for_long_decimals() -> None:
    views = SymbolViews.of(trade(1, "99999999.99999999", "99999999.99999999", 0))
    (c,) = views.candles.values()
    assert fmt(c.quote_volume) == "9999999999999998.0000000000000001"  # 32 digits, none rounded
    assert views.totals.quote_volume == c.quote_volume


def test_fmt_is_canonical() -> None:
    assert [fmt(Decimal(x)) for x in ["1.2300", "100", "0.000", "007.5"]] == [
        "1.23",
        "100",
        "0",
        "7.5",
    ]


prices = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("100000"), places=8)


@given(
    st.lists(st.tuples(prices, prices, st.integers(0, 5 * MINUTE_MS)), min_size=1, max_size=40),
    st.integers(1, 10),
)
def test_splitting_into_batches_changes_nothing(
    rows: list[tuple[Decimal, Decimal, int]], cut: int
) -> None:
    """The processor merges per-batch partials; their merge must equal one pass over all trades."""
    trades = [trade(i, fmt(p), fmt(q), t) for i, (p, q, t) in enumerate(rows, start=1)]
    whole = compute_views(trades)["BTCUSDT"]
    parts = [compute_views(trades[i : i + cut])["BTCUSDT"] for i in range(0, len(trades), cut)]
    assert sum(p.totals.trades for p in parts) == whole.totals.trades
    assert sum((p.totals.quote_volume for p in parts), Decimal(0)) == whole.totals.quote_volume
    for minute, candle in whole.candles.items():
        pieces = [p.candles[minute] for p in parts if minute in p.candles]
        assert max(c.high for c in pieces) == candle.high
        assert min(c.low for c in pieces) == candle.low
        assert min(pieces, key=lambda c: c.first_trade_id).open == candle.open
        assert max(pieces, key=lambda c: c.last_trade_id).close == candle.close


@given(
    st.lists(
        st.tuples(
            st.integers(0, 30), st.decimals(1, 10**6, places=8), st.decimals(1, 99, places=8)
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([5, 15, 60]),
)
def test_query_roll_ups_equal_candle_merge(
    rows: list[tuple[int, Decimal, Decimal]], minutes: int
) -> None:
    """The query API's roll-up of stored 1m members equals the reference Candle.merge."""
    import functools

    import orjson

    from cryptostream.core.keys import parse_candle_member
    from cryptostream.query import candles as candle_math

    trades = [trade(i, fmt(p), fmt(q), m * MINUTE_MS + i) for i, (m, p, q) in enumerate(rows)]
    stored = [
        orjson.dumps(candle_member(c))
        for c in sorted(
            compute_views(trades)["BTCUSDT"].candles.values(), key=lambda c: c.open_time
        )
    ]
    rolled = candle_math.aggregate((candle_math.parse_candle(m) for m in stored), minutes)
    buckets: dict[int, list[object]] = {}
    for member in stored:
        c = parse_candle_member(member)
        buckets.setdefault(c.open_time - c.open_time % (minutes * MINUTE_MS), []).append(c)
    assert [r.open_time for r in rolled] == sorted(buckets)
    for got, (start, group) in zip(rolled, sorted(buckets.items()), strict=True):
        want = functools.reduce(lambda a, b: a.merge(b), group)  # type: ignore[attr-defined]
        assert candle_member(got) == {**candle_member(want), "t": start}
