"""The versioned JSON value of a ``raw.trades`` record (sans-I/O).

Schema version 1::

    {"v": 1, "exchange": "binance", "symbol": "BTCUSDT", "trade_id": 42,
     "price": "66398.85", "quantity": "0.0012", "trade_time": 1718000000000,
     "event_time": 1718000000001, "buyer_is_maker": false, "ingest_time_us": 1718000000001234}

Prices and quantities are decimal strings; times are integers (exchange times in ms, the ingest
receive time in µs for latency measurement). The record key is the symbol in UTF-8.

Every field is bounded (core/trades.py): ids in [0, 2^63-1], times before year 10000, decimals
of at most 20+20 digits, and a trade time at most ``max_future_ms`` after the ingest time.
Anything outside is refused here, with a bounded reason, so no value can break a later stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
import orjson

from cryptostream.core.symbols import SYMBOL_RE
from cryptostream.core.trades import (
    MAX_ID,
    MAX_TIME_MS,
    MAX_TIME_US,
    Trade,
    check_int,
    check_positive_decimal,
    shown,
)

SCHEMA_VERSION = 1


class DecodeError(ValueError):
    """A record value that is not a valid schema-v1 trade; the message is the reason."""


@dataclass(frozen=True, slots=True)
class TradeRecord:
    trade: Trade
    ingest_time_us: int


def encode_trade(trade: Trade, ingest_time_us: int) -> bytes:
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "exchange": trade.exchange,
            "symbol": trade.symbol,
            "trade_id": trade.trade_id,
            "price": trade.price,
            "quantity": trade.quantity,
            "trade_time": trade.trade_time,
            "event_time": trade.event_time,
            "buyer_is_maker": trade.buyer_is_maker,
            "ingest_time_us": ingest_time_us,
        }
    )


def encode_trade_fields(
    symbol: str,
    trade_id: int,
    price: str,
    quantity: str,
    trade_time: int,
    event_time: int,
    buyer_is_maker: bool,
    ingest_time_us: int,
) -> bytes:
    """:func:`encode_trade`'s bytes from the fields of a trade already validated (ingest's hot
    path: no :class:`Trade`, no dict; msgspec encodes the struct in its field order, the schema's,
    about 3x faster than the dict through orjson). Byte-equality with :func:`encode_trade` is
    property-tested."""
    return _encode_struct(
        RecordFields(
            1,  # SCHEMA_VERSION
            "binance",
            symbol,
            trade_id,
            price,
            quantity,
            trade_time,
            event_time,
            buyer_is_maker,
            ingest_time_us,
        )
    )


def encode_key(symbol: str) -> bytes:
    return symbol.encode()


_Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
_TimeMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_MS)]
_TimeUs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_US)]
# How far a trade's time may lie after its ingest receive time. Exchange and ingest clocks
# differ by milliseconds; a trade hours or years ahead is a bad record, and applying it would
# make it the newest candle, against which the processor trims the candle history (every real
# candle would be deleted). Past times are fine: backfills and replays are old by nature.
DEFAULT_MAX_FUTURE_MS = 600_000

# Prices and quantities as exact integers at this many fractional digits (the schema's most).
SCALE = 20
_POW10 = tuple(10**k for k in range(SCALE + 1))


class RecordFields(msgspec.Struct, frozen=True, gc=False):
    """Schema v1's fields as decoded, before the checks msgspec cannot express cheaply (the
    decimal and symbol shapes: a regex per field costs more than the whole decode)."""

    v: Literal[1]
    exchange: str
    symbol: str
    trade_id: _Id
    price: str
    quantity: str
    trade_time: _TimeMs
    event_time: _TimeMs
    buyer_is_maker: bool
    ingest_time_us: _TimeUs


_decode_fields = msgspec.json.Decoder(RecordFields).decode
_encode_struct = msgspec.json.Encoder().encode


def scaled(text: str) -> int:
    """A plain decimal of at most 20+20 ASCII digits as an integer at ``SCALE`` fractional
    digits (``"1.5"`` -> 15 * 10^19); 0 when it is not one (or is zero)."""
    whole, dot, frac = text.partition(".")
    if (
        text.isascii()
        and 0 < len(whole) <= 20
        and whole.isdigit()
        and (not dot or (0 < len(frac) <= 20 and frac.isdigit()))
    ):
        number: int = int(whole + frac) * _POW10[SCALE - len(frac)]
        return number
    return 0


# A positive plain decimal of at most 20+20 ASCII digits ([0-9] is ASCII only): the lookahead
# asks for one non-zero digit. One C-level match is cheaper than the string method checks.
match_positive_decimal = re.compile(r"(?=[0.]*[1-9])[0-9]{1,20}(?:\.[0-9]{1,20})?").fullmatch


def positive_decimal(text: str) -> bool:
    """Whether ``text`` is a positive plain decimal of at most 20+20 ASCII digits: exactly when
    :func:`scaled` is not 0 (property-tested), without building the integer."""
    return match_positive_decimal(text) is not None


# Memos of the fast path: a decimal text's integer, a symbol text's canonical form. Real trades
# repeat their texts (in the genuine recordings of ../shared/data, 70-90 % of the prices and
# 50-70 % of the quantities of a 5,000-trade window occurred earlier in it), and a dict hit costs
# a tenth of the conversion. Only accepted texts are stored; cleared when full (bounded memory).
MEMO_MAX = 65_536
_scaled_memo: dict[str, int] = {}
_symbol_memo: dict[str, str] = {}


def clear_memos() -> None:
    """Forget every remembered text (tests and benchmarks of the checks' own cost)."""
    _scaled_memo.clear()
    _symbol_memo.clear()


def _scaled_remembered(text: str) -> int:
    number = scaled(text)
    if number:
        if len(_scaled_memo) >= MEMO_MAX:
            _scaled_memo.clear()
        _scaled_memo[text] = number
    return number


def decode_scaled(
    value: bytes | None, max_future_ms: int = DEFAULT_MAX_FUTURE_MS
) -> tuple[RecordFields, str, int, int]:
    """Decode and validate one record value: its fields, its canonical (upper-case) symbol, and
    price and quantity as integers at ``SCALE`` digits; raise DecodeError with the reason.

    The processor's hot path: msgspec decodes and bounds the integers in one pass, cheap string
    checks (memoized) do the rest. Anything refused here goes through the field-by-field checks,
    which say exactly what is wrong (the two accept the same values: property-tested).
    """
    if value is not None:
        try:
            r = _decode_fields(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:
            memo = _scaled_memo  # (a hit is never 0: only accepted texts are stored)
            price = memo.get(r.price) or _scaled_remembered(r.price)
            qty = memo.get(r.quantity) or _scaled_remembered(r.quantity)
            text = r.symbol
            symbol = _symbol_memo.get(text)
            if symbol is None and 2 <= len(text) <= 20 and text.isascii() and text.isalnum():
                symbol = text.upper()
                if len(_symbol_memo) >= MEMO_MAX:
                    _symbol_memo.clear()
                _symbol_memo[text] = symbol
            if (
                price
                and qty
                and symbol is not None
                and r.trade_time * 1000 <= r.ingest_time_us + max_future_ms * 1000
            ):
                return r, symbol, price, qty
    _decode_checked(value, max_future_ms)  # raises with the reason
    raise DecodeError("the record passes the field checks but not the fast path (a bug)")


def decode_trade(value: bytes | None, max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> TradeRecord:
    """Decode and validate one record value into a :class:`Trade` (symbols upper-cased, as every
    service does: core/symbols.py); raise DecodeError with the reason."""
    r, symbol, _price, _qty = decode_scaled(value, max_future_ms)
    trade = Trade(
        symbol,
        r.trade_id,
        r.price,
        r.quantity,
        r.trade_time,
        r.event_time,
        r.buyer_is_maker,
        r.exchange,
    )
    return TradeRecord(trade, r.ingest_time_us)


def _decode_checked(value: bytes | None, max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> TradeRecord:
    if value is None:
        raise DecodeError("record has no value")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {shown(str(exc), 200)}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    # Exactly the integer 1: JSON true and 1.0 compare equal to 1 in Python, but are not it.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise DecodeError(
            f"unsupported schema version {shown(version)} (expected the integer {SCHEMA_VERSION})"
        )
    try:
        symbol = obj["symbol"]
        if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
            raise ValueError(f"invalid symbol {shown(symbol)}")
        exchange = obj["exchange"]
        if not isinstance(exchange, str):
            raise ValueError("exchange must be a string")
        maker = obj["buyer_is_maker"]
        if not isinstance(maker, bool):
            raise ValueError("buyer_is_maker must be a boolean")
        trade = Trade(
            symbol=symbol.upper(),
            trade_id=check_int(obj["trade_id"], "trade_id"),
            price=check_positive_decimal(obj["price"], "price"),
            quantity=check_positive_decimal(obj["quantity"], "quantity"),
            trade_time=check_int(obj["trade_time"], "trade_time", maximum=MAX_TIME_MS),
            event_time=check_int(obj["event_time"], "event_time", maximum=MAX_TIME_MS),
            buyer_is_maker=maker,
            exchange=exchange,
        )
        ingest_us = check_int(obj["ingest_time_us"], "ingest_time_us", maximum=MAX_TIME_US)
    except KeyError as exc:
        raise DecodeError(f"missing field {shown(exc.args[0])}") from None
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    ahead_ms = trade.trade_time - ingest_us // 1000
    if trade.trade_time * 1000 > ingest_us + max_future_ms * 1000:
        raise DecodeError(
            f"trade_time {trade.trade_time} is {ahead_ms / 1000:.0f} s after the record's "
            f"ingest time (at most {max_future_ms / 1000:g} s allowed)"
        )
    return TradeRecord(trade, ingest_us)
