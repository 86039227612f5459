import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptostream.core import codec
from cryptostream.core.codec import (
    DEFAULT_MAX_FUTURE_MS,
    DecodeError,
    TradeRecord,
    _decode_checked,
    decode_trade,
    encode_key,
    encode_trade,
)
from cryptostream.core.trades import MAX_ID, MAX_TIME_MS, MAX_TIME_US, Trade

# Schema-valid extremes included: 20+20-digit decimals, ids up to 2^63-1, times at both ends.
decimals = st.builds(
    lambda i, f: f"{i}.{f}" if f else str(i),
    st.integers(min_value=1, max_value=10**20 - 1),
    st.text(alphabet="0123456789", max_size=20),
)
trades = st.builds(
    Trade,
    symbol=st.from_regex(r"[A-Z0-9]{2,20}", fullmatch=True),
    trade_id=st.integers(min_value=0, max_value=MAX_ID),
    price=decimals,
    quantity=decimals,
    trade_time=st.integers(min_value=0, max_value=MAX_TIME_MS),
    event_time=st.integers(min_value=0, max_value=MAX_TIME_MS),
    buyer_is_maker=st.booleans(),
)


def ingest_times(trade: Trade) -> st.SearchStrategy[int]:
    """Ingest receive times a trade may have: never more than the allowed skew before it."""
    lowest = max(0, trade.trade_time * 1000 - DEFAULT_MAX_FUTURE_MS * 1000)
    return st.integers(min_value=lowest, max_value=MAX_TIME_US)


trade_records = trades.flatmap(lambda t: st.tuples(st.just(t), ingest_times(t)))


@given(trade_records)
def test_round_trip(record: tuple[Trade, int]) -> None:
    trade, ingest_us = record
    assert decode_trade(encode_trade(trade, ingest_us)) == TradeRecord(trade, ingest_us)


