"""The ``price:{SYMBOL}`` hash: ``price_fields`` spells its field names out for speed, and
``PRICE_FIELDS`` is the documented layout it is held to (core/keys.py says a test does)."""

from __future__ import annotations

from cryptostream.core.keys import PRICE_FIELDS, price_fields
from cryptostream.core.trades import Trade


def test_price_fields_follow_the_documented_layout() -> None:
    trade = Trade("BTCUSDT", 7, "66398.85", "0.5", 1_700_000_000_000, 1_700_000_000_001, False)
    pairs = price_fields(trade, 1_700_000_000_002_000, 1_700_000_000_003)
    names, values = pairs[0::2], pairs[1::2]
    assert tuple(names) == PRICE_FIELDS
    assert dict(zip(names, values, strict=True)) == {
        "price": "66398.85",
        "quantity": "0.5",
        "trade_id": "7",
        "trade_time": "1700000000000",
        "event_time": "1700000000001",
        "ingest_time_us": "1700000000002000",
        "update_time": "1700000000003",
    }
