"""Order-book depth beside the trade path: ``<symbol>@depth@100ms`` frames and REST snapshots in,
``raw.depth`` records out (the thin I/O shell around :mod:`cryptostream.ingest.depth`).

* its own connections (combined streams, planned like the trade ones, sharing the process's
  connection-attempt limiter) with the same client (``wsclient``), backoff and watch rules:
  closed, silent longer than ``ingest_silence_s``, older than ``ingest_lifetime_s``, a
  ``serverShutdown`` notice. Any replaced connection is a resync of the symbols it carried (a
  ``depth_reconnect`` break): what it missed cannot be known otherwise;
* its own idempotent producer (key = symbol): a record the producer has no room for, or that
  Kafka refuses after its retries, breaks the chain on the topic, so it is a ``depth_produce``
  break and a resync, never a silent hole;
* REST snapshots (``GET /api/v3/depth?symbol=&limit=``) by two workers within a REST weight
  budget (``depth_rest_weight_per_min``), through the backfill's ``rest_get`` (backoff, 429/418
  with Retry-After);
* frames that are not valid go to the DLQ with the reason; breaks go to the gap topic
  (``ingest/gaps.py``'s depth-break records) and are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
from confluent_kafka import KafkaError, Message, Producer

from cryptostream.binance.depth import (
    parse_depth_frame,
    parse_depth_snapshot,
    snapshot_request,
    snapshot_weight,
    stream_kind,
)
from cryptostream.binance.frames import ControlReply, Ignored, Malformed
from cryptostream.config import Settings
from cryptostream.core.deadletter import encode_dead_letter
from cryptostream.core.depth import encode_diff, encode_snapshot
from cryptostream.core.orderbook import DepthDiff, DepthError
from cryptostream.ingest.depth import (
    DepthAction,
    DepthEngine,
    FetchSnapshot,
    PublishDiff,
    PublishSnapshot,
    RecordBreak,
    WeightBudget,
)
from cryptostream.ingest.gaps import DepthBreakRecord
from cryptostream.ingest.metrics import DepthStats
from cryptostream.ingest.rest import BackfillError, rest_get
from cryptostream.ingest.streams import (
    SUBSCRIBE_INTERVAL_S,
    AttemptLimiter,
    Backoff,
    ConnectionPlan,
    plan_connections,
    subscribe_message,
)
from cryptostream.ingest.wsclient import WsConnection, open_connection
from cryptostream.kafka_clients import make_producer
from cryptostream.logs import RateLimitedLog

log = logging.getLogger("cryptostream.ingest.depth")

SNAPSHOT_WORKERS = 2
REFETCH_DELAY_S = 0.25  # a snapshot older than the stream: the REST book lags a moment
FRAME_FACTOR = 16  # depth frames are larger than trades: up to 16 x CSP_MAX_FRAME_BYTES


def _now_us() -> int:
    return time.time_ns() // 1000


class DepthIngest:
    def __init__(
        self,
        settings: Settings,
        symbols: list[str],
        rest_url: str,
        *,
        limiter: AttemptLimiter | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.symbols = symbols
        self.rest_url = rest_url
        self.topic = settings.depth_topic
        self.engine = DepthEngine(symbols)
        self.stats = DepthStats()
        self.limiter = limiter or AttemptLimiter()
        self.stopping = stopping or asyncio.Event()
        self.warn = RateLimitedLog(log)
        self.producer = self._make_producer()
        self.fatal: KafkaError | None = None
        self.control_backlog: list[tuple[str, bytes | None, bytes]] = []
        self.fetches: asyncio.Queue[FetchSnapshot] = asyncio.Queue()
        self.budget = WeightBudget(settings.depth_rest_weight_per_min)
        self.limit = settings.depth_snapshot_limit
        self.weight = snapshot_weight(self.limit)
        self.retry_at: dict[str, float] = {}  # after a failed fetch, not before
        self.fetch_backoff: dict[str, Backoff] = {}
        self.connections: set[WsConnection] = set()
        self.max_frame = settings.max_frame_bytes * FRAME_FACTOR
        self.plans = plan_connections(
            settings.binance_ws_url, symbols, stream_kind(settings.depth_speed)
        )

    # ----- Kafka -------------------------------------------------------------------------

    def _make_producer(self) -> Producer:
        return make_producer(self.settings, **{"error_cb": self._on_kafka_error})

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
        self.stats.error("kafka")
        self.warn.warning("kafka", "Kafka client error (depth)", **{"error.message": str(err)})

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.acked += 1
            return
        self.stats.delivery_failed += 1
        symbol = (msg.key() or b"").decode(errors="replace")
        self.warn.warning(
            f"delivery:{symbol}",
            "Kafka did not take a depth record: resyncing",
            symbol=symbol,
            **{"error.message": str(err)},
        )
        self._act(self.engine.on_lost(symbol, f"Kafka did not take a record: {err}"))

    def _on_control_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.stats.error("control_delivery")
            self.warn.warning(
                "control_delivery",
                "a depth break or DLQ record was not delivered",
                **{"error.message": str(err), "topic": msg.topic()},
            )

    def _produce_control(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Break and DLQ records: never dropped for lack of room; retried from a backlog."""
        if not self.control_backlog:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._on_control_delivery)
                return
            except BufferError:
                pass
        self.control_backlog.append((topic, key, value))

    def _retry_control_backlog(self) -> None:
        backlog, self.control_backlog = self.control_backlog, []
        for i, (topic, key, value) in enumerate(backlog):
            try:
                self.producer.produce(topic, value, key, on_delivery=self._on_control_delivery)
            except BufferError:
                self.control_backlog = backlog[i:]
                return

    # ----- the engine's actions --------------------------------------------------------------

    def _act(self, actions: list[DepthAction]) -> None:
        broken: set[str] = set()  # symbols whose record just failed: the rest is not published
        for action in actions:
            if isinstance(action, PublishDiff):
                symbol = action.diff.symbol
                if symbol in broken:
                    continue
                if self._publish(symbol, encode_diff(action.diff, action.recv_us)):
                    self.stats.diffs_published += 1
                else:
                    broken.add(symbol)
            elif isinstance(action, PublishSnapshot):
                symbol = action.symbol
                value = encode_snapshot(symbol, action.snapshot, action.recv_us)
                if symbol not in broken and self._publish(symbol, value):
                    self.stats.snapshots += 1
                else:
                    broken.add(symbol)
            elif isinstance(action, RecordBreak):
                self._record_break(action)
            else:
                self.fetches.put_nowait(action)

    def _publish(self, symbol: str, value: bytes) -> bool:
        try:
            self.producer.produce(self.topic, value, symbol.encode(), on_delivery=self._on_delivery)
        except BufferError:
            self.stats.error("buffer_full")
            self._act(self.engine.on_lost(symbol, "no room in the Kafka producer"))
            return False
        return True

    def _record_break(self, brk: RecordBreak) -> None:
        self.stats.breaks[brk.cause] = self.stats.breaks.get(brk.cause, 0) + 1
        now = _now_us()
        record = DepthBreakRecord(
            brk.symbol, brk.cause, brk.expected_id, brk.got_id, brk.reason, now, now
        )
        self._produce_control(self.settings.gap_topic, brk.symbol.encode(), record.encode())
        self.warn.warning(
            f"break:{brk.symbol}",
            "order-book chain broken: resyncing from a new snapshot",
            symbol=brk.symbol,
            cause=brk.cause,
            expected_id=brk.expected_id,
            got_id=brk.got_id,
            reason=brk.reason,
        )

    # ----- frames (in the protocol's data_received) -----------------------------------------

    def on_frames(self, frames: list[bytes], recv_us: int, conn: WsConnection) -> None:
        stats = self.stats
        stats.frames += len(frames)
        engine = self.engine
        for raw in frames:
            outcome = parse_depth_frame(raw, max_bytes=self.max_frame)
            if type(outcome) is DepthDiff:
                stats.diffs += 1
                self._act(engine.on_diff(outcome, recv_us))
            elif isinstance(outcome, Malformed):
                stats.malformed += 1
                self.warn.warning(
                    "malformed", "malformed depth frame sent to the DLQ", reason=outcome.reason
                )
                value = encode_dead_letter(
                    outcome.reason, "ingest", conn.url, raw, received_at_us=_now_us()
                )
                self._produce_control(self.settings.dlq_topic, None, value)
            elif isinstance(outcome, Ignored):
                if outcome.event_type == "serverShutdown":
                    conn.shutdown_notice = True
                else:
                    stats.error("ignored_event")  # (no label per server-chosen name)
            elif isinstance(outcome, ControlReply) and outcome.error is not None:
                stats.error("control")
                self.warn.warning(
                    "control", "the server rejected a depth request", reply=outcome.error
                )
        self.producer.poll(0)

    # ----- snapshots -------------------------------------------------------------------------

    async def snapshot_loop(self) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                want = await self.fetches.get()
                await self._fetch(client, want)

    async def _fetch(self, client: httpx.AsyncClient, want: FetchSnapshot) -> None:
        symbol = want.symbol
        if want.refetch:
            self.stats.refetches += 1
            await self._sleep(REFETCH_DELAY_S)
        delay = self.retry_at.get(symbol, 0.0) - time.monotonic()
        if delay > 0:
            await self._sleep(delay)
        while (wait := self.budget.wait_s(self.weight, time.monotonic())) > 0:
            self.warn.warning(
                "weight", "depth snapshots wait for the REST weight budget", wait_s=round(wait, 1)
            )
            await self._sleep(wait)
            if self.stopping.is_set():
                return
        self.stats.snapshot_requests += 1
        request = snapshot_request(symbol, self.limit)
        try:
            doc = await rest_get(client, request.url(self.rest_url))
            if not isinstance(doc, dict):
                raise DepthError(f"expected a JSON object, got {type(doc).__name__}")
            snapshot = parse_depth_snapshot(doc)
        except (BackfillError, DepthError, ValueError) as exc:
            self.stats.error("snapshot")
            backoff = self.fetch_backoff.setdefault(symbol, Backoff(1.0, 30.0))
            self.retry_at[symbol] = time.monotonic() + backoff.next_delay()
            self.warn.warning(
                f"snapshot:{symbol}",
                "depth snapshot failed; asked again later",
                symbol=symbol,
                **{"error.message": str(exc)[:300]},
            )
            self._act(self.engine.on_fetch_failed(symbol))
            return
        self.fetch_backoff.pop(symbol, None)
        self.retry_at.pop(symbol, None)
        self._act(self.engine.on_snapshot(symbol, snapshot, _now_us()))
        self.producer.poll(0)

    # ----- flow ------------------------------------------------------------------------------

    def flow_step(self) -> None:
        self.producer.poll(0)
        if self.control_backlog:
            self._retry_control_backlog()
        if self.fatal is not None:
            err, self.fatal = self.fatal, None
            log.error(
                "fatal Kafka producer error (depth): replacing the producer and resyncing",
                extra={"fields": {"error.message": str(err)}},
            )
            old, self.producer = self.producer, self._make_producer()
            old.flush(1.0)
            for symbol in self.symbols:
                self._act(self.engine.on_lost(symbol, f"the producer failed: {err}"))

    async def flow_loop(self) -> None:
        while True:
            self.flow_step()
            await asyncio.sleep(0.02)

    # ----- connections -----------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _connect(self, plan: ConnectionPlan, backoff: Backoff) -> WsConnection | None:
        while not self.stopping.is_set():
            wait = self.limiter.wait_s(time.monotonic())
            if wait > 0:
                await self._sleep(wait)
                continue
            try:
                conn = await open_connection(
                    plan.url,
                    self.on_frames,
                    max_size=max(self.max_frame, 1 << 20),
                    name=plan.url[:80],
                )
            except (OSError, ConnectionError, TimeoutError) as exc:
                self.stats.error("connect")
                delay = backoff.next_delay()
                self.warn.warning(
                    f"connect:{plan.url[:80]}",
                    "cannot connect (depth); retrying",
                    **{
                        "error.message": repr(exc)[:300],
                        "url.full": plan.url[:200],
                        "retry_in_s": round(delay, 2),
                    },
                )
                await self._sleep(delay)
                continue
            self.connections.add(conn)
            log.info(
                "depth connected",
                extra={"fields": {"url.full": plan.url[:200], "streams": len(plan.streams)}},
            )
            for i, batch in enumerate(plan.subscribe_batches):
                await self._sleep(SUBSCRIBE_INTERVAL_S)
                conn.send_text(subscribe_message(i + 1, batch))
            return conn
        return None

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
            if now - conn.last_rx > s.ingest_silence_s:
                return "silent"

    async def supervise(self, plan: ConnectionPlan) -> None:
        backoff = Backoff()
        while (conn := await self._connect(plan, backoff)) is not None:
            why = await self._watch(conn)
            if why == "silent":
                conn.abort(f"silent for more than {self.settings.ingest_silence_s} s")
            else:
                conn.close()
            self.connections.discard(conn)
            if why == "stopping":
                return
            self.stats.reconnects += 1
            self._act(self.engine.on_reconnect(plan.symbols))  # what it missed is unknown
            reason = conn.closed.result() if conn.closed.done() else why
            if why in ("lifetime", "shutdown"):
                log.info("replacing a depth connection", extra={"fields": {"reason": why}})
                continue
            if time.monotonic() - conn.opened_at > 60:
                backoff.reset()
            delay = backoff.next_delay()
            self.stats.error(f"connection_{why}")
            self.warn.warning(
                f"reconnect:{plan.url[:80]}",
                "depth connection lost; reconnecting",
                **{"error.message": reason, "reason": why, "retry_in_s": round(delay, 2)},
            )
            await self._sleep(delay)

    # ----- running ---------------------------------------------------------------------------

    def tasks(self) -> list[asyncio.Task[Any]]:
        """Its supervisors, snapshot workers and flow loop, started on the running loop."""
        coros = [self.supervise(plan) for plan in self.plans]
        coros += [self.snapshot_loop() for _ in range(SNAPSHOT_WORKERS)]
        return [asyncio.create_task(c) for c in (*coros, self.flow_loop())]

    def gauges(self) -> dict[str, float]:
        return {
            "depth_connections": len(self.connections),
            "depth_symbols_live": sum(b.live for b in self.engine.books.values()),
        }

    def close(self) -> int:
        """Close the connections and flush; returns the records left unflushed."""
        for conn in list(self.connections):
            conn.close()
        self.flow_step()
        return int(self.producer.flush(15.0))
