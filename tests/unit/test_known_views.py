"""processor/known.py without Redis: the merged spellings it expects and how seeds settle."""

from decimal import Decimal
from functools import reduce

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.core.codec import encode_trade
from cryptostream.core.keys import candle_member
from cryptostream.core.trades import Trade
from cryptostream.core.views import Candle, compute_views, fmt
from cryptostream.processor.batch import Batch, RawRecord
from cryptostream.processor.known import (
    MAX_PENDING,
    KnownViews,
    merge_candle,
    parse_member,
    scaled_at,
)

_prices = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("99999999"), places=8)
_sizes = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("9999"), places=8)
# (price, quantity, trade id): ids distinct, in any order (a backfill lands between live trades)
_trades = st.lists(
    st.tuples(_prices, _sizes, st.integers(1, 10**15)),
    min_size=2,
    max_size=12,
    unique_by=lambda t: t[2],
)


def _partial(trades: list[Trade]) -> list[object]:
    batch = Batch(max_future_ms=10**15)
    for i, t in enumerate(trades):
        batch.add(RawRecord(0, i, encode_trade(t, 1)))
    (views,) = batch.symbols.values()
    (partial,) = views.candles.values()
    return partial


def _member_of(candle: Candle) -> str:
    return orjson.dumps(candle_member(candle)).decode()


@settings(max_examples=200, deadline=None)
@given(_trades, st.data())
def test_merging_into_a_stored_member_equals_candle_merge(rows: list, data: st.DataObject) -> None:  # type: ignore[type-arg]
    """The stored member (as the script spells it) merged with a batch's partial, spelled as the
    script would store it, is Candle.merge of the two, field for field."""
    trades = [Trade("ETHUSDT", i, fmt(p), fmt(q), 60_000, 60_000, False) for p, q, i in rows]
    cut = data.draw(st.integers(1, len(trades) - 1))
    stored, later = trades[:cut], trades[cut:]
    reference = [compute_views(part)["ETHUSDT"].candles[60_000] for part in (stored, later)]
    parsed = parse_member(_member_of(reference[0]))
    assert parsed is not None
    minute, state = parsed
    known = KnownViews()
    known.candle(1, "ETHUSDT", minute, state)  # unknown: waits for call 1's seed
    known.settle(1, ["ETHUSDT"], [1, 0, [1, _member_of(reference[0])], []])
    pair = known.candle(2, "ETHUSDT", minute, _partial(later))
    assert pair is not None
    expected, merged = pair
    assert expected == _member_of(reference[0])
    assert orjson.loads(merged) == candle_member(reduce(Candle.merge, reference))
    # the merged state spelled again is the merged member (what the next call expects)
    assert merge_candle(state, _partial(later)) == parse_member(merged)[1]  # type: ignore[index]


def test_a_seed_folds_the_partials_of_the_calls_built_before_it() -> None:
    """Call 2 is built before call 1's reply: both merge in Lua; call 1's seed folded with call
    2's partial is what Redis holds after call 2, so call 3 carries an expectation."""
    a, b, c = (Trade("ETHUSDT", i, f"{i}", "1", 60_000 + i, 60_000 + i, False) for i in (1, 2, 3))
    known = KnownViews()
    assert known.candle(1, "ETHUSDT", 60_000, _partial([a])) is None
    assert known.candle(2, "ETHUSDT", 60_000, _partial([b])) is None
    known.settle(
        1, ["ETHUSDT"], [1, 1, [1, _member_of(compute_views([a])["ETHUSDT"].candles[60_000])], []]
    )
    pair = known.candle(3, "ETHUSDT", 60_000, _partial([c]))
    assert pair is not None
    after_two, after_three = (
        compute_views(ts)["ETHUSDT"].candles[60_000] for ts in ([a, b], [a, b, c])
    )
    assert orjson.loads(pair[0]) == candle_member(after_two)
    assert orjson.loads(pair[1]) == candle_member(after_three)
    # call 2's own seed arrives later: a later call (3) already built on it, so it is ignored
    known.settle(2, ["ETHUSDT"], [1, 1, [1, _member_of(after_two)], []])
    assert known.candles[("ETHUSDT", 60_000)].last == 3


def test_a_key_whose_seed_never_comes_is_forgotten_and_tables_are_bounded() -> None:
    t = Trade("ETHUSDT", 1, "1", "1", 60_000, 60_000, False)
    known = KnownViews(max_keys=3)
    for call in range(1, MAX_PENDING + 3):
        assert known.candle(call, "ETHUSDT", 60_000, _partial([t])) is None
    assert len(known.candles[("ETHUSDT", 60_000)].partials) < MAX_PENDING
    for minute in range(5):
        known.total(1, f"S{minute}", (1, 1, 1))
    assert len(known.totals) <= 3


def test_only_canonical_texts_are_taken_from_seeds() -> None:
    assert scaled_at("1.5", 20) == 15 * 10**19
    assert scaled_at("0", 20) == 0
    for bad in ("01.5", "1.50", ".5", "1e5", "-1", "1.5.", "\u0661", 1.5):
        assert scaled_at(bad, 20) is None
    assert scaled_at("0." + "1" * 21, 20) is None  # more digits than the scale
    assert parse_member('{"t":1}') is None
    assert parse_member("not json") is None
