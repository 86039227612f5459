"""Candle math (pure): parse the processor's 1-minute candles and roll them up to coarser ones.

Prices and volumes stay :class:`~decimal.Decimal` from the stored strings to the answer, so a
5-minute volume is the exact sum of its minutes (floats would drift in the last digits). Buckets
are aligned to the epoch like Binance's klines: a 15m candle opens at :00, :15, :30 or :45. The
candle is the views' own (core/views.py), read with the layout's decoder (core/keys.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from decimal import Decimal
from typing import Any

from cryptostream.core.decimals import fmt
from cryptostream.core.keys import parse_candle_member
from cryptostream.core.views import MINUTE_MS, Candle

__all__ = ["INTERVAL_MINUTES", "MINUTE_MS", "Candle", "aggregate", "bucket_start", "candle_json"]

INTERVAL_MINUTES: dict[str, int] = {"1m": 1, "5m": 5, "15m": 15, "1h": 60}


def parse_candle(member: bytes | str) -> Candle:
    """One ``candles:1m:{SYMBOL}`` member; ValueError if it is not the processor's shape."""
    return parse_candle_member(member)


def bucket_start(t_ms: int, minutes: int) -> int:
    width = minutes * MINUTE_MS
    return t_ms - t_ms % width


def aggregate(candles: Iterable[Candle], minutes: int) -> list[Candle]:
    """Roll 1-minute candles (sorted by open time) up into ``minutes``-wide candles with
    :meth:`Candle.merge`, the reference merge of the views: open and close by trade id, high/low
    the extremes, volumes and counts the exact sums. Minutes without trades have no candle."""
    if minutes == 1:
        return list(candles)
    out: list[Candle] = []
    for candle in candles:
        start = bucket_start(candle.open_time, minutes)
        if out and out[-1].open_time == start:
            out[-1] = replace(out[-1].merge(candle), open_time=start)
        else:
            out.append(replace(candle, open_time=start))
    return out


def decimal_str(value: Decimal | str) -> str:
    """The one canonical text of the views (core/decimals.py fmt): plain notation, never an
    exponent, no trailing fractional zeros, so a 1m candle and a roll-up of it read alike."""
    return fmt(Decimal(value))


def candle_json(candle: Candle, minutes: int) -> dict[str, Any]:
    return {
        "open_time": candle.open_time,
        "close_time": candle.open_time + minutes * MINUTE_MS - 1,
        "open": decimal_str(candle.open),
        "high": decimal_str(candle.high),
        "low": decimal_str(candle.low),
        "close": decimal_str(candle.close),
        "volume": decimal_str(candle.base_volume),
        "quote_volume": decimal_str(candle.quote_volume),
        "trades": candle.trades,
    }
