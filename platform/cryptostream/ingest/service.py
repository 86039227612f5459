"""The ingest process: Binance frames in, Kafka records out, every loss reported.

Thin I/O shells around the trade engine (``ingest.engine``: every decision about a trade —
de-duplication, gaps, flow control, overflow — frames in, actions out) and the other pure cores
(``ingest.backfill``, ``ingest.streams``, ``ingest.tail``, ``ingest.wsproto``):

* the publisher (:class:`Publisher`): produces the engine's records, feeds deliveries back;
* the connection supervisor (:class:`ConnectionSupervisor`), one task per planned connection:
  connect (backoff + jitter, attempt limit),
  subscribe (paced), watch (closed, silent longer than ``ingest_silence_s``, older than
  ``ingest_lifetime_s`` or a ``serverShutdown`` notice), replace — proactively with an overlap:
  the new connection runs before the old one is closed, and the id tracker drops the duplicates;
* the hot path (:meth:`Ingest.on_frames`) runs synchronously in the protocol's
  ``data_received``: the engine parses, de-duplicates and encodes the whole read, the publisher
  produces the batch; counters are plain ints;
* a bounded produce buffer: past ``ingest_buffer_max`` trades in flight, reading pauses; after
  ``ingest_buffer_timeout_s`` trades are dropped and recorded as ``buffer_overflow`` gaps (as are
  records Kafka refuses after all retries) until Kafka catches up;
* gaps: detected after the reorder grace, published to ``raw.trades.gaps``, backfilled over REST
  (one worker: :class:`Backfiller`), then closed as backfilled / unrecoverable sub-ranges; quiet
  symbols are checked against REST's newest id when the engine's clock says so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from typing import Any

import httpx
from confluent_kafka import KafkaError, Message, Producer

from cryptostream.binance.rest import (
    EXCHANGE_INFO_PATH,
    RestRequest,
    RowError,
    newest_id,
    newest_request,
    rest_base_url,
    trading_symbols,
)
from cryptostream.binance.streams import (
    SUBSCRIBE_INTERVAL_S,
    ConnectionPlan,
    plan_connections,
    subscribe_message,
)
from cryptostream.config import Settings
from cryptostream.core.codec import DecodeError, decode_trade
from cryptostream.core.trades import MAX_TIME_MS
from cryptostream.ingest.backfill import BackfillPlan
from cryptostream.ingest.depth import depth_symbols
from cryptostream.ingest.depthservice import DepthIngest
from cryptostream.ingest.engine import Control, Record, Tick, TradeEngine
from cryptostream.ingest.metrics import MetricsServer
from cryptostream.ingest.recorder import Recorder
from cryptostream.ingest.rest import BackfillError, rest_get
from cryptostream.ingest.resume import Seed, read_resume_plan
from cryptostream.ingest.streams import AttemptLimiter, Backoff
from cryptostream.ingest.tracker import Gap
from cryptostream.ingest.wsclient import (
    FramesHandler,
    WsConnection,
    next_connection_id,
    open_connection,
)
from cryptostream.kafka_clients import make_producer
from cryptostream.logs import RateLimitedLog, setup_logging
from cryptostream.runtime import tune_gc
from cryptostream.topics import TopicError, require_topic

log = logging.getLogger("cryptostream.ingest")

HEADROOM = 100_000  # producer queue room above the trade bound: gap records, DLQ, backfill


class ConfigError(RuntimeError):
    """Nothing to ingest, or the symbol list could not be read; the message says why."""


def _now_us() -> int:
    return time.time_ns() // 1000


class Publisher:
    """The Kafka shell: produces what the engine decided, feeds deliveries back to it.

    librdkafka reports failed deliveries only (``delivery.report.only.error``): a report per
    acknowledged record cost about 1 µs of the ingest's CPU per trade (a ``Message`` object and a
    Python call each). Acknowledged trades are counted from the producer's queue length instead
    (:meth:`settle`): whatever left the queue without a failure report was acknowledged. Trade
    records are produced without a per-message callback (passing one doubled the cost of
    ``produce()``): the producer's own callback (:meth:`on_delivery`) reads a failed record's
    symbol and trade id from the record itself. Gap and DLQ records (:class:`Control`) are never dropped for lack of room: a backlog retries
    them."""

    def __init__(self, settings: Settings, engine: TradeEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = engine.stats
        self.topic = settings.topic
        self.bound = settings.ingest_buffer_max
        self.fatal: KafkaError | None = None
        self.control_backlog: list[Control] = []
        # Per produced read, oldest first: (receive time, trades produced up to and including
        # it, its trades), for the latency histogram
        self.reads: collections.deque[tuple[int, int, int]] = collections.deque()
        self.warn = RateLimitedLog(log)
        self.producer = self._make_producer()

    def _make_producer(self) -> Producer:
        return make_producer(
            self.settings,
            **{
                "queue.buffering.max.messages": self.bound + HEADROOM,
                "queue.buffering.max.kbytes": 1 << 21,
                "delivery.report.only.error": True,
                "on_delivery": self.on_delivery,
                "error_cb": self._on_kafka_error,
            },
        )

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
        self.stats.error("kafka")
        self.warn.warning("kafka", "Kafka client error", **{"error.message": str(err)})

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """The producer's delivery callback: failures only (``delivery.report.only.error``). A
        failed trade is known by its key (the symbol) and the id in its own value: decoded
        here, on the rare failure, rather than kept per in-flight record or passed as a callback
        per ``produce()``."""
        if err is None:
            return
        try:
            # (any trade time: the record is ours, only its id is read)
            trade_id = decode_trade(msg.value(), max_future_ms=MAX_TIME_MS).trade.trade_id
        except DecodeError:  # not a record of ours: cannot happen, but must not go unseen
            self.stats.delivery_failed += 1
            self.stats.error("delivery_unattributed")
        else:
            self.engine.delivery_failed(msg.key() or b"", trade_id)
        self.warn.warning(
            "delivery",
            "Kafka did not take a trade after all retries: recorded as a gap",
            **{"error.message": str(err)},
        )

    def settle(self, producer: Producer | None = None) -> None:
        """Count the acknowledged trades: those produced, not failed, and no longer in the
        producer's queue (``len()``: queued, in flight, or with a failure report not yet served).
        Gap and DLQ records in that queue make the count lag until they leave it, never run
        ahead; it only grows (a Prometheus counter).

        The receive -> acknowledged histogram counts a read's trades as acknowledged once as many
        trades as were produced up to that read have left the queue (by position: partitions
        complete out of order, by about one broker round trip)."""
        stats = self.stats
        acked = stats.produced - stats.delivery_failed - len(producer or self.producer)
        if acked <= stats.acked:
            return
        stats.acked = acked
        reads = self.reads
        done = acked + stats.delivery_failed  # trades that left the queue
        if reads and reads[0][1] <= done:
            now_us = _now_us()
            latency = stats.latency
            while reads and reads[0][1] <= done:
                recv_us, _, n = reads.popleft()
                n = min(n, acked - latency.count)  # the failed ones have no latency
                if n > 0:
                    latency.record_many(now_us - recv_us, n)

    def produce_batch(self, batch: list[Record], recv_us: int, live: bool = True) -> int:
        """Produce records; those the full queue refuses go back to the engine. Returns how many
        were produced."""
        produce = self.producer.produce
        topic = self.topic
        engine = self.engine
        i = refused = 0
        n = len(batch)
        while i < n:
            try:
                for value, key, _ in batch[i:] if i else batch:
                    produce(topic, value, key)
                    i += 1
            except BufferError:
                _, key, tid = batch[i]
                if live:
                    engine.refused(key, tid)
                else:
                    engine.lose(key, tid)
                i += 1
                refused += 1
        produced = n - refused
        if produced:
            self.stats.produced += produced
            self.reads.append((recv_us, self.stats.produced, produced))
        return produced

    def _on_control_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.stats.error("control_delivery")
            self.warn.warning(
                "control_delivery",
                "a gap or DLQ record was not delivered",
                **{"error.message": str(err), "topic": msg.topic()},
            )

    def produce_outbox(self) -> None:
        """The engine's gap and DLQ records: never dropped; retried from a backlog."""
        outbox = self.engine.outbox
        if not outbox and not self.control_backlog:
            return
        backlog = self.control_backlog + outbox
        outbox.clear()
        self.control_backlog = []
        for i, (topic, key, value) in enumerate(backlog):
            try:
                self.producer.produce(topic, value, key, on_delivery=self._on_control_delivery)
            except BufferError:
                self.control_backlog = backlog[i:]
                return

    def poll(self) -> None:
        """Deliveries, the control backlog, a fatal producer replaced."""
        self.producer.poll(0)
        self.settle()
        self.produce_outbox()
        if self.fatal is not None:
            self._replace_producer()

    def _replace_producer(self) -> None:
        err, self.fatal = self.fatal, None
        log.error(
            "fatal Kafka producer error: replacing the producer; undelivered trades become gaps",
            extra={"fields": {"error.message": str(err)}},
        )
        old = self.producer
        self.producer = self._make_producer()
        old.flush(1.0)  # fails what it still holds: the delivery callbacks record the gaps
        self.settle(old)  # what the old producer did deliver
        self.reads.clear()
        stats = self.stats
        in_flight = self.engine.in_flight
        if in_flight > 0:  # never reported by the old producer: count them as lost
            stats.error("producer_replaced_unaccounted", in_flight)
            stats.delivery_failed += in_flight


