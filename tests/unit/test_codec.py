import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptostream.core.codec import (
    DecodeError,
    TradeRecord,
    _decode_checked,
    decode_trade,
    encode_key,
    encode_trade,
)
from cryptostream.core.trades import Trade

decimals = st.builds(
    lambda i, f: f"{i}.{f}" if f else str(i),
    st.integers(min_value=1, max_value=10**12),
    st.text(alphabet="0123456789", max_size=8),
)
trades = st.builds(
    Trade,
    symbol=st.from_regex(r"[A-Z0-9]{2,20}", fullmatch=True),
    trade_id=st.integers(min_value=0, max_value=2**62),
    price=decimals,
    quantity=decimals,
    trade_time=st.integers(min_value=0, max_value=2**53),
    event_time=st.integers(min_value=0, max_value=2**53),
    buyer_is_maker=st.booleans(),
)


@given(trades, st.integers(min_value=0, max_value=2**62))
def test_round_trip(trade: Trade, ingest_us: int) -> None:
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
    with contextlib.suppress(DecodeError):
        decode_trade(value)


# A valid record, and values for each field that are valid or wrong in the ways records go wrong.
_VALID = {"v": 1, "exchange": "binance", "symbol": "BTCUSDT", "trade_id": 5, "price": "66398.85",
          "quantity": "0.001", "trade_time": 1718000000000, "event_time": 1718000000001,
          "buyer_is_maker": True, "ingest_time_us": 1718000000001234}  # fmt: skip
_MISSING = object()
_NEAR = {
    "v": [1, 1.0, True, 2, "1", None],
    "exchange": ["binance", "", 5],
    "symbol": ["BTCUSDT", "btcusdt", "BTCUSDT\n", "B", "BTC-USDT", "A" * 21, 7],
    "trade_id": [0, 5, -1, 1.0, True, "5", 2**63],
    "price": ["1", "0", "0.000", "66398.85", "1e5", " 1", "1\n", "-1", "NaN", 1.5, "1" * 21],
    "quantity": ["0.001", "0", "00.10", "1.", ".5", 2],
    "trade_time": [0, 1718000000000, -5, False],
    "event_time": [1718000000001, 1.5, None],
    "buyer_is_maker": [True, False, 0, "true"],
    "ingest_time_us": [1718000000001234, -1, 3.0],
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
    value = orjson.dumps(doc)
    try:
        expected: TradeRecord | str = _decode_checked(value)
    except DecodeError as exc:
        expected = str(exc)
    try:
        got: TradeRecord | str = decode_trade(value)
    except DecodeError as exc:
        got = str(exc)
    assert got == expected
