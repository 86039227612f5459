"""Hostile input to the pure decoders: arbitrary text and JSON never raise anything but the
decoder's own outcome, valid input round-trips, and a mutated valid message is either still
valid or rejected with a reason. (Arbitrary bytes and trade-shaped JSON objects to the frame
parser, and arbitrary bytes to the record decoder, are in test_frames.py / test_codec.py.)"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.binance.frames import ControlReply, Ignored, Malformed, parse_frame
from cryptostream.core.codec import DecodeError, TradeRecord, decode_trade, encode_trade
from cryptostream.core.trades import Trade
from tests.unit.test_codec import trades
from tests.unit.test_frames import json_values

OUTCOMES = (Trade, ControlReply, Ignored, Malformed)
RECORD_KEYS = [
    "v",
    "exchange",
    "symbol",
    "trade_id",
    "price",
    "quantity",
    "trade_time",
    "event_time",
    "buyer_is_maker",
    "ingest_time_us",
]
FRAME_KEYS = ["e", "E", "s", "t", "p", "q", "T", "m", "M"]


def trade_payload(trade: Trade) -> dict[str, Any]:
    return {
        "e": "trade",
        "E": trade.event_time,
        "s": trade.symbol,
        "t": trade.trade_id,
        "p": trade.price,
        "q": trade.quantity,
        "T": trade.trade_time,
        "m": trade.buyer_is_maker,
        "M": True,
    }


def _decode(value: bytes) -> TradeRecord | None:
    try:
        return decode_trade(value)
    except DecodeError as exc:
        assert str(exc)  # a reason, always
        return None


@given(st.text(max_size=300))
def test_arbitrary_text_frames_never_raise(raw: str) -> None:
    assert isinstance(parse_frame(raw), OUTCOMES)


@given(json_values)
def test_arbitrary_json_documents_never_raise(value: object) -> None:
    raw = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    assert isinstance(parse_frame(raw), OUTCOMES)
    _decode(raw)


@given(trades, st.booleans())
def test_valid_trade_frames_round_trip(trade: Trade, combined: bool) -> None:
    payload = trade_payload(trade)
    frame = {"stream": f"{trade.symbol.lower()}@trade", "data": payload} if combined else payload
    assert parse_frame(orjson.dumps(frame)) == trade
    assert parse_frame(orjson.dumps(frame).decode()) == trade  # text frames too


@given(trades, st.sampled_from(FRAME_KEYS), json_values)
def test_a_mutated_frame_is_a_trade_or_rejected_with_a_reason(
    trade: Trade, key: str, value: object
) -> None:
    payload = trade_payload(trade)
    payload[key] = value
    outcome = parse_frame(orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS))
    assert isinstance(outcome, OUTCOMES)
    if isinstance(outcome, Malformed):
        assert outcome.reason


@given(st.dictionaries(st.sampled_from(RECORD_KEYS), json_values, max_size=12))
def test_arbitrary_record_shaped_objects_raise_only_decode_error(doc: dict[str, object]) -> None:
    record = _decode(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS))
    if record is not None:  # accepted: then it is exactly what the object said
        assert record.trade.trade_id == doc["trade_id"] and record.trade.price == doc["price"]
        assert record.ingest_time_us == doc["ingest_time_us"]


@given(trades, st.integers(0, 2**62), st.sampled_from(RECORD_KEYS), json_values)
def test_a_mutated_record_decodes_or_raises_decode_error(
    trade: Trade, ingest_us: int, key: str, value: object
) -> None:
    doc = orjson.loads(encode_trade(trade, ingest_us))
    doc[key] = value
    record = _decode(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS))
    if record is not None:  # whatever was accepted is a well-formed trade
        assert record.trade.price and record.trade.quantity and record.trade.symbol


@settings(max_examples=25)
@given(st.integers(1, 4), st.sampled_from([b" ", b"x", b"\x00", "é".encode()]))
def test_oversized_frames_are_malformed_whatever_they_hold(factor: int, filler: bytes) -> None:
    limit = 1024
    raw = filler * (limit * factor + 1)
    outcome = parse_frame(raw, max_bytes=limit)
    assert isinstance(outcome, Malformed) and "exceeds" in outcome.reason