class Backfiller:
    """The REST shell: backfills detected gaps (one worker) and runs the tail checks the engine's
    clock asks for; what arrives goes back to the engine, its records to the publisher."""

    def __init__(
        self, settings: Settings, engine: TradeEngine, publisher: Publisher, rest_url: str
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.publisher = publisher
        self.stats = engine.stats
        self.kind = settings.stream_kind
        self.rest_url = rest_url
        self.backfill_queue: asyncio.Queue[Gap] = asyncio.Queue()
        self.tail_queue: asyncio.Queue[str] = asyncio.Queue()
        self.in_backfill: Gap | None = None
        self.has_room = asyncio.Event()  # set by the clock: Kafka takes backfilled trades
        self.has_room.set()
        self.warn = RateLimitedLog(log)

    def finish_gap(self, gap: Gap) -> None:
        self.engine.finish_gap(gap, _now_us())
        self.publisher.produce_outbox()

    async def tail_loop(self) -> None:
        """Check quiet symbols against REST's newest id (see :mod:`cryptostream.ingest.tail`);
        the engine's clock says which."""
        if self.settings.ingest_tail_check_s <= 0:
            return
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                symbol = await self.tail_queue.get()
                await self.tail_check(client, symbol)

    async def tail_check(self, client: httpx.AsyncClient, symbol: str) -> None:
        self.stats.tail_checks += 1
        try:
            newest = newest_id(self.kind, await self._rest_get(client, newest_request(symbol)))
        except (BackfillError, RowError, ValueError) as exc:
            self.stats.error("tail_check")
            self.warn.warning(
                "tail", "newest-id check failed", symbol=symbol, **{"error.message": str(exc)}
            )
            return
        self.engine.tail_result(symbol, newest, time.monotonic())

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
                    self.warn.warning(
                        "backfill",
                        "backfill failed; the rest of the gap stays unrecoverable",
                        **{"error.message": str(exc)},
                    )
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
            batch = self.engine.backfilled(gap, trades, now_us)
            if batch:
                produced = self.publisher.produce_batch(batch, now_us, live=False)
                self.stats.backfilled_trades += produced
            self.publisher.producer.poll(0)
            self.publisher.settle()

    async def _rest_get(self, client: httpx.AsyncClient, request: RestRequest) -> Any:
        return await rest_get(client, request.url(self.rest_url))


class ConnectionSupervisor:
    """The WebSocket shell: one :meth:`supervise` task per planned connection; the engine learns
    of each connection (its id, and after a reconnect its symbols not seen yet) before its first
    frame, and decides what a serverShutdown notice means."""

    def __init__(
        self,
        settings: Settings,
        engine: TradeEngine,
        on_frames: FramesHandler,
        stopping: asyncio.Event,
        limiter: AttemptLimiter,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = engine.stats
        self.on_frames = on_frames
        self.stopping = stopping
        self.limiter = limiter
        self.max_frame = settings.max_frame_bytes
        self.connections: dict[int, WsConnection] = {}
        self.warn = RateLimitedLog(log)

    async def _connect(
        self, plan: ConnectionPlan, backoff: Backoff, reconnect: bool
    ) -> WsConnection | None:
        while not self.stopping.is_set():
            wait = self.limiter.wait_s(time.monotonic())
            if wait > 0:
                self.warn.warning(
                    "attempts", "connection attempt limit reached; waiting", wait_s=round(wait, 1)
                )
                await self._sleep(wait)
                continue
            conn_id = next_connection_id()  # known to the engine before its first frame
            self.engine.connected(conn_id, plan.url, plan.symbols if reconnect else ())
            try:
                conn = await open_connection(
                    plan.url,
                    self.on_frames,
                    max_size=max(4 * self.max_frame, 1 << 20),
                    name=plan.url[:80],
                    conn_id=conn_id,
                )
            except (OSError, ConnectionError, TimeoutError) as exc:
                self.engine.disconnected(conn_id)
                self.stats.error("connect")
                delay = backoff.next_delay()
                self.warn.warning(
                    f"connect:{plan.url[:80]}",
                    "cannot connect; retrying",
                    **{
                        "error.message": repr(exc)[:300],
                        "url.full": plan.url[:200],
                        "retry_in_s": round(delay, 2),
                    },
                )
                await self._sleep(delay)
                continue
            self.connections[conn.id] = conn
            log.info(
                "connected",
                extra={"fields": {"url.full": plan.url[:200], "streams": len(plan.streams)}},
            )
            for i, batch in enumerate(plan.subscribe_batches):
                await self._sleep(SUBSCRIBE_INTERVAL_S)
                conn.send_text(subscribe_message(i + 1, batch))
            return conn
        return None

    def _drop(self, conn: WsConnection) -> None:
        self.connections.pop(conn.id, None)
        self.engine.disconnected(conn.id)

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
            if self.engine.shutdown_notice(conn.id):
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
                self._drop(conn)
                conn = new
                continue
            self.stats.error(f"connection_{why}")
            if why == "silent":
                conn.abort(f"silent for more than {self.settings.ingest_silence_s} s")
            self._drop(conn)
            if time.monotonic() - conn.opened_at > 60:
                backoff.reset()
            delay = backoff.next_delay()
            reason = conn.closed.result() if conn.closed.done() else why
            self.warn.warning(
                f"reconnect:{plan.url[:80]}",
                "connection lost; reconnecting",
                **{"error.message": reason, "reason": why, "retry_in_s": round(delay, 2)},
            )
            await self._sleep(delay)
            conn = await self._connect(plan, backoff, reconnect=True)


class Ingest:
    """The trade path wired together: the engine (every decision) and its shells — the publisher
    (Kafka), the connection supervisor (WebSocket), the backfiller (REST) — driven by the clock
    (:meth:`flow_loop`) and the reads (:meth:`on_frames`)."""

    def __init__(self, settings: Settings, symbols: list[str], rest_url: str) -> None:
        self.settings = settings
        self.symbols = symbols
        self.engine = TradeEngine(
            symbols,
            kind=settings.stream_kind,
            grace_s=settings.ingest_gap_grace_s,
            bound=settings.ingest_buffer_max,
            buffer_timeout_s=settings.ingest_buffer_timeout_s,
            max_frame=settings.max_frame_bytes,
            gap_topic=settings.gap_topic,
            dlq_topic=settings.dlq_topic,
            tail_quiet_s=settings.ingest_tail_check_s,
        )
        self.stats = self.engine.stats
        self.trackers = self.engine.trackers
        self.stopping = asyncio.Event()
        self.limiter = AttemptLimiter()
        self.publisher = Publisher(settings, self.engine)
        self.backfiller = Backfiller(settings, self.engine, self.publisher, rest_url)
        self.supervisor = ConnectionSupervisor(
            settings, self.engine, self.on_frames, self.stopping, self.limiter
        )
        self.recorder: Recorder | None = None
        if settings.record_dir is not None:
            rotate_bytes = int(settings.record_rotate_mb * 1e6)
            self.recorder = Recorder(settings.record_dir, rotate_bytes, settings.record_rotate_s)

    # the shells' state, by their old names

    @property
    def producer(self) -> Producer:
        return self.publisher.producer

    @producer.setter
    def producer(self, producer: Producer) -> None:
        self.publisher.producer = producer

    @property
    def connections(self) -> dict[int, WsConnection]:
        return self.supervisor.connections

    @property
    def backfill_queue(self) -> asyncio.Queue[Gap]:
        return self.backfiller.backfill_queue

    @property
    def has_room(self) -> asyncio.Event:
        return self.backfiller.has_room

    @property
    def dropping(self) -> bool:
        return self.engine.dropping

    @property
    def in_flight(self) -> int:
        return self.engine.in_flight

    async def _connect(
        self, plan: ConnectionPlan, backoff: Backoff, reconnect: bool
    ) -> WsConnection | None:
        return await self.supervisor._connect(plan, backoff, reconnect)

    def finish_gap(self, gap: Gap) -> None:
        self.backfiller.finish_gap(gap)

    def resume_from(self, plan: dict[str, Seed]) -> None:
        """See :meth:`TradeEngine.resume_from`; unfinished backfills are queued again."""
        for gap in self.engine.resume_from(plan, time.monotonic()):
            self.backfill_queue.put_nowait(gap)

    # ----- the hot path: frames -> engine -> produce -----------------------------------

    def on_frames(self, frames: list[bytes], recv_us: int, conn: WsConnection) -> None:
        if self.recorder is not None:
            self.recorder.write(frames, recv_us)
        engine = self.engine
        now = time.monotonic()
        batch = engine.on_frames(frames, recv_us, conn.id, now)
        publisher = self.publisher
        produced = publisher.produce_batch(batch, recv_us) if batch else 0
        if engine.outbox:
            publisher.produce_outbox()
        publisher.producer.poll(0)
        publisher.settle()
        if produced and engine.in_flight >= engine.bound and engine.should_pause(conn.id, now):
            conn.pause_reading()

    # ----- the clock ---------------------------------------------------------------------

    def flow_step(self) -> None:
        """Deliveries, the buffer bound, overflow mode, a fatal producer, due gaps and tail
        checks (every few ms)."""
        self.publisher.poll()
        tick = self.engine.tick(time.monotonic(), _now_us())
        self._apply(tick)
        self.publisher.produce_outbox()
        if self.engine.has_room:
            self.has_room.set()
        else:
            self.has_room.clear()

    def _apply(self, tick: Tick) -> None:
        for conn_id in tick.resume:
            conn = self.supervisor.connections.get(conn_id)
            if conn is not None:
                conn.resume_reading()
        for gap in tick.backfill:
            self.backfiller.backfill_queue.put_nowait(gap)
        for symbol in tick.tail:
            self.backfiller.tail_queue.put_nowait(symbol)

    def gap_step(self) -> None:
        """Detect due gaps now (the clock does this every ``GAP_EVERY_S``)."""
        for gap in self.engine.gap_step(time.monotonic(), _now_us()):
            self.backfiller.backfill_queue.put_nowait(gap)
        self.publisher.produce_outbox()

    async def flow_loop(self) -> None:
        while True:
            self.flow_step()
            busy = self.engine.paused or self.in_flight
            await asyncio.sleep(0.005 if busy else 0.05)

    # ----- health, shutdown ----------------------------------------------------------------

    def gauges(self) -> dict[str, float]:
        return {**self.engine.gauges(), "connections": len(self.connections)}

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = bool(self.connections) and not self.stopping.is_set()
        return ok, {
            "status": "ok" if ok else "degraded",
            **self.gauges(),
            "acked": self.stats.acked,
            "reconnects": self.stats.reconnects,
        }

    def shutdown_gaps(self) -> None:
        """At exit every detected gap gets its final record (what is missing: unrecoverable)."""
        queue, current = self.backfill_queue, self.backfiller.in_backfill
        queued = [queue.get_nowait() for _ in range(queue.qsize())]
        in_backfill = [] if current is None else [current]
        self.engine.shutdown(queued, in_backfill, _now_us())
        self.publisher.produce_outbox()

    async def progress_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            log.info(
                "progress", extra={"fields": {"ingest": self.stats.summary(), **self.gauges()}}
            )


async def discover_symbols(settings: Settings, rest_url: str) -> list[str]:
    async with httpx.AsyncClient(timeout=15.0) as client:
        reply = await client.get(f"{rest_url}{EXCHANGE_INFO_PATH}")
        reply.raise_for_status()
        symbols = trading_symbols(reply.json(), settings.quote_asset)
    if not symbols:
        raise ConfigError(f"no TRADING symbol with quote asset {settings.quote_asset!r}")
    return symbols


async def run(settings: Settings) -> int:
    for name, partitions in (
        (settings.topic, settings.partitions),
        (settings.dlq_topic, None),
        (settings.gap_topic, None),
    ):
        require_topic(settings.kafka, name, partitions, settings.kafka_connect_timeout_s)
    rest_url = settings.binance_rest_url.rstrip("/") or rest_base_url(settings.binance_ws_url)
    symbols = settings.symbols
    if settings.quote_asset:
        try:
            symbols = await discover_symbols(settings, rest_url)
        except (httpx.HTTPError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the symbols from {rest_url}{EXCHANGE_INFO_PATH}: {exc!r}"
            ) from None
    if not symbols:
        raise ConfigError("no symbols to ingest: set CSP_SYMBOLS or CSP_QUOTE_ASSET")
    depth_list = depth_symbols(settings.depth_symbols, symbols)
    if depth_list:  # the depth topic is checked only when depth is on
        require_topic(
            settings.kafka,
            settings.depth_topic,
            settings.partitions,
            settings.kafka_connect_timeout_s,
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
    tune_gc()
    metrics: MetricsServer | None = None
    if settings.ingest_metrics_port:
        gauges = ingest.gauges if depth is None else lambda: {**ingest.gauges(), **depth.gauges()}
        depth_stats = None if depth is None else depth.stats
        metrics = MetricsServer(ingest.stats, gauges, ingest.health, depth_stats)
        await metrics.start(settings.metrics_host, settings.ingest_metrics_port)
    plans = plan_connections(settings.binance_ws_url, symbols, settings.stream_kind)
    log.info(
        "starting",
        extra={
            "fields": {
                "symbols": len(symbols),
                "connections": len(plans),
                "stream_kind": settings.stream_kind,
                "rest_url": rest_url,
                "record_dir": str(settings.record_dir or ""),
            }
        },
    )
    supervisors = [asyncio.create_task(ingest.supervisor.supervise(plan)) for plan in plans]
    workers = [
        asyncio.create_task(coro)
        for coro in (
            ingest.flow_loop(),
            ingest.backfiller.backfill_loop(),
            ingest.backfiller.tail_loop(),
            ingest.progress_loop(),
        )
    ]
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
    for conn in list(ingest.connections.values()):
        conn.close()
    for task in supervisors + workers:
        task.cancel()
    for result in await asyncio.gather(*supervisors, *workers, return_exceptions=True):
        if isinstance(result, Exception) and result is not failed:
            log.error(f"ingest task failed: {result!r}", exc_info=result)
    ingest.shutdown_gaps()
    left = await asyncio.to_thread(ingest.producer.flush, 15.0)
    ingest.publisher.settle()
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
