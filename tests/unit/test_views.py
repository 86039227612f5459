"""View math: candles and totals are exact, and batching does not change the result."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from cryptostream.core.trades import Trade
from cryptostream.core.views import MINUTE_MS, SymbolViews, compute_views, fmt


def trade(trade_id: int, price: str, qty: str, t: int, symbol: str = "BTCUSDT") -> Trade:
    return Trade(symbol, trade_id, price, qty, t, t, False)


def test_candle_ohlcv_by_trade_id_not_arrival_order() -> None:
    views = compute_views([trade(3, "10.5", "1", 5), trade(1, "10.0", "2", 1), trade(2, "12.25", "0.5", 3),
                           trade(4, "9.00000001", "0.1", MINUTE_MS + 1)])  # fmt: skip
    first, second = views["BTCUSDT"].candles.values()
    assert first.as_member() == {"t": 0, "o": "10", "h": "12.25", "l": "10", "c": "10.5", "v": "3.5",
                                 "qv": "36.625", "n": 3, "ft": 1, "lt": 3}  # fmt: skip
    assert second.open_time == MINUTE_MS and second.as_member()["qv"] == "0.900000001"
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


@given(st.lists(st.tuples(prices, prices, st.integers(0, 5 * MINUTE_MS)), min_size=1, max_size=40),
       st.integers(1, 10))  # fmt: skip
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
