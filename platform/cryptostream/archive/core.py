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
from typing import Any

from cryptostream.core.codec import DEFAULT_MAX_FUTURE_MS, DecodeError, decode_trade
from cryptostream.core.depth import DepthRecordError, DiffRecord, decode_depth

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


@dataclass(slots=True)
class DepthColumns:
    """One depth file's rows, one per ``raw.depth`` record; the levels of all its records in
    flat lists (``bid_count``/``ask_count`` levels per record, in order), decimals as text.

    A snapshot has no ``first_id`` or ``event_time`` (None); its ``final_id`` is its
    ``last_update_id``."""

    kind: list[str] = field(default_factory=list)
    first_id: list[int | None] = field(default_factory=list)
    final_id: list[int] = field(default_factory=list)
    event_time: list[int | None] = field(default_factory=list)
    bid_count: list[int] = field(default_factory=list)
    ask_count: list[int] = field(default_factory=list)
    bid_price: list[str] = field(default_factory=list)
    bid_qty: list[str] = field(default_factory=list)
    ask_price: list[str] = field(default_factory=list)
    ask_qty: list[str] = field(default_factory=list)
    ingest_time_us: list[int] = field(default_factory=list)
    exchange: list[str] = field(default_factory=list)
    kafka_offset: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kind)


@dataclass(frozen=True, slots=True)
class Flush:
    """One Kafka partition's records from ``first`` to ``last`` (offsets, inclusive), by file.

    ``groups`` may be empty (every record of the range was undecodable): the range is still
    committed, so those records are not read again.
    """

    partition: int
    first: int
    last: int
    groups: dict[tuple[str, str], Columns | DepthColumns]  # (date, symbol) -> rows

    @property
    def rows(self) -> int:
        return sum(len(c) for c in self.groups.values())


@dataclass(slots=True)
class _Buffer:
    first: int
    last: int
    since: float  # monotonic time of the first record buffered
    rows: int = 0
    groups: dict[tuple[str, str], Any] = field(default_factory=dict)


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


class DepthSinkCore(SinkCore):
    """:class:`SinkCore` for ``raw.depth``: the same buffers, flushes and offset bookkeeping,
    one row per decoded depth record (core/depth.py's public decoder), grouped by the UTC day
    of its ingest receive time (a snapshot has no exchange time; one clock for both kinds)."""

    def add(self, partition: int, offset: int, value: bytes | None, now: float) -> None:
        expected = self.next_offset.get(partition)
        if expected is not None and offset < expected:
            self.stale += 1
            return
        self.next_offset[partition] = offset + 1
        buf = self.buffers.get(partition)
        if buf is None:
            buf = self.buffers[partition] = _Buffer(offset, offset, now)
        buf.last = offset
        try:
            record = decode_depth(value)
        except DepthRecordError:
            self.undecodable += 1  # counted; the range still covers it (as for trades)
            return
        day_no = record.ingest_time_us // 1000 // DAY_MS
        day = self._days.get(day_no)
        if day is None:
            day = self._days[day_no] = day_of(record.ingest_time_us // 1000)
        key = (day, record.symbol)
        cols = buf.groups.get(key)
        if cols is None:
            cols = buf.groups[key] = DepthColumns()
        if isinstance(record, DiffRecord):
            diff = record.diff
            cols.kind.append("diff")
            cols.first_id.append(diff.first_id)
            cols.final_id.append(diff.final_id)
            cols.event_time.append(diff.event_time)
            bids, asks = diff.bids, diff.asks
        else:
            snap = record.snapshot
            cols.kind.append("snapshot")
            cols.first_id.append(None)
            cols.final_id.append(snap.last_update_id)
            cols.event_time.append(None)
            bids, asks = snap.bids, snap.asks
        cols.bid_count.append(len(bids))
        cols.ask_count.append(len(asks))
        for price, qty in bids:
            cols.bid_price.append(price)
            cols.bid_qty.append(qty)
        for price, qty in asks:
            cols.ask_price.append(price)
            cols.ask_qty.append(qty)
        cols.ingest_time_us.append(record.ingest_time_us)
        cols.exchange.append(record.exchange)
        cols.kafka_offset.append(offset)
        buf.rows += 1
        self.buffered += 1
