"""The trade path's decisions, without I/O: frames in, actions out (sans-I/O).

:class:`TradeEngine` holds all the state one trade's fate depends on — the per-symbol id
trackers (``last``, pending and detected gaps), each connection's symbols not yet seen since it
opened (a gap there is attributed to the reconnect), the ranges accepted but not published
(``lost``), overflow mode (``dropping``), the paused connections — and the counters. Its shells
(:mod:`cryptostream.ingest.service`) do only the I/O: read frames, produce, pause a transport,
call REST, log.

In:

* :meth:`~TradeEngine.on_frames` — one read's frames, its receive time, its connection id;
* :meth:`~TradeEngine.refused` / :meth:`~TradeEngine.delivery_failed` — a trade the producer
  did not take (full queue) or Kafka did not store (after all retries);
* :meth:`~TradeEngine.tick` — the clock: drop decisions, due gaps, due tail checks;
* :meth:`~TradeEngine.tail_result`, :meth:`~TradeEngine.backfilled`,
  :meth:`~TradeEngine.finish_gap` — the answers of the REST shells.

Out: :meth:`~TradeEngine.on_frames` returns the records to produce as one list of
``(value, key, trade id)`` for the whole read (no action object per trade); rare actions —
dead letters and gap records to produce (:class:`Control`), connections to pause or resume, gaps
to backfill, symbols to tail-check — are returned by the calls that decide them, or queued in
:attr:`~TradeEngine.outbox` for the shell to produce.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cryptostream.binance.frames import (
    FAST_EVENTS,
    ControlReply,
    Ignored,
    Malformed,
    fast_trade,
    parse_frame,
)
from cryptostream.core.codec import encode_trade, encode_trade_fields
from cryptostream.core.deadletter import encode_dead_letter
from cryptostream.core.trades import Trade
from cryptostream.ingest.gaps import detected_record, final_records
from cryptostream.ingest.metrics import IngestStats
from cryptostream.ingest.resume import Seed
from cryptostream.ingest.tail import TailWatch
from cryptostream.ingest.tracker import Gap, SymbolTracker
from cryptostream.logs import RateLimitedLog

log = logging.getLogger("cryptostream.ingest")

GAP_EVERY_S = 0.1  # how often pending gaps are checked against their grace

Record = tuple[bytes, bytes, int]  # a trade record to produce: value, key (the symbol), trade id


class Control(NamedTuple):
    """A record to produce that is never dropped for lack of room: a gap record, a dead letter."""

    topic: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class Tick:
    """What the clock decided: connections to resume, gaps to backfill, symbols to tail-check."""

    resume: list[int] = field(default_factory=list)
    backfill: list[Gap] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Conn:
    url: str
    unseen: set[str]  # symbols not seen yet on this connection (after a reconnect)
    shutdown_notice: bool = False  # the server announced its shutdown


class TradeEngine:
    def __init__(
        self,
        symbols: Iterable[str],
        *,
        kind: str,
        grace_s: float,
        bound: int,
        buffer_timeout_s: float,
        max_frame: int,
        gap_topic: str,
        dlq_topic: str,
        tail_quiet_s: float = 0.0,
        stats: IngestStats | None = None,
    ) -> None:
        self.kind = kind
        self.grace_s = grace_s
        self.bound = bound
        self.buffer_timeout_s = buffer_timeout_s
        self.max_frame = max_frame
        self.gap_topic = gap_topic
        self.dlq_topic = dlq_topic
        self.stats = stats or IngestStats()
        self.trackers: dict[str, SymbolTracker] = {}
        self._keys: dict[str, bytes] = {}  # symbol -> record key
        for symbol in symbols:
            self.tracker(symbol)
        self.conns: dict[int, _Conn] = {}
        self.dropping = False
        self.lost: dict[str, list[list[int]]] = {}  # per symbol: id ranges not published
        self.paused: set[int] = set()
        self.pause_started = 0.0
        self.outbox: list[Control] = []
        self.warn = RateLimitedLog(log)
        self.tail_quiet_s = tail_quiet_s
        self.tail_watch = TailWatch(tail_quiet_s) if tail_quiet_s > 0 else None
        self._next_gaps = 0.0
        self._next_tail = 0.0

    # ----- state -------------------------------------------------------------------------

    def tracker(self, symbol: str) -> SymbolTracker:
        tracker = self.trackers.get(symbol)
        if tracker is None:
            tracker = self.trackers[symbol] = SymbolTracker(symbol, self.grace_s)
        return tracker

    @property
    def in_flight(self) -> int:
        s = self.stats
        return s.produced - s.acked - s.delivery_failed

    @property
    def has_room(self) -> bool:
        """Whether backfill may produce: not overflowing, and the buffer below 80 %."""
        return not self.dropping and self.in_flight < self.bound * 0.8

    def resume_from(self, plan: dict[str, Seed], now: float) -> list[Gap]:
        """Continue after what a previous process published (see :mod:`.resume`): the first live
        trade of each symbol then opens a ``reconnect`` gap over whatever was missed while nobody
        listened; the holes it left below its last id are pending ``restart`` gaps again. Returns
        its unfinished backfills, to queue again under their own detection."""
        again_gaps: list[Gap] = []
        for symbol, seed in plan.items():
            tracker = self.tracker(symbol)
            tracker.last = seed.last
            tracker.after_reconnect = True
            for lo, hi in seed.holes:
                tracker.open_gap(lo, hi, "restart", now)
            for again in seed.reopen:
                gap = tracker.open_gap(
                    again.first, again.last, again.cause, now, detected_at_us=again.detected_at_us
                )
                gap.missing = [[lo, hi] for lo, hi in again.missing]
                again_gaps.append(gap)
        return again_gaps

    # ----- connections ---------------------------------------------------------------------

    def connected(self, conn_id: int, url: str, unseen: Iterable[str] = ()) -> None:
        """A connection opened; ``unseen``: its symbols, after a reconnect (their next gap is a
        ``reconnect`` gap)."""
        self.conns[conn_id] = _Conn(url, set(unseen))

    def disconnected(self, conn_id: int) -> None:
        self.conns.pop(conn_id, None)
        self.paused.discard(conn_id)

    def shutdown_notice(self, conn_id: int) -> bool:
        conn = self.conns.get(conn_id)
        return conn is not None and conn.shutdown_notice

    # ----- the hot path --------------------------------------------------------------------

    def on_frames(
        self, frames: list[bytes], recv_us: int, conn_id: int, now: float
    ) -> list[Record]:
        """Parse, de-duplicate, encode: the records to produce, ``(value, key, trade id)`` with
        key = the symbol, in order. Dead letters go to :attr:`outbox`.

        A well-formed trade frame takes the typed fast path (:func:`fast_trade`: its fields
        straight into the record's bytes); anything else goes through :func:`parse_frame`,
        which classifies it and says why it is refused."""
        stats = self.stats
        stats.frames += len(frames)
        conn = self.conns.get(conn_id)
        if conn is None:
            conn = self.conns[conn_id] = _Conn("", set())
        unseen = conn.unseen
        trackers = self.trackers
        keys = self._keys
        kind = self.kind
        fast = fast_trade if kind in FAST_EVENTS else None
        max_frame = self.max_frame
        dropping = self.dropping
        out: list[Record] = []
        append = out.append
        new = 0
        for raw in frames:
            d = fast(raw, kind) if fast is not None and len(raw) <= max_frame else None
            if d is not None:
                symbol = d.s
                if not symbol.isupper():
                    symbol = symbol.upper()
                tid = d.t
                value = None
            else:
                outcome = parse_frame(raw, max_bytes=max_frame, trade_event=kind)
                if type(outcome) is not Trade:
                    self._other(outcome, raw, conn, recv_us)  # type: ignore[arg-type]
                    continue
                symbol = outcome.symbol
                tid = outcome.trade_id
                value = encode_trade(outcome, recv_us)
            tracker = trackers.get(symbol) or self.tracker(symbol)
            last = tracker.last
            if last is not None and tid == last + 1 and not unseen:
                tracker.last = tid
            elif unseen and symbol in unseen:
                unseen.discard(symbol)
                tracker.after_reconnect = True
                accepted = tracker.observe(tid, now)
                tracker.after_reconnect = False
                if not accepted:
                    stats.duplicates += 1
                    continue
            elif not tracker.observe(tid, now):
                stats.duplicates += 1
                continue
            new += 1
            if dropping:
                self._lose(symbol, tid)
                stats.buffer_dropped += 1
                continue
            if value is None:
                assert d is not None
                value = encode_trade_fields(symbol, tid, d.p, d.q, d.T, d.E, d.m, recv_us)
            key = keys.get(symbol)
            if key is None:
                key = keys[symbol] = symbol.encode()
            append((value, key, tid))
        stats.trades += new
        return out

    def _other(
        self, outcome: Malformed | Ignored | ControlReply, raw: bytes, conn: _Conn, recv_us: int
    ) -> None:
        stats = self.stats
        if isinstance(outcome, Malformed):
            stats.error("malformed")
            stats.dead_letters += 1
            self.warn.warning("malformed", "malformed frame sent to the DLQ", reason=outcome.reason)
            value = encode_dead_letter(
                outcome.reason, "ingest", conn.url, raw, received_at_us=recv_us
            )
            self.outbox.append(Control(self.dlq_topic, None, value))
        elif isinstance(outcome, Ignored):
            stats.ignored[outcome.event_type] = stats.ignored.get(outcome.event_type, 0) + 1
            if outcome.event_type == "serverShutdown":
                conn.shutdown_notice = True
        elif outcome.error is not None:
            stats.error("control")
            self.warn.warning("control", "the server rejected a request", reply=outcome.error)

    def should_pause(self, conn_id: int, now: float) -> bool:
        """After a read whose records were produced: whether to stop reading this connection
        (the buffer bound is reached). The read that crossed the bound is kept."""
        if self.dropping or self.in_flight < self.bound:
            return False
        if not self.paused:
            self.pause_started = now
        self.paused.add(conn_id)
        return True

    def refused(self, key: bytes, tid: int) -> None:
        """The producer's queue was full: the live trade was not published."""
        self._lose(key.decode(), tid)
        self.stats.buffer_dropped += 1

    def lose(self, key: bytes, tid: int) -> None:
        """A backfilled trade the producer did not take: it is missing again."""
        self._lose(key.decode(), tid)

    def delivery_failed(self, key: bytes, tid: int) -> None:
        """Kafka did not take the trade after all retries."""
        self.stats.delivery_failed += 1
        self._lose(key.decode(), tid)

    def _lose(self, symbol: str, tid: int) -> None:
        ranges = self.lost.get(symbol)
        if ranges is None:
            ranges = self.lost[symbol] = []
        if ranges and ranges[-1][1] == tid - 1:
            ranges[-1][1] = tid
        else:
            ranges.append([tid, tid])

    # ----- the clock -----------------------------------------------------------------------

    def tick(self, now: float, now_us: int) -> Tick:
        """Drop decisions (every call), due gaps (every ``GAP_EVERY_S``), due tail checks."""
        out = Tick()
        in_flight = self.in_flight
        if self.dropping:
            if in_flight < self.bound // 2:
                self.dropping = False
                log.warning(
                    "Kafka caught up: publishing again", extra={"fields": {"in_flight": in_flight}}
                )
        elif self.paused:
            if in_flight < self.bound * 0.8:
                out.resume = self._resume_all()
            elif now - self.pause_started >= self.buffer_timeout_s:
                self.dropping = True
                out.resume = self._resume_all()
                log.error(
                    "Kafka is not keeping up: trades are dropped and recorded as gaps "
                    "(buffer_overflow) until it does",
                    extra={"fields": {"in_flight": in_flight, "bound": self.bound}},
                )
        if now >= self._next_gaps:
            self._next_gaps = now + GAP_EVERY_S
            out.backfill = self.gap_step(now, now_us)
        watch = self.tail_watch
        if watch is not None and now >= self._next_tail:
            self._next_tail = now + min(1.0, self.tail_quiet_s / 2)
            if not self.paused and not self.dropping:  # unread frames would look like losses
                out.tail = watch.due({s: t.last for s, t in self.trackers.items()}, now)
        return out

    def _resume_all(self) -> list[int]:
        resumed = list(self.paused)
        self.paused.clear()
        return resumed

    def gap_step(self, now: float, now_us: int) -> list[Gap]:
        """Detect gaps past their grace, report lost ranges and evicted gaps; returns the gaps
        to backfill (their ``detected`` records are in :attr:`outbox`)."""
        backfill: list[Gap] = []
        for tracker in self.trackers.values():
            if tracker.gaps:
                for gap in tracker.due(now, now_us):
                    self._detected(gap, now_us)
                    backfill.append(gap)
            if tracker.evicted:
                evicted, tracker.evicted = tracker.evicted, []
                for gap in evicted:
                    if not gap.detected:
                        gap.detected_at_us = now_us
                        self._detected(gap, now_us)
                    self._close(gap, gap.outcome(), now_us)
        if self.lost:
            lost, self.lost = self.lost, {}
            for symbol, ranges in lost.items():
                tracker = self.tracker(symbol)
                for lo, hi in ranges:
                    gap = tracker.mark_lost(lo, hi, "buffer_overflow", now, now_us)
                    self._detected(gap, now_us)
                    backfill.append(gap)
        return backfill

    def _detected(self, gap: Gap, now_us: int) -> None:
        record = detected_record(gap, now_us)
        self.stats.gap("detected", record.count)
        self.outbox.append(Control(self.gap_topic, gap.symbol.encode(), record.encode()))
        self.warn.warning(
            f"gap:{gap.symbol}",
            "gap in trade ids",
            symbol=gap.symbol,
            first_id=gap.first,
            last_id=gap.last,
            count=record.count,
            cause=gap.cause,
        )

    def _close(self, gap: Gap, ranges: list[tuple[int, int, Any]], now_us: int) -> None:
        if gap.closed:  # evicted while queued for backfill: its final records exist
            return
        gap.closed = True
        for record in final_records(gap, ranges, now_us):
            self.stats.gap(record.status, record.count)
            self.outbox.append(Control(self.gap_topic, gap.symbol.encode(), record.encode()))
            if record.status == "unrecoverable":
                self.warn.warning(
                    f"unrecoverable:{gap.symbol}",
                    "trades lost for good (reported as a gap)",
                    symbol=gap.symbol,
                    first_id=record.first_id,
                    last_id=record.last_id,
                    count=record.count,
                    cause=gap.cause,
                )

    def finish_gap(self, gap: Gap, now_us: int) -> None:
        """Close a detected gap: what arrived since detection is backfilled, the rest
        unrecoverable (final records in :attr:`outbox`)."""
        self._close(gap, self.tracker(gap.symbol).finish(gap), now_us)

    def shutdown(self, queued: list[Gap], in_backfill: list[Gap], now_us: int) -> None:
        """At exit every detected gap gets its final record (what is missing: unrecoverable):
        pending ones are detected now; they, ``queued`` and ``in_backfill`` are closed."""
        fresh = self.gap_step(float("inf"), now_us)
        for gap in queued + fresh + in_backfill:
            self.finish_gap(gap, now_us)

    # ----- REST answers --------------------------------------------------------------------

    def tail_result(self, symbol: str, newest: int | None, now: float) -> None:
        """REST's newest id of a quiet symbol: ids beyond the last one seen are a pending gap
        (not detected: the WebSocket may still deliver them within the grace)."""
        tracker = self.tracker(symbol)
        if newest is not None and tracker.last is not None and newest > tracker.last:
            tracker.open_gap(tracker.last + 1, newest, "tail", now)
            tracker.last = newest

    def backfilled(self, gap: Gap, trades: Iterable[Trade], now_us: int) -> list[Record]:
        """Backfilled trades: those still missing from ``gap``, as records to produce."""
        return [
            (encode_trade(trade, now_us), trade.symbol.encode(), trade.trade_id)
            for trade in trades
            if gap.fill(trade.trade_id)
        ]

    # ----- health --------------------------------------------------------------------------

    def gauges(self) -> dict[str, float]:
        return {
            "buffer_depth": self.in_flight,
            "symbols": len(self.trackers),
            "open_gaps": sum(len(t.gaps) for t in self.trackers.values()),
            "dropping": int(self.dropping),
        }