def test_value_is_versioned_json_with_decimal_strings() -> None:
    trade = Trade("BTCUSDT", 7, "66398.85000000", "0.001", 1, 2, False)
    doc = orjson.loads(encode_trade(trade, 3))
    assert doc["v"] == 1 and doc["price"] == "66398.85000000" and doc["exchange"] == "binance"
    assert encode_key("BTCUSDT") == b"BTCUSDT"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no value"),
        (b"\xff\xfe", "not JSON"),
        (b'"x"', "expected a JSON object"),
        (b'{"v":2}', "unsupported schema version 2"),
        (b'{"v":1}', "missing field"),
    ],
)
def test_poison_values_say_why(value: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_trade(value)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(value: bytes) -> None:
    """A DecodeError that says why, or a record that is itself again after a round trip."""
    try:
        record = decode_trade(value)
    except DecodeError as exc:
        assert str(exc)
    else:
        assert decode_trade(encode_trade(record.trade, record.ingest_time_us)) == record


# A valid record, and values for each field that are valid or wrong in the ways records go wrong.
_VALID = {
    "v": 1,
    "exchange": "binance",
    "symbol": "BTCUSDT",
    "trade_id": 5,
    "price": "66398.85",
    "quantity": "0.001",
    "trade_time": 1718000000000,
    "event_time": 1718000000001,
    "buyer_is_maker": True,
    "ingest_time_us": 1718000000001234,
}
_MISSING = object()
_NEAR = {
    "v": [1, 1.0, True, 2, "1", None, 1.5],
    "exchange": ["binance", "", 5],
    "symbol": [
        "BTCUSDT",
        "btcusdt",
        "BtcUsdt",
        "BTCUSDT\n",
        "B",
        "BTC-USDT",
        "A" * 21,
        7,
        "\uff22\uff34\uff23",
    ],
    "trade_id": [0, 5, -1, 1.0, True, "5", MAX_ID, 2**63, 10**30, 10**1000],
    "price": [
        "1",
        "0",
        "0.000",
        "66398.85",
        "1e5",
        " 1",
        "1\n",
        "-1",
        "NaN",
        1.5,
        "1" * 21,
        "9" * 20 + "." + "9" * 20,
        "9" * 20 + "." + "9" * 21,
        "٣",
    ],
    "quantity": ["0.001", "0", "00.10", "1.", ".5", 2],
    "trade_time": [
        0,
        1718000000000,
        1718000600001,
        1718000600002,
        4102444800000,
        -5,
        False,
        MAX_TIME_MS,
        MAX_TIME_MS + 1,
    ],
    "event_time": [1718000000001, 1.5, None, MAX_TIME_MS, MAX_TIME_MS + 1],
    "buyer_is_maker": [True, False, 0, "true"],
    "ingest_time_us": [1718000000001234, -1, 3.0, MAX_TIME_US, MAX_TIME_US + 1, 2**63],
}
_mutations = st.lists(st.sampled_from(sorted(_NEAR)), max_size=3, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries(
        {k: st.sampled_from([*_NEAR[k], _MISSING]) for k in keys},
        optional={"extra": st.integers(-5, 5)},
    )
)


@pytest.mark.parametrize(
    ("field", "value"), [(k, v) for k, values in _NEAR.items() for v in [*values, _MISSING]]
)
def test_fast_path_agrees_on_each_single_change(field: str, value: object) -> None:
    _assert_paths_agree({field: value})


@given(_mutations)
def test_fast_path_agrees_on_combined_changes(mutations: dict[str, object]) -> None:
    _assert_paths_agree(mutations)


def _assert_paths_agree(mutations: dict[str, object]) -> None:
    """decode_trade (msgspec first) accepts exactly what the field-by-field checks accept."""
    doc = {k: v for k, v in {**_VALID, **mutations}.items() if v is not _MISSING}
    value = json.dumps(doc).encode()  # (orjson refuses integers beyond 64 bits)
    try:
        expected: TradeRecord | str = _decode_checked(value)
    except DecodeError as exc:
        expected = str(exc)
    for _memoized in range(2):  # the second time, accepted texts come from the decode memos
        try:
            got: TradeRecord | str = decode_trade(value)
        except DecodeError as exc:
            got = str(exc)
        assert got == expected


def test_decode_memos_are_bounded_and_keep_exact_values() -> None:
    for i in range(codec.MEMO_MAX + 10):
        price = f"{i + 1}.5"
        doc = {**_VALID, "price": price, "symbol": f"S{i}USDT"}
        _fields, symbol, scaled_price, _qty = codec.decode_scaled(json.dumps(doc).encode())
        assert scaled_price == codec.scaled(price) and symbol == f"S{i}USDT"
    assert 0 < len(codec._scaled_memo) <= codec.MEMO_MAX
    assert 0 < len(codec._symbol_memo) <= codec.MEMO_MAX


def test_schema_valid_extremes_decode_and_the_limits_are_refused_with_a_reason() -> None:
    widest = "9" * 20 + "." + "9" * 20
    doc = {
        **_VALID,
        "trade_id": MAX_ID,
        "price": widest,
        "quantity": widest,
        "trade_time": 0,
        "event_time": MAX_TIME_MS,
        "ingest_time_us": MAX_TIME_US,
    }
    record = decode_trade(json.dumps(doc).encode())
    assert record.trade.trade_id == MAX_ID and record.trade.price == widest
    for field, value, reason in [
        ("trade_id", MAX_ID + 1, "trade_id must be in"),
        ("trade_id", 10**30, "trade_id must be"),
        ("event_time", MAX_TIME_MS + 1, "event_time must be in"),
        ("ingest_time_us", MAX_TIME_US + 1, "ingest_time_us must be in"),
        ("v", True, "unsupported schema version True"),
        ("v", 1.0, "unsupported schema version 1.0"),
    ]:
        with pytest.raises(DecodeError, match=reason):
            decode_trade(json.dumps({**doc, field: value}).encode())


def test_a_trade_far_after_its_ingest_time_is_refused() -> None:
    ingest_us = _VALID["ingest_time_us"]
    assert isinstance(ingest_us, int)
    at_limit = ingest_us // 1000 + DEFAULT_MAX_FUTURE_MS
    ok = orjson.dumps({**_VALID, "trade_time": at_limit})
    assert decode_trade(ok).trade.trade_time == at_limit
    year_2100 = orjson.dumps({**_VALID, "trade_time": 4102444800000})
    with pytest.raises(DecodeError, match="after the record's ingest time"):
        decode_trade(year_2100)
    assert decode_trade(year_2100, max_future_ms=10**14).trade.trade_time == 4102444800000
    # the past is fine (backfills, replays)
    assert decode_trade(orjson.dumps({**_VALID, "trade_time": 0})).trade.trade_time == 0


def test_symbols_are_upper_cased_at_decode() -> None:
    assert decode_trade(orjson.dumps({**_VALID, "symbol": "btcUsdt"})).trade.symbol == "BTCUSDT"
    assert _decode_checked(orjson.dumps({**_VALID, "symbol": "btcusdt"})).trade.symbol == "BTCUSDT"


@given(st.text(min_size=1000, max_size=5000))
def test_reasons_are_bounded_whatever_the_value(junk: str) -> None:
    for field in ("v", "symbol", "price", "trade_id"):
        with pytest.raises(DecodeError) as info:
            decode_trade(json.dumps({**_VALID, field: junk}).encode())
        assert len(str(info.value)) < 200


@given(
    st.one_of(
        decimals,
        st.text(alphabet="0123456789.+-_ e\u0663\uff11", max_size=45),
        st.text(max_size=10),
    )
)
def test_scaled_is_the_exact_integer_of_exactly_the_plain_decimals(text: str) -> None:
    """``scaled`` accepts exactly what the schema's decimal pattern does (and is positive), and
    gives the exact value at 20 fractional digits."""
    import re
    from decimal import Context, Decimal

    from cryptostream.core.codec import scaled
    from cryptostream.core.trades import DECIMAL_PATTERN

    plain = re.fullmatch(DECIMAL_PATTERN, text) is not None and Decimal(text) > 0
    exact = Decimal(text).scaleb(20, context=Context(prec=100)) if plain else 0
    assert scaled(text) == int(exact)


@given(
    st.one_of(
        decimals,
        st.from_regex(r"0{1,3}(\.0{0,3}[0-9]?)?", fullmatch=True),
        st.text(alphabet="0123456789.+-_ e\u0663\uff11", max_size=45),
        st.text(max_size=10),
    )
)
def test_positive_decimal_is_exactly_scaled_not_zero(text: str) -> None:
    """Ingest's check (no integer built) accepts exactly what ``scaled`` turns into a number."""
    from cryptostream.core.codec import positive_decimal, scaled

    assert positive_decimal(text) == (scaled(text) != 0)


@given(trade_records)
def test_direct_encoding_is_byte_equal_to_encode_trade(record: tuple[Trade, int]) -> None:
    """Ingest's formatted record is the very bytes of the reference encoder (the wire format)."""
    from cryptostream.core.codec import encode_trade_fields

    t, ingest_us = record
    assert encode_trade_fields(
        t.symbol,
        t.trade_id,
        t.price,
        t.quantity,
        t.trade_time,
        t.event_time,
        t.buyer_is_maker,
        ingest_us,
    ) == encode_trade(t, ingest_us)
