"""The trade record every stage agrees on."""

from __future__ import annotations

import math
import re

import msgspec

# Binance sends prices and quantities as plain decimal strings ("66398.85000000"). Anything else
# (exponents, signs, NaN, Infinity) is rejected rather than guessed at.
DECIMAL_PATTERN = r"\A[0-9]{1,20}(\.[0-9]{1,20})?\Z"
_DECIMAL_RE = re.compile(DECIMAL_PATTERN)


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
        raise ValueError(f"{name} is not a plain decimal: {value[:40]!r}")
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name} must be positive: {value!r}")
    return value


def check_int(value: object, name: str, *, minimum: int = 0) -> int:
    # bool is an int subclass; a JSON true is not a trade id.
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}: {value}")
    return value
