"""The archive's checker: per symbol, its counts, volume sums and last trade equal the topic's.

The truth is recomputed from the topic's records (decoded as the sink decodes them; undecodable
ones are not archived by design, and counted apart). A row lost shows as a lower count, a row
written twice as a higher one, a wrong decimal as a different sum.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from confluent_kafka import Consumer, TopicPartition

from cryptostream.archive.store import archive_root
from cryptostream.config import Settings
from cryptostream.core.codec import DEFAULT_MAX_FUTURE_MS, DecodeError, decode_trade
from cryptostream.core.decimals import EXACT
from cryptostream.history.queries import History


@dataclass
class SymbolTotals:
    count: int = 0
    volume: Decimal = Decimal(0)
    last_id: int = -1
    last_price: Decimal = Decimal(0)


@dataclass
class ArchiveReport:
    records: int = 0
    undecodable: int = 0
    symbols: int = 0
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (
            f"{self.records} records ({self.undecodable} undecodable), {self.symbols} symbols: "
            f"{self.lost} lost, {self.duplicated} duplicated, {len(self.problems)} problems, "
            f"{len(self.skipped_files)} files skipped"
        )
        lines = [head, *(f"  {p}" for p in self.problems[:20])]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped_files[:20]]
        return "\n".join(lines)


def truth(
    values: Iterable[bytes | None], max_future_ms: int = DEFAULT_MAX_FUTURE_MS
) -> tuple[dict[str, SymbolTotals], int, int]:
    """Per-symbol totals of the decodable records; also the record and undecodable counts."""
    out: dict[str, SymbolTotals] = {}
    records = bad = 0
    for value in values:
        records += 1
        try:
            trade = decode_trade(value, max_future_ms).trade
        except DecodeError:
            bad += 1
            continue
        t = out.setdefault(trade.symbol, SymbolTotals())
        t.count += 1
        t.volume = EXACT.add(t.volume, Decimal(trade.quantity))
        if trade.trade_id > t.last_id:
            t.last_id, t.last_price = trade.trade_id, Decimal(trade.price)
    return out, records, bad


def compare(
    expected: dict[str, SymbolTotals], actual: dict[str, SymbolTotals], report: ArchiveReport
) -> ArchiveReport:
    report.symbols = len(expected)
    for symbol in sorted(set(expected) | set(actual)):
        e = expected.get(symbol, SymbolTotals())
        a = actual.get(symbol, SymbolTotals())
        if a.count < e.count:
            report.lost += e.count - a.count
        elif a.count > e.count:
            report.duplicated += a.count - e.count
        for what, want, got in (
            ("count", e.count, a.count),
            ("volume", e.volume, a.volume),
            ("last trade id", e.last_id, a.last_id),
            ("last price", e.last_price, a.last_price),
        ):
            if want != got:
                report.problems.append(f"{symbol} {what}: topic {want}, archive {got}")
    return report


def archive_totals(history: History) -> tuple[dict[str, SymbolTotals], list[tuple[str, str]]]:
    result = history.sql(
        "SELECT symbol, count(*), sum(quantity), max(trade_id), arg_max(price, trade_id) "
        "FROM trades GROUP BY symbol"
    )
    out = {
        sym: SymbolTotals(int(n), Decimal(v), int(last), Decimal(price))
        for sym, n, v, last, price in result.rows
        if sym is not None
    }
    return out, result.skipped


def read_topic(settings: Settings, timeout_s: float = 120.0) -> list[bytes | None]:
    """Every record value of the topic, from each partition's low to its high watermark."""
    consumer = Consumer(
        settings.kafka.librdkafka({"group.id": "archive-checker", "enable.auto.commit": False})
    )
    try:
        meta = consumer.list_topics(settings.topic, timeout=15)
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(settings.topic, p), timeout=15)
            for p in meta.topics[settings.topic].partitions
        }
        consumer.assign([TopicPartition(settings.topic, p, lo) for p, (lo, _) in marks.items()])
        total = sum(hi - lo for lo, hi in marks.values())
        values: list[bytes | None] = []
        deadline = time.monotonic() + timeout_s
        while len(values) < total and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.2):
                if msg.error() is None:
                    values.append(msg.value())
        return values
    finally:
        consumer.close()


def check(settings: Settings) -> ArchiveReport:
    values = read_topic(settings)
    expected, records, bad = truth(values, int(settings.processor_max_future_s * 1000))
    actual, skipped = archive_totals(History(archive_root(settings)))
    report = ArchiveReport(records=records, undecodable=bad, skipped_files=skipped)
    return compare(expected, actual, report)
