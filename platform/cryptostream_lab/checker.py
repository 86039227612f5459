"""Compare the Redis views with the truth recomputed from the trades themselves, and the L2
books with the books rebuilt from ``raw.depth`` by :class:`~cryptostream.core.depth.TopicBook`.

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

from cryptostream.core.codec import DEFAULT_MAX_FUTURE_MS
from cryptostream.core.depth import DepthRecord, DepthRecordError, TopicBook, decode_depth
from cryptostream.core.keys import (
    book_key,
    book_side_key,
    candle_member,
    candles_1m_key,
    parse_level_member,
    price_key,
    stats_key,
    symbol_tag,
)
from cryptostream.core.orderbook import Level
from cryptostream.core.trades import Trade
from cryptostream.core.views import MINUTE_MS, SymbolViews, compute_views
from cryptostream.redisconn import Client, layout_partitions

DEFAULT_PARTITIONS = 8  # an empty Redis records no layout: any count finds nothing


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
        got_stats = (
            have,
            Decimal(stats.get("base_volume", "0")),
            Decimal(stats.get("quote_volume", "0")),
        )
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


def stored_partitions(client: Client, partitions: int | None = None) -> int:
    """The layout's partition count: given, else what the processor recorded in Redis."""
    if partitions is not None:
        return partitions
    return layout_partitions(client) or DEFAULT_PARTITIONS


def read_views(
    client: Client,
    symbols: Iterable[str],
    candle_limit: int = 100_000,
    partitions: int | None = None,
) -> RedisViews:
    """What Redis holds for ``symbols`` (one pipelined read; per master on a cluster), with
    the layout of ``partitions`` (default: the one recorded in Redis)."""
    symbols = list(symbols)
    n = stored_partitions(client, partitions)
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.hgetall(price_key(symbol, n))
        pipe.zrange(candles_1m_key(symbol, n), 0, candle_limit)
        pipe.hgetall(stats_key(symbol, n))
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
    client: Client,
    trades: list[Trade],
    candle_history_minutes: int = 1440,
    partitions: int | None = None,
) -> CheckReport:
    expected = compute_views(trades)
    actual = read_views(client, expected, partitions=partitions)
    return compare(expected, actual, len(trades), candle_history_minutes)


# --- L2 books (raw.depth) --------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBook:
    """One ``book:{SYMBOL}`` as Redis holds it: the hash, and each side best level first."""

    state: dict[str, str]
    bids: list[Level]
    asks: list[Level]


def read_books(
    client: Client, symbols: Iterable[str], partitions: int | None = None
) -> dict[str, StoredBook]:
    """The stored books of ``symbols``, each read atomically (one MULTI/EXEC per hash tag: a
    book's keys share its tag); a malformed member raises ValueError."""
    n = stored_partitions(client, partitions)
    by_tag: dict[str, list[str]] = {}
    for symbol in symbols:
        by_tag.setdefault(symbol_tag(symbol, n), []).append(symbol)
    out = {}
    for group in by_tag.values():
        pipe = client.pipeline(transaction=True)
        for symbol in group:
            pipe.hgetall(book_key(symbol, n))
            pipe.zrange(book_side_key(symbol, "bids", n), 0, -1)
            pipe.zrange(book_side_key(symbol, "asks", n), 0, -1)
        replies = pipe.execute()
        for i, symbol in enumerate(group):
            state, bids, asks = replies[3 * i : 3 * i + 3]
            out[symbol] = StoredBook(
                {_s(k): _s(v) for k, v in state.items()},
                [parse_level_member(m) for m in reversed(bids)],  # the set ascends: reversed
                [parse_level_member(m) for m in asks],
            )
    return out


def expected_books(records: Iterable[DepthRecord]) -> dict[str, TopicBook]:
    """Every symbol's book rebuilt from the topic's records, in order, with the contract's rule."""
    books: dict[str, TopicBook] = {}
    for record in records:
        books.setdefault(record.symbol, TopicBook()).apply(record)
    return books


def _sorted_levels(book: TopicBook, side: str) -> list[Level]:
    levels = book.book.bids if side == "bids" else book.book.asks
    return [levels[p] for p in sorted(levels, reverse=side == "bids")]


def compare_books(
    expected: dict[str, TopicBook], actual: dict[str, StoredBook], records: int
) -> CheckReport:
    """Level by level (the exchange's texts), plus status, last_update_id and best bid/ask."""
    report = CheckReport(records=records, symbols=len(expected))
    for symbol, want in sorted(expected.items()):
        got = actual.get(symbol, StoredBook({}, [], []))
        state = got.state

        def wrong(view: str, expected: object, actual: object, symbol: str = symbol) -> None:
            report.discrepancies.append(Discrepancy(symbol, view, expected, actual))

        status = "synced" if want.synced else "unsynced"
        if state.get("status") != status:
            wrong("book.status", status, state.get("status"))
        if state.get("last_update_id") != str(want.book.last_update_id):
            wrong("book.last_update_id", want.book.last_update_id, state.get("last_update_id"))
        if not want.synced and not state.get("reason"):
            wrong("book.reason", "a reason", state.get("reason"))
        for side, stored in (("bids", got.bids), ("asks", got.asks)):
            levels = _sorted_levels(want, side)
            if levels != stored:
                at = next(
                    (i for i, (a, b) in enumerate(zip(levels, stored, strict=False)) if a != b),
                    min(len(levels), len(stored)),
                )
                wrong(
                    f"book.{side}[{at}] of {len(levels)}",
                    levels[at] if at < len(levels) else None,
                    stored[at] if at < len(stored) else None,
                )
            name = side[:-1]  # bid, ask
            best = (state.get(f"best_{name}"), state.get(f"best_{name}_qty"))
            top = levels[0] if levels else (None, None)
            if best != top:
                wrong(f"book.best_{name}", top, best)
    return report


def check_books(
    client: Client, values: Iterable[bytes | None], partitions: int | None = None
) -> CheckReport:
    """Rebuild every book from the depth topic's values (in topic order per symbol; records that
    are not valid depth records are skipped, as the processor dead-letters them) and compare."""
    records = []
    for value in values:
        try:
            records.append(decode_depth(value))
        except DepthRecordError:
            continue
    expected = expected_books(records)
    return compare_books(expected, read_books(client, expected, partitions), len(records))
