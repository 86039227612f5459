"""The ingest process: Binance frames in, Kafka records out, every loss reported.

I/O shell around the pure cores (``core.frames``, ``ingest.tracker``, ``ingest.backfill``,
``ingest.streams``, ``ingest.gaps``, ``ingest.wsproto``):

* one supervisor task per planned connection: connect (backoff + jitter, attempt limit),
  subscribe (paced), watch (closed, silent longer than ``ingest_silence_s``, older than
  ``ingest_lifetime_s`` or a ``serverShutdown`` notice), replace — proactively with an overlap:
  the new connection runs before the old one is closed, and the id tracker drops the duplicates;
* the hot path (:meth:`Ingest.on_frames`) runs synchronously in the protocol's
  ``data_received``: parse, de-duplicate, produce; counters are plain ints;
* a bounded produce buffer: past ``ingest_buffer_max`` trades in flight, reading pauses; after
  ``ingest_buffer_timeout_s`` trades are dropped and recorded as ``buffer_overflow`` gaps (as are
  records Kafka refuses after all retries) until Kafka catches up;
* gaps: detected after the reorder grace, published to ``raw.trades.gaps``, backfilled over REST
  (one worker), then closed as backfilled / unrecoverable sub-ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from confluent_kafka import KafkaError, Message, Producer

from cryptostream.config import Settings
from cryptostream.core.codec import encode_trade
from cryptostream.core.deadletter import encode_dead_letter
from cryptostream.core.frames import ControlReply, Ignored, Malformed, parse_frame
from cryptostream.core.trades import Trade
from cryptostream.ingest.backfill import (
    BackfillPlan,
    RestRequest,
    RowError,
    rest_base_url,
    trading_symbols,
)
from cryptostream.ingest.depth import depth_symbols
from cryptostream.ingest.depthservice import DepthIngest
from cryptostream.ingest.gaps import detected_record, final_records
from cryptostream.ingest.metrics import IngestStats, MetricsServer
from cryptostream.ingest.recorder import Recorder
from cryptostream.ingest.rest import BackfillError, rest_get
from cryptostream.ingest.resume import Seed, read_resume_plan
from cryptostream.ingest.streams import (
    SUBSCRIBE_INTERVAL_S,
    AttemptLimiter,
    Backoff,
    ConnectionPlan,
    plan_connections,
    subscribe_message,
)
from cryptostream.ingest.tail import TailWatch, newest_id, newest_request
from cryptostream.ingest.tracker import Gap, SymbolTracker
from cryptostream.ingest.wsclient import WsConnection, open_connection
from cryptostream.kafka_clients import make_producer, security_config
from cryptostream.logs import RateLimitedLog, setup_logging
from cryptostream.topics import TopicError, require_topic

log = logging.getLogger("cryptostream.ingest")

DeliveryCallback = Callable[[KafkaError | None, Message], None]
HEADROOM = 100_000  # producer queue room above the trade bound: gap records, DLQ, backfill


class ConfigError(RuntimeError):
    """Nothing to ingest, or the symbol list could not be read; the message says why."""


def _now_us() -> int:
    return time.time_ns() // 1000


class Ingest:
    def __init__(self, settings: Settings, symbols: list[str], rest_url: str) -> None:
        self.settings = settings
        self.symbols = symbols
        self.rest_url = rest_url
        self.kind = settings.stream_kind
        self.topic = settings.topic
        self.stats = IngestStats()
        self.trackers: dict[str, SymbolTracker] = {}
        for symbol in symbols:
            self._tracker(symbol)
        self.bound = settings.ingest_buffer_max
        self.producer = self._make_producer()
        self.fatal: KafkaError | None = None
        self.dropping = False
        self.lost: dict[str, list[list[int]]] = {}  # per symbol: id ranges not published
        self.backfill_queue: asyncio.Queue[Gap] = asyncio.Queue()
        self.in_backfill: Gap | None = None
        self.connections: set[WsConnection] = set()
        self.paused: set[WsConnection] = set()
        self.pause_started = 0.0
        self.control_backlog: list[tuple[str, bytes | None, bytes]] = []
        self.stopping = asyncio.Event()
        self.warn = RateLimitedLog(log)
        self.limiter = AttemptLimiter()
        self.recorder: Recorder | None = None
        if settings.record_dir is not None:
            rotate_bytes = int(settings.record_rotate_mb * 1e6)
            self.recorder = Recorder(settings.record_dir, rotate_bytes, settings.record_rotate_s)
        self.has_room = asyncio.Event()
        self.has_room.set()
        self.max_frame = settings.max_frame_bytes

    # ----- Kafka -------------------------------------------------------------------------

    def _make_producer(self) -> Producer:
        return make_producer(
            self.settings,
            **{
                "queue.buffering.max.messages": self.bound + HEADROOM,
                "queue.buffering.max.kbytes": 1 << 21,
                "error_cb": self._on_kafka_error,
            },
        )

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
        self.stats.error("kafka")
        self.warn.warning("kafka", "Kafka client error", **{"error.message": str(err)})

    @property
    def in_flight(self) -> int:
        s = self.stats
        return s.produced - s.acked - s.delivery_failed

    def _delivery_callback(self, recv_us: int) -> DeliveryCallback:
        stats = self.stats
        record = stats.latency.record
        now_ns = time.time_ns

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                stats.acked += 1
                record(now_ns() // 1000 - recv_us)
            else:
                self._delivery_failed(err, msg)

        return on_delivery

    def _delivery_failed(self, err: KafkaError, msg: Message) -> None:
        self.stats.delivery_failed += 1
        try:
            value = orjson.loads(msg.value() or b"")
            self._lose(str(value["symbol"]), int(value["trade_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.stats.error("delivery_unattributed")
        self.warn.warning(
            "delivery", "Kafka did not take a trade after all retries: recorded as a gap",
            **{"error.message": str(err)},
        )  # fmt: skip

    def _on_control_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.stats.error("control_delivery")
            self.warn.warning(
                "control_delivery", "a gap or DLQ record was not delivered",
                **{"error.message": str(err), "topic": msg.topic()},
            )  # fmt: skip

    def _produce_control(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Gap and DLQ records: never dropped for lack of room; retried from a backlog."""
        if self.control_backlog:
            self.control_backlog.append((topic, key, value))
            return
        try:
            self.producer.produce(topic, value, key, on_delivery=self._on_control_delivery)
        except BufferError:
            self.control_backlog.append((topic, key, value))

    def _retry_control_backlog(self) -> None:
        backlog, self.control_backlog = self.control_backlog, []
        for i, (topic, key, value) in enumerate(backlog):
            try:
                self.producer.produce(topic, value, key, on_delivery=self._on_control_delivery)
            except BufferError:
                self.control_backlog = backlog[i:]
                return

    def _lose(self, symbol: str, tid: int) -> None:
        ranges = self.lost.get(symbol)
        if ranges is None:
            ranges = self.lost[symbol] = []
        if ranges and ranges[-1][1] == tid - 1:
            ranges[-1][1] = tid
        else:
            ranges.append([tid, tid])

    # ----- hot path ------------------------------------------------------------------------

    def resume_from(self, plan: dict[str, Seed]) -> None:
        """Continue after what a previous process published (see :mod:`.resume`): the first live
        trade of each symbol then opens a ``reconnect`` gap over whatever was missed while nobody
        listened; the holes it left below its last id are pending ``restart`` gaps again, and its
        unfinished backfills are queued again under their own detection."""
        now = time.monotonic()
        for symbol, seed in plan.items():
            tracker = self._tracker(symbol)
            tracker.last = seed.last
            tracker.after_reconnect = True
            for lo, hi in seed.holes:
                tracker.open_gap(lo, hi, "restart", now)
            for again in seed.reopen:
                gap = tracker.open_gap(again.first, again.last, again.cause, now,
                                       detected_at_us=again.detected_at_us)  # fmt: skip
                gap.missing = [[lo, hi] for lo, hi in again.missing]
                self.backfill_queue.put_nowait(gap)

    def _tracker(self, symbol: str) -> SymbolTracker:
        tracker = self.trackers.get(symbol)
        if tracker is None:
            tracker = self.trackers[symbol] = SymbolTracker(
                symbol, self.settings.ingest_gap_grace_s
            )
        return tracker

    def on_frames(self, frames: list[bytes], recv_us: int, conn: WsConnection) -> None:
        stats = self.stats
        stats.frames += len(frames)
        if self.recorder is not None:
            self.recorder.write(frames, recv_us)
        produce = self.producer.produce
        topic = self.topic
        trackers = self.trackers
        kind = self.kind
        max_frame = self.max_frame
        dropping = self.dropping
        on_delivery = self._delivery_callback(recv_us)
        now = time.monotonic()
        new = produced = 0
        for raw in frames:
            outcome = parse_frame(raw, max_bytes=max_frame, trade_event=kind)
            if type(outcome) is Trade:
                symbol = outcome.symbol
                tid = outcome.trade_id
                tracker = trackers.get(symbol) or self._tracker(symbol)
                last = tracker.last
                if last is not None and tid == last + 1 and not conn.unseen:
                    tracker.last = tid
                elif conn.unseen and symbol in conn.unseen:
                    conn.unseen.discard(symbol)
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
                try:
                    produce(topic, encode_trade(outcome, recv_us), symbol.encode(),
                            on_delivery=on_delivery)  # fmt: skip
                    produced += 1
                except BufferError:
                    self._lose(symbol, tid)
                    stats.buffer_dropped += 1
            else:
                self._other(outcome, raw, conn)  # type: ignore[arg-type]
        stats.trades += new
        stats.produced += produced
        self.producer.poll(0)
        if produced and not dropping and self.in_flight >= self.bound:
            self._pause(conn)

    def _other(
        self, outcome: Malformed | Ignored | ControlReply, raw: bytes, conn: WsConnection
    ) -> None:
        stats = self.stats
        if isinstance(outcome, Malformed):
            stats.error("malformed")
            stats.dead_letters += 1
            self.warn.warning("malformed", "malformed frame sent to the DLQ", reason=outcome.reason)
            value = encode_dead_letter(outcome.reason, "ingest", conn.url, raw,
                                       received_at_us=_now_us())  # fmt: skip
            self._produce_control(self.settings.dlq_topic, None, value)
        elif isinstance(outcome, Ignored):
            stats.ignored[outcome.event_type] = stats.ignored.get(outcome.event_type, 0) + 1
            if outcome.event_type == "serverShutdown":
                conn.shutdown_notice = True
        elif outcome.error is not None:
            stats.error("control")
            self.warn.warning("control", "the server rejected a request", reply=outcome.error)

    # ----- flow control --------------------------------------------------------------------

    def _pause(self, conn: WsConnection) -> None:
        if not self.paused:
            self.pause_started = time.monotonic()
        self.paused.add(conn)
        conn.pause_reading()

    def _resume_all(self) -> None:
        for conn in self.paused:
            conn.resume_reading()
        self.paused.clear()

    def flow_step(self) -> None:
        """Deliveries, the buffer bound, overflow mode, a fatal producer (every few ms)."""
        self.producer.poll(0)
        if self.control_backlog:
            self._retry_control_backlog()
        if self.fatal is not None:
            self._replace_producer()
        in_flight = self.in_flight
        if self.dropping:
            if in_flight < self.bound // 2:
                self.dropping = False
                log.warning("Kafka caught up: publishing again",
                            extra={"fields": {"in_flight": in_flight}})  # fmt: skip
        elif self.paused:
            if in_flight < self.bound * 0.8:
                self._resume_all()
            elif time.monotonic() - self.pause_started >= self.settings.ingest_buffer_timeout_s:
                self.dropping = True
                self._resume_all()
                log.error(
                    "Kafka is not keeping up: trades are dropped and recorded as gaps "
                    "(buffer_overflow) until it does",
                    extra={"fields": {"in_flight": in_flight, "bound": self.bound}},
                )
        if self.dropping or in_flight >= self.bound * 0.8:
            self.has_room.clear()
        else:
            self.has_room.set()

    def _replace_producer(self) -> None:
        err, self.fatal = self.fatal, None
        log.error("fatal Kafka producer error: replacing the producer; undelivered trades "
                  "become gaps", extra={"fields": {"error.message": str(err)}})  # fmt: skip
        old = self.producer
        self.producer = self._make_producer()
        old.flush(1.0)  # fails what it still holds: the delivery callbacks record the gaps
        stats = self.stats
        if self.in_flight > 0:  # never reported by the old producer: count them as lost
            stats.error("producer_replaced_unaccounted", self.in_flight)
            stats.delivery_failed += self.in_flight

    async def flow_loop(self) -> None:
        while True:
            self.flow_step()
            await asyncio.sleep(0.005 if self.paused or self.in_flight else 0.05)

    # ----- gaps ----------------------------------------------------------------------------

    def gap_step(self, final: bool = False) -> None:
        """Detect gaps past their grace, report lost ranges and evicted gaps."""
        now = float("inf") if final else time.monotonic()
        now_us = _now_us()
        for tracker in self.trackers.values():
            if tracker.gaps:
                for gap in tracker.due(now, now_us):
                    self._detected(gap)
            if tracker.evicted:
                evicted, tracker.evicted = tracker.evicted, []
                for gap in evicted:
                    if not gap.detected:
                        gap.detected_at_us = now_us
                        self._detected(gap, backfill=False)
                    self._close(gap, gap.outcome())
        if self.lost:
            lost, self.lost = self.lost, {}
            for symbol, ranges in lost.items():
                tracker = self._tracker(symbol)
                for lo, hi in ranges:
                    self._detected(tracker.mark_lost(lo, hi, "buffer_overflow", now, now_us))

    def _detected(self, gap: Gap, backfill: bool = True) -> None:
        record = detected_record(gap, _now_us())
        self.stats.gap("detected", record.count)
        self._produce_control(self.settings.gap_topic, gap.symbol.encode(), record.encode())
        self.warn.warning(
            f"gap:{gap.symbol}", "gap in trade ids",
            symbol=gap.symbol, first_id=gap.first, last_id=gap.last, count=record.count,
            cause=gap.cause,
        )  # fmt: skip
        if backfill:
            self.backfill_queue.put_nowait(gap)

    def _close(self, gap: Gap, ranges: list[tuple[int, int, Any]]) -> None:
        if gap.closed:  # evicted while queued for backfill: its final records exist
            return
        gap.closed = True
        for record in final_records(gap, ranges, _now_us()):
            self.stats.gap(record.status, record.count)
            self._produce_control(self.settings.gap_topic, gap.symbol.encode(), record.encode())
            if record.status == "unrecoverable":
                self.warn.warning(
                    f"unrecoverable:{gap.symbol}", "trades lost for good (reported as a gap)",
                    symbol=gap.symbol, first_id=record.first_id, last_id=record.last_id,
                    count=record.count, cause=gap.cause,
                )  # fmt: skip

    def finish_gap(self, gap: Gap) -> None:
        self._close(gap, self._tracker(gap.symbol).finish(gap))

    async def gap_loop(self) -> None:
        while True:
            self.gap_step()
            await asyncio.sleep(0.1)

    async def tail_loop(self) -> None:
        """Check quiet symbols against REST's newest id (see :mod:`cryptostream.ingest.tail`)."""
        quiet_s = self.settings.ingest_tail_check_s
        if quiet_s <= 0:
            return
        watch = TailWatch(quiet_s)
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                await asyncio.sleep(min(1.0, quiet_s / 2))
                if self.paused or self.dropping:  # unread frames would look like losses
                    continue
                lasts = {symbol: t.last for symbol, t in self.trackers.items()}
                for symbol in watch.due(lasts, time.monotonic()):
                    await self.tail_check(client, symbol)

    async def tail_check(self, client: httpx.AsyncClient, symbol: str) -> None:
        self.stats.tail_checks += 1
        try:
            newest = newest_id(self.kind, await self._rest_get(client, newest_request(symbol)))
        except (BackfillError, RowError, ValueError) as exc:
            self.stats.error("tail_check")
            self.warn.warning("tail", "newest-id check failed", symbol=symbol,
                              **{"error.message": str(exc)})  # fmt: skip
            return
        tracker = self._tracker(symbol)
        if newest is not None and tracker.last is not None and newest > tracker.last:
            # Pending, not detected: the WebSocket may still deliver these within the grace.
            tracker.open_gap(tracker.last + 1, newest, "tail", time.monotonic())
            tracker.last = newest

    # ----- backfill ------------------------------------------------------------------------

    async def backfill_loop(self) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                gap = await self.backfill_queue.get()
                if gap.closed:
                    continue
                self.in_backfill = gap
                try:
                    if self.settings.ingest_backfill:
                        await self._backfill(client, gap)
                except BackfillError as exc:
                    self.stats.error("backfill")
                    self.warn.warning("backfill", "backfill failed; the rest of the gap stays "
                                      "unrecoverable", **{"error.message": str(exc)})  # fmt: skip
                finally:
                    self.in_backfill = None
                    self.finish_gap(gap)

    async def _kafka_has_room(self) -> None:
        await self.has_room.wait()

    async def _backfill(self, client: httpx.AsyncClient, gap: Gap) -> None:
        plan = BackfillPlan(gap.symbol, self.kind, gap.first, gap.last)
        while gap.missing and (request := plan.next_request()) is not None:
            await self._kafka_has_room()
            rows = await self._rest_get(client, request)
            trades, bad = plan.feed(rows)
            if bad:
                self.stats.error("backfill_row", bad)
            now_us = _now_us()
            on_delivery = self._delivery_callback(now_us)
            stats = self.stats
            for trade in trades:
                if gap.fill(trade.trade_id):
                    try:
                        self.producer.produce(self.topic, encode_trade(trade, now_us),
                                              trade.symbol.encode(), on_delivery=on_delivery)  # fmt: skip
                    except BufferError:
                        self._lose(trade.symbol, trade.trade_id)
                        continue
                    stats.produced += 1
                    stats.backfilled_trades += 1
            self.producer.poll(0)

    async def _rest_get(self, client: httpx.AsyncClient, request: RestRequest) -> Any:
        return await rest_get(client, request.url(self.rest_url))

    # ----- connections ---------------------------------------------------------------------

    async def _connect(
        self, plan: ConnectionPlan, backoff: Backoff, reconnect: bool
    ) -> WsConnection | None:
        while not self.stopping.is_set():
            wait = self.limiter.wait_s(time.monotonic())
            if wait > 0:
                self.warn.warning("attempts", "connection attempt limit reached; waiting",
                                  wait_s=round(wait, 1))  # fmt: skip
                await self._sleep(wait)
                continue
            try:
                conn = await open_connection(
                    plan.url, self.on_frames, max_size=max(4 * self.max_frame, 1 << 20),
                    name=plan.url[:80],
                    unseen=set(plan.symbols) if reconnect else set(),
                )  # fmt: skip
            except (OSError, ConnectionError, TimeoutError) as exc:
                self.stats.error("connect")
                delay = backoff.next_delay()
                self.warn.warning(
                    f"connect:{plan.url[:80]}", "cannot connect; retrying",
                    **{"error.message": repr(exc)[:300], "url.full": plan.url[:200],
                       "retry_in_s": round(delay, 2)},
                )  # fmt: skip
                await self._sleep(delay)
                continue
            self.connections.add(conn)
            log.info("connected", extra={"fields": {"url.full": plan.url[:200],
                                                    "streams": len(plan.streams)}})  # fmt: skip
            for i, batch in enumerate(plan.subscribe_batches):
                await self._sleep(SUBSCRIBE_INTERVAL_S)
                conn.send_text(subscribe_message(i + 1, batch))
            return conn
        return None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _watch(self, conn: WsConnection) -> str:
        s = self.settings
        while True:
            await asyncio.wait([conn.closed], timeout=0.25)
            if self.stopping.is_set():
                return "stopping"
            if conn.closed.done():
                return "closed"
            now = time.monotonic()
            if conn.shutdown_notice:
                return "shutdown"
            if now - conn.opened_at >= s.ingest_lifetime_s:
                return "lifetime"
            if not conn.paused and now - conn.last_rx > s.ingest_silence_s:
                return "silent"

    async def _overlap(self, new: WsConnection, old: WsConnection) -> None:
        """Keep the old connection until the new one delivers, then a moment more."""
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self.stopping.wait()),
            asyncio.ensure_future(new.got_frames.wait()),
            asyncio.ensure_future(asyncio.shield(new.closed)),
        ]
        await asyncio.wait(waiters, timeout=10.0, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        await self._sleep(min(1.0, self.settings.ingest_gap_grace_s))

    async def supervise(self, plan: ConnectionPlan) -> None:
        backoff = Backoff()
        conn = await self._connect(plan, backoff, reconnect=False)
        while conn is not None:
            why = await self._watch(conn)
            if why == "stopping":
                conn.close()
                return
            self.stats.reconnects += 1
            if why in ("lifetime", "shutdown"):
                log.info("replacing a connection proactively", extra={"fields": {"reason": why}})
                new = await self._connect(plan, backoff, reconnect=True)
                if new is not None:
                    await self._overlap(new, conn)
                conn.close()
                self.connections.discard(conn)
                conn = new
                continue
            self.stats.error(f"connection_{why}")
            if why == "silent":
                conn.abort(f"silent for more than {self.settings.ingest_silence_s} s")
            self.connections.discard(conn)
            self.paused.discard(conn)
            if time.monotonic() - conn.opened_at > 60:
                backoff.reset()
            delay = backoff.next_delay()
            reason = conn.closed.result() if conn.closed.done() else why
            self.warn.warning(
                f"reconnect:{plan.url[:80]}", "connection lost; reconnecting",
                **{"error.message": reason, "reason": why, "retry_in_s": round(delay, 2)},
            )  # fmt: skip
            await self._sleep(delay)
            conn = await self._connect(plan, backoff, reconnect=True)

    # ----- health, shutdown ----------------------------------------------------------------

    def gauges(self) -> dict[str, float]:
        return {
            "buffer_depth": self.in_flight,
            "connections": len(self.connections),
            "symbols": len(self.trackers),
            "open_gaps": sum(len(t.gaps) for t in self.trackers.values()),
            "dropping": int(self.dropping),
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = bool(self.connections) and not self.stopping.is_set()
        return ok, {"status": "ok" if ok else "degraded", **self.gauges(),
                    "acked": self.stats.acked, "reconnects": self.stats.reconnects}  # fmt: skip

    def shutdown_gaps(self) -> None:
        """At exit every detected gap gets its final record (what is missing: unrecoverable)."""
        self.gap_step(final=True)
        queued = [self.backfill_queue.get_nowait() for _ in range(self.backfill_queue.qsize())]
        if self.in_backfill is not None:
            queued.append(self.in_backfill)
        for gap in queued:
            self.finish_gap(gap)

    async def progress_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            log.info("progress", extra={"fields": {"ingest": self.stats.summary(),
                                                   **self.gauges()}})  # fmt: skip


async def discover_symbols(settings: Settings, rest_url: str) -> list[str]:
    async with httpx.AsyncClient(timeout=15.0) as client:
        reply = await client.get(f"{rest_url}/api/v3/exchangeInfo")
        reply.raise_for_status()
        symbols = trading_symbols(reply.json(), settings.quote_asset)
    if not symbols:
        raise ConfigError(f"no TRADING symbol with quote asset {settings.quote_asset!r}")
    return symbols


async def run(settings: Settings) -> int:
    for name, partitions in ((settings.topic, settings.partitions), (settings.dlq_topic, None),
                             (settings.gap_topic, None)):  # fmt: skip
        require_topic(settings.kafka_bootstrap, name, partitions, settings.kafka_connect_timeout_s,
                      client_config=security_config(settings))  # fmt: skip
    rest_url = settings.binance_rest_url.rstrip("/") or rest_base_url(settings.binance_ws_url)
    symbols = settings.symbols
    if settings.quote_asset:
        try:
            symbols = await discover_symbols(settings, rest_url)
        except (httpx.HTTPError, ValueError) as exc:
            raise ConfigError(f"cannot read the symbols from {rest_url}/api/v3/exchangeInfo: "
                              f"{exc!r}") from None  # fmt: skip
    if not symbols:
        raise ConfigError("no symbols to ingest: set CSP_SYMBOLS or CSP_QUOTE_ASSET")
    depth_list = depth_symbols(settings.depth_symbols, symbols)
    if depth_list:  # the depth topic is checked only when depth is on
        require_topic(
            settings.kafka_bootstrap,
            settings.depth_topic,
            settings.partitions,
            settings.kafka_connect_timeout_s,
            client_config=security_config(settings),
        )
    ingest = Ingest(settings, symbols, rest_url)
    ingest.resume_from(await asyncio.to_thread(read_resume_plan, settings, symbols))
    depth = None
    if depth_list:
        depth = DepthIngest(
            settings, depth_list, rest_url, limiter=ingest.limiter, stopping=ingest.stopping
        )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, ingest.stopping.set)
    metrics: MetricsServer | None = None
    if settings.ingest_metrics_port:
        gauges = ingest.gauges if depth is None else lambda: {**ingest.gauges(), **depth.gauges()}
        depth_stats = None if depth is None else depth.stats
        metrics = MetricsServer(ingest.stats, gauges, ingest.health, depth_stats)
        await metrics.start(settings.metrics_host, settings.ingest_metrics_port)
    plans = plan_connections(settings.binance_ws_url, symbols, settings.stream_kind)
    log.info("starting", extra={"fields": {
        "symbols": len(symbols), "connections": len(plans), "stream_kind": settings.stream_kind,
        "rest_url": rest_url, "record_dir": str(settings.record_dir or "")}})  # fmt: skip
    supervisors = [asyncio.create_task(ingest.supervise(plan)) for plan in plans]
    workers = [asyncio.create_task(coro) for coro in (ingest.flow_loop(), ingest.gap_loop(),
               ingest.backfill_loop(), ingest.tail_loop(), ingest.progress_loop())]  # fmt: skip
    if depth is not None:  # its own tasks beside the trade path
        fields = {
            "symbols": len(depth_list),
            "connections": len(depth.plans),
            "speed": settings.depth_speed,
        }
        log.info("depth on", extra={"fields": fields})
        workers += depth.tasks()
    failed = await _until_stopped_or_failed(ingest.stopping, supervisors + workers)
    await asyncio.wait(supervisors, timeout=5)
    for conn in list(ingest.connections):
        conn.close()
    for task in supervisors + workers:
        task.cancel()
    for result in await asyncio.gather(*supervisors, *workers, return_exceptions=True):
        if isinstance(result, Exception) and result is not failed:
            log.error(f"ingest task failed: {result!r}", exc_info=result)
    ingest.shutdown_gaps()
    left = await asyncio.to_thread(ingest.producer.flush, 15.0)
    if depth is not None:
        left += await asyncio.to_thread(depth.close)
        log.info("depth stopped", extra={"fields": {"depth": depth.stats.summary()}})
    if ingest.recorder is not None:
        ingest.recorder.close()
    if metrics is not None:
        await metrics.stop()
    log.info("stopped", extra={"fields": {"ingest": ingest.stats.summary(), "unflushed": left}})
    return 1 if failed is not None or left else 0


async def _until_stopped_or_failed(
    stopping: asyncio.Event, tasks: list[asyncio.Task[Any]]
) -> BaseException | None:
    """Wait for a stop request, or for a task to die of an exception: then log it once and stop
    (a dead connection supervisor must not leave a process that looks alive). Returns that."""
    stop = asyncio.create_task(stopping.wait())
    pending: set[asyncio.Task[Any]] = {stop, *tasks}
    while not stopping.is_set():
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stop and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                log.error(f"ingest failed, stopping: {exc!r}", exc_info=exc)
                stopping.set()
                return exc
    stop.cancel()
    return None


def main(settings: Settings) -> int:
    setup_logging("ingest", settings.log_level, settings.log_format)
    try:
        return asyncio.run(run(settings))
    except (TopicError, ConfigError) as exc:
        log.error(str(exc))
        return 2
