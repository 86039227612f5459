"""Compare the Redis views with the truth recomputed from the trades themselves.

The expected views come from ``core.views`` — the same math the processor applies batch by
batch — run once over every trade (read back from the topic, or taken from the simulator's
record). Running totals are deliberately non-idempotent, so a record applied twice or never
shows up as a count difference and is reported as duplicated or lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import redis

from cryptostream.core.codec import DEFAULT_MAX_FUTURE_MS
from cryptostream.core.keys import candle_member, candles_1m_key, price_key, stats_key
from cryptostream.core.trades import Trade
from cryptostream.core.views import MINUTE_MS, SymbolViews, compute_views


@dataclass(frozen=True)
class Discrepancy:
    symbol: str
    view: str
    expected: object
    actual: object


@dataclass
class CheckReport:
    records: int = 0
    symbols: int = 0
    lost: int = 0
    duplicated: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def summary(self) -> str:
        head = (
            f"{self.records} records, {self.symbols} symbols: {self.lost} lost, "
            f"{self.duplicated} duplicated, {len(self.discrepancies)} wrong entries"
        )
        return "\n".join([head, *(f"  {d}" for d in self.discrepancies[:20])])


@dataclass
class RedisViews:
    """What Redis holds for some symbols (decoded, no I/O)."""

    prices: dict[str, dict[str, str]]
    candles: dict[str, list[dict[str, Any]]]
    stats: dict[str, dict[str, str]]


def compare(
    expected: dict[str, SymbolViews],
    actual: RedisViews,
    records: int,
    candle_history_minutes: int = 1440,
    now_ms: int | None = None,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> CheckReport:
    report = CheckReport(records=records, symbols=len(expected))
    history_ms = candle_history_minutes * MINUTE_MS
    # the processor's retention: relative to the newest candle, but never past its clock
    horizon_cap = (time.time_ns() // 1_000_000 if now_ms is None else now_ms) + max_future_ms
    for symbol, views in sorted(expected.items()):
        latest = views.latest
        price = actual.prices.get(symbol, {})
        if price.get("trade_id") != str(latest.trade_id) or price.get("price") != latest.price:
            report.discrepancies.append(
                Discrepancy(
                    symbol,
                    "price",
                    (latest.trade_id, latest.price),
                    (price.get("trade_id"), price.get("price")),
                )
            )
        stats = actual.stats.get(symbol, {})
        have = int(stats.get("trades", 0))
        totals = views.totals
        if have < totals.trades:
            report.lost += totals.trades - have
        elif have > totals.trades:
            report.duplicated += have - totals.trades
        want_stats = (totals.trades, totals.base_volume, totals.quote_volume)
        got_stats = (have, Decimal(stats.get("base_volume", "0")),
                     Decimal(stats.get("quote_volume", "0")))  # fmt: skip
        if want_stats != got_stats:
            report.discrepancies.append(Discrepancy(symbol, "stats", want_stats, got_stats))
        stored = {c["t"]: c for c in actual.candles.get(symbol, [])}
        oldest_kept = min(max(views.candles), horizon_cap) - history_ms + MINUTE_MS
        for minute, candle in sorted(views.candles.items()):
            if minute < oldest_kept:
                continue
            member = candle_member(candle)
            got = stored.get(minute)
            if got is None or _candle_key(got) != _candle_key(member):
                report.discrepancies.append(Discrepancy(symbol, f"candle@{minute}", member, got))
    return report


def _candle_key(c: dict[str, Any]) -> tuple[object, ...]:
    return (
        int(c["t"]),
        *(Decimal(str(c[k])) for k in ("o", "h", "l", "c", "v", "qv")),
        int(c["n"]),
    )


def read_views(
    client: redis.Redis, symbols: Iterable[str], candle_limit: int = 100_000
) -> RedisViews:
    symbols = list(symbols)
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.hgetall(price_key(symbol))
        pipe.zrange(candles_1m_key(symbol), 0, candle_limit)
        pipe.hgetall(stats_key(symbol))
    replies = pipe.execute()

    def text(mapping: dict[Any, Any]) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in mapping.items()}

    views = RedisViews({}, {}, {})
    for i, symbol in enumerate(symbols):
        price, candles, stats = replies[3 * i : 3 * i + 3]
        views.prices[symbol] = text(price)
        views.candles[symbol] = [orjson.loads(m) for m in candles]
        views.stats[symbol] = text(stats)
    return views


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def check(
    client: redis.Redis, trades: list[Trade], candle_history_minutes: int = 1440
) -> CheckReport:
    expected = compute_views(trades)
    return compare(expected, read_views(client, expected), len(trades), candle_history_minutes)
