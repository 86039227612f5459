"""The trade record every stage agrees on."""

from __future__ import annotations

import math
import re

import msgspec

# Binance sends prices and quantities as plain decimal strings ("66398.85000000"). Anything else
# (exponents, signs, NaN, Infinity) is rejected rather than guessed at. At most 20 integer and 20
# fractional digits: the views' exact arithmetic is sized for that (core/decimals.py).
DECIMAL_PATTERN = r"\A[0-9]{1,20}(\.[0-9]{1,20})?\Z"
_DECIMAL_RE = re.compile(DECIMAL_PATTERN)

# Every integer of a trade is bounded, so that no schema-valid value can break a later stage:
# ids fit Kafka's and Redis's signed 64-bit integers (and travel as strings through Lua, whose
# numbers are doubles); times stay below year 10000 (datetime can render them, and a minute's
# open time stays an exact double: a Redis sorted-set score).
MAX_ID = 2**63 - 1
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_TIME_US = MAX_TIME_MS * 1000 + 999


class Trade(msgspec.Struct, frozen=True, gc=False):
    """One executed trade. Prices and quantities stay decimal strings end to end.

    A msgspec struct rather than a frozen dataclass: the processor builds one per record, and a
    frozen dataclass's ``__init__`` alone cost 12% of its CPU (``nox -s bench_processor``).
    """

    symbol: str
    trade_id: int
    price: str
    quantity: str
    trade_time: int  # exchange trade time, ms since the epoch
    event_time: int  # exchange event time, ms since the epoch
    buyer_is_maker: bool
    exchange: str = "binance"


def check_positive_decimal(value: object, name: str) -> str:
    """Return ``value`` if it is a positive, finite decimal string; raise ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a decimal string, got {type(value).__name__}")
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError(f"{name} is not a plain decimal of at most 20+20 digits: {shown(value)}")
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name} must be positive: {value!r}")
    return value


def check_int(value: object, name: str, *, minimum: int = 0, maximum: int = MAX_ID) -> int:
    # bool is an int subclass; a JSON true is not a trade id.
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}]: {shown(value)}")
    return value


def shown(value: object, limit: int = 40) -> str:
    """A bounded repr for error messages: a reason never echoes an unbounded input."""
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 256 else "<huge int>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
