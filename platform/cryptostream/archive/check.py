"""The archive's checker: per symbol, its counts, volume sums and last trade equal the topic's;
with ``CSP_ARCHIVE_DEPTH``, also its depth record counts (all, and snapshots) and last update id
(the ``final_id`` of the symbol's last record) equal ``raw.depth``'s.

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
from cryptostream.core.depth import DepthRecordError, DiffRecord, decode_depth
from cryptostream.history.queries import History


@dataclass
class SymbolTotals:
    count: int = 0
    volume: Decimal = Decimal(0)
    last_id: int = -1
    last_price: Decimal = Decimal(0)


@dataclass
class DepthTotals:
    count: int = 0
    snapshots: int = 0
    last_id: int = -1  # final_id (a snapshot's lastUpdateId) of the last record in topic order


@dataclass
class ArchiveReport:
    records: int = 0
    undecodable: int = 0
    symbols: int = 0
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    depth_records: int | None = None  # None: depth not checked
    depth_undecodable: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (
            f"{self.records} records ({self.undecodable} undecodable), {self.symbols} symbols: "
            f"{self.lost} lost, {self.duplicated} duplicated, {len(self.problems)} problems, "
            f"{len(self.skipped_files)} files skipped"
        )
        if self.depth_records is not None:
            head += f"; depth: {self.depth_records} records ({self.depth_undecodable} undecodable)"
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


def depth_truth(values: Iterable[bytes | None]) -> tuple[dict[str, DepthTotals], int, int]:
    """Per-symbol depth totals of the decodable records, in topic order; also the record and
    undecodable counts."""
    out: dict[str, DepthTotals] = {}
    records = bad = 0
    for value in values:
        records += 1
        try:
            record = decode_depth(value)
        except DepthRecordError:
            bad += 1
            continue
        t = out.setdefault(record.symbol, DepthTotals())
        t.count += 1
        if isinstance(record, DiffRecord):
            t.last_id = record.diff.final_id
        else:
            t.snapshots += 1
            t.last_id = record.snapshot.last_update_id
    return out, records, bad


def compare_depth(
    expected: dict[str, DepthTotals], actual: dict[str, DepthTotals], report: ArchiveReport
) -> ArchiveReport:
    for symbol in sorted(set(expected) | set(actual)):
        e = expected.get(symbol, DepthTotals())
        a = actual.get(symbol, DepthTotals())
        for what, want, got in (
            ("depth records", e.count, a.count),
            ("depth snapshots", e.snapshots, a.snapshots),
            ("last update id", e.last_id, a.last_id),
        ):
            if want != got:
                report.problems.append(f"{symbol} {what}: topic {want}, archive {got}")
    return report


def depth_archive_totals(
    history: History,
) -> tuple[dict[str, DepthTotals], list[tuple[str, str]]]:
    result = history.sql(
        "SELECT symbol, count(*), count(*) FILTER (WHERE kind = 'snapshot'), "
        "arg_max(final_id, kafka_offset) FROM depth GROUP BY symbol"
    )
    out = {
        sym: DepthTotals(int(n), int(snaps), int(last))
        for sym, n, snaps, last in result.rows
        if sym is not None
    }
    return out, result.skipped


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


def read_topic(
    settings: Settings, timeout_s: float = 120.0, topic: str | None = None
) -> list[bytes | None]:
    """Every record value of the topic (``topic``, else the trades'), from each partition's low
    to its high watermark, partition after partition (each in order)."""
    topic = settings.topic if topic is None else topic
    consumer = Consumer(
        settings.kafka.librdkafka({"group.id": "archive-checker", "enable.auto.commit": False})
    )
    try:
        meta = consumer.list_topics(topic, timeout=15)
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            for p in meta.topics[topic].partitions
        }
        consumer.assign([TopicPartition(topic, p, lo) for p, (lo, _) in marks.items()])
        total = sum(hi - lo for lo, hi in marks.values())
        by_partition: dict[int, list[bytes | None]] = {}
        got = 0
        deadline = time.monotonic() + timeout_s
        while got < total and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.2):
                if msg.error() is None:
                    by_partition.setdefault(msg.partition() or 0, []).append(msg.value())
                    got += 1
        return [v for p in sorted(by_partition) for v in by_partition[p]]
    finally:
        consumer.close()


def check(settings: Settings) -> ArchiveReport:
    values = read_topic(settings)
    expected, records, bad = truth(values, int(settings.processor_max_future_s * 1000))
    history = History(archive_root(settings))
    actual, skipped = archive_totals(history)
    report = ArchiveReport(records=records, undecodable=bad, skipped_files=skipped)
    compare(expected, actual, report)
    if settings.archive_depth:
        depth_expected, report.depth_records, report.depth_undecodable = depth_truth(
            read_topic(settings, topic=settings.depth_topic)
        )
        depth_actual, depth_skipped = depth_archive_totals(history)
        report.skipped_files += depth_skipped
        compare_depth(depth_expected, depth_actual, report)
    return report
