"""The archive sink's pure core: group decoded trades into files and decide when to flush.

No I/O here. Records are added with their Kafka partition and offset; each Kafka partition
buffers its own trades, grouped by ``(date, symbol)`` (the hive partition of the archive), and
a flush takes one Kafka partition's buffer whole: every file it yields holds records of that
Kafka partition only, over one contiguous offset range. That is what makes a flush committable
on its own (one marker per Kafka partition, archive/store.py) and a restart exact.

A symbol is a Kafka key, so it lives in one Kafka partition: its trades of one flush land in
one file per UTC day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptostream.core.codec import DEFAULT_MAX_FUTURE_MS, DecodeError, decode_trade

DAY_MS = 86_400_000


@dataclass(slots=True)
class Columns:
    """One file's rows, column by column (decimals still as the record's strings)."""

    trade_id: list[int] = field(default_factory=list)
    price: list[str] = field(default_factory=list)
    quantity: list[str] = field(default_factory=list)
    trade_time: list[int] = field(default_factory=list)
    event_time: list[int] = field(default_factory=list)
    buyer_is_maker: list[bool] = field(default_factory=list)
    ingest_time_us: list[int] = field(default_factory=list)
    exchange: list[str] = field(default_factory=list)
    kafka_offset: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.trade_id)


@dataclass(frozen=True, slots=True)
class Flush:
    """One Kafka partition's records from ``first`` to ``last`` (offsets, inclusive), by file.

    ``groups`` may be empty (every record of the range was undecodable): the range is still
    committed, so those records are not read again.
    """

    partition: int
    first: int
    last: int
    groups: dict[tuple[str, str], Columns]  # (date "YYYY-MM-DD", symbol) -> rows

    @property
    def rows(self) -> int:
        return sum(len(c) for c in self.groups.values())


@dataclass(slots=True)
class _Buffer:
    first: int
    last: int
    since: float  # monotonic time of the first record buffered
    rows: int = 0
    groups: dict[tuple[str, str], Columns] = field(default_factory=dict)


def day_of(trade_time_ms: int) -> str:
    return (dt.datetime(1970, 1, 1) + dt.timedelta(days=trade_time_ms // DAY_MS)).strftime(
        "%Y-%m-%d"
    )


class SinkCore:
    """Buffers per Kafka partition; ``due`` says which partitions to flush now."""

    def __init__(
        self, flush_rows: int, flush_s: float, max_future_ms: int = DEFAULT_MAX_FUTURE_MS
    ) -> None:
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.max_future_ms = max_future_ms
        self.buffers: dict[int, _Buffer] = {}
        self.buffered = 0
        self.undecodable = 0
        self.stale = 0
        self.next_offset: dict[int, int] = {}  # partition -> first offset not yet buffered
        self._days: dict[int, str] = {}

    def start(self, partition: int, offset: int) -> None:
        """The partition is (re)assigned and resumes at ``offset``; records below are stale."""
        self.drop(partition)
        self.next_offset[partition] = offset

    def drop(self, partition: int) -> None:
        """Forget a revoked partition's unflushed records (their new owner reads them again)."""
        buf = self.buffers.pop(partition, None)
        if buf is not None:
            self.buffered -= buf.rows
        self.next_offset.pop(partition, None)

    def add(self, partition: int, offset: int, value: bytes | None, now: float) -> None:
        expected = self.next_offset.get(partition)
        if expected is not None and offset < expected:
            self.stale += 1  # a fetch racing a seek: already archived or buffered
            return
        self.next_offset[partition] = offset + 1
        buf = self.buffers.get(partition)
        if buf is None:
            buf = self.buffers[partition] = _Buffer(offset, offset, now)
        buf.last = offset
        try:
            record = decode_trade(value, self.max_future_ms)
        except DecodeError:
            # The processor sends these to the DLQ; the archive keeps only valid trades. The
            # offset range still covers them, so they are not read again after a restart.
            self.undecodable += 1
            return
        trade = record.trade
        day_no = trade.trade_time // DAY_MS
        day = self._days.get(day_no)
        if day is None:
            day = self._days[day_no] = day_of(trade.trade_time)
        key = (day, trade.symbol)
        cols = buf.groups.get(key)
        if cols is None:
            cols = buf.groups[key] = Columns()
        cols.trade_id.append(trade.trade_id)
        cols.price.append(trade.price)
        cols.quantity.append(trade.quantity)
        cols.trade_time.append(trade.trade_time)
        cols.event_time.append(trade.event_time)
        cols.buyer_is_maker.append(trade.buyer_is_maker)
        cols.ingest_time_us.append(record.ingest_time_us)
        cols.exchange.append(trade.exchange)
        cols.kafka_offset.append(offset)
        buf.rows += 1
        self.buffered += 1

    def due(self, now: float, *, everything: bool = False) -> list[int]:
        """Partitions to flush: all of them when the sink holds ``flush_rows`` trades (or when
        stopping), else those whose oldest record has waited ``flush_s``."""
        if everything or self.buffered >= self.flush_rows:
            return sorted(self.buffers)
        return sorted(p for p, b in self.buffers.items() if now - b.since >= self.flush_s)

    def take(self, partition: int) -> Flush:
        buf = self.buffers.pop(partition)
        self.buffered -= buf.rows
        return Flush(partition, buf.first, buf.last, buf.groups)
