"""Candle math (pure): parse the processor's 1-minute candles and roll them up to coarser ones.

Prices and volumes stay :class:`~decimal.Decimal` from the stored strings to the answer, so a
5-minute volume is the exact sum of its minutes (floats would drift in the last digits). Buckets
are aligned to the epoch like Binance's klines: a 15m candle opens at :00, :15, :30 or :45.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from cryptostream.core.decimals import EXACT as _EXACT

MINUTE_MS = 60_000
INTERVAL_MINUTES: dict[str, int] = {"1m": 1, "5m": 5, "15m": 15, "1h": 60}


@dataclass(frozen=True, slots=True)
class Candle:
    t: int  # open time, ms
    o: Decimal
    h: Decimal
    l: Decimal  # noqa: E741 - the stored field's name
    c: Decimal
    v: Decimal  # base volume
    qv: Decimal  # quote volume
    n: int  # trade count


def parse_candle(member: bytes | str) -> Candle:
    """One ``candles:1m:{SYMBOL}`` member; ValueError if it is not the processor's shape."""
    try:
        doc: Any = orjson.loads(member)
        return Candle(
            t=int(doc["t"]),
            o=Decimal(doc["o"]),
            h=Decimal(doc["h"]),
            l=Decimal(doc["l"]),
            c=Decimal(doc["c"]),
            v=Decimal(doc["v"]),
            qv=Decimal(doc["qv"]),
            n=int(doc["n"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, decimal.InvalidOperation) as exc:
        raise ValueError(f"malformed candle {member!r:.120}: {exc!r}") from None


def bucket_start(t_ms: int, minutes: int) -> int:
    width = minutes * MINUTE_MS
    return t_ms - t_ms % width


def aggregate(candles: Iterable[Candle], minutes: int) -> list[Candle]:
    """Roll 1-minute candles (sorted by open time) up into ``minutes``-wide candles.

    Open is the first minute's open, close the last one's close, high/low the extremes, and
    volumes and trade counts the exact sums. Minutes without trades simply have no candle.
    """
    if minutes == 1:
        return list(candles)
    out: list[Candle] = []
    for candle in candles:
        start = bucket_start(candle.t, minutes)
        if out and out[-1].t == start:
            prev = out[-1]
            out[-1] = Candle(
                t=start,
                o=prev.o,
                h=max(prev.h, candle.h),
                l=min(prev.l, candle.l),
                c=candle.c,
                v=_EXACT.add(prev.v, candle.v),
                qv=_EXACT.add(prev.qv, candle.qv),
                n=prev.n + candle.n,
            )
        else:
            out.append(
                Candle(start, candle.o, candle.h, candle.l, candle.c, candle.v, candle.qv, candle.n)
            )
    return out


def decimal_str(value: Decimal) -> str:
    """Plain notation, never exponent form (``1E-8`` -> ``0.00000001``)."""
    return format(value, "f")


def candle_json(candle: Candle, minutes: int) -> dict[str, Any]:
    return {
        "open_time": candle.t,
        "close_time": candle.t + minutes * MINUTE_MS - 1,
        "open": decimal_str(candle.o),
        "high": decimal_str(candle.h),
        "low": decimal_str(candle.l),
        "close": decimal_str(candle.c),
        "volume": decimal_str(candle.v),
        "quote_volume": decimal_str(candle.qv),
        "trades": candle.n,
    }
