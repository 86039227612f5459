import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptostream.core.codec import DecodeError, TradeRecord, decode_trade, encode_key, encode_trade
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
