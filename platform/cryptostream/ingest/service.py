"""The ingest process: WebSocket frames in, Kafka records out, nothing dropped silently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from dataclasses import dataclass, field

import orjson
import websockets
from confluent_kafka import KafkaError, Message, Producer

from cryptostream.config import Settings
from cryptostream.core.codec import encode_key, encode_trade
from cryptostream.core.frames import ControlReply, Ignored, Malformed, parse_frame
from cryptostream.core.trades import Trade
from cryptostream.ingest.streams import combined_stream_urls
from cryptostream.kafka_clients import make_producer
from cryptostream.logs import RateLimitedLog, setup_logging
from cryptostream.topics import TopicError, require_topic

log = logging.getLogger("cryptostream.ingest")


@dataclass
class IngestStats:
    frames: int = 0
    trades: int = 0
    acked: int = 0
    failed: int = 0
    malformed: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    reconnects: int = 0
    ignored_by_type: dict[str, int] = field(default_factory=dict)


class KafkaSink:
    """Asynchronous produce with delivery accounting; backpressure instead of unbounded queues."""

    def __init__(self, producer: Producer, topic: str, dlq_topic: str, stats: IngestStats) -> None:
        self.producer = producer
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.stats = stats
        self.warn = RateLimitedLog(log)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.acked += 1
        else:
            self.stats.failed += 1
            self.warn.warning(
                "delivery",
                "trade not acknowledged by Kafka after all retries: it is lost",
                **{"error.message": str(err), "kafka.key": (msg.key() or b"").decode()},
            )

    async def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: Kafka is slow or away; stop reading for a bit
                self.producer.poll(0)
                await asyncio.sleep(0.01)

    async def send_trade(self, trade: Trade, ingest_time_us: int) -> None:
        await self._produce(
            self.topic, encode_key(trade.symbol), encode_trade(trade, ingest_time_us)
        )

    async def send_dead_letter(self, raw: bytes, reason: str, source: str) -> None:
        value = orjson.dumps(
            {
                "reason": reason,
                "source": source,
                "received_at_us": time.time_ns() // 1000,
                "raw": raw[:65536].decode(errors="replace"),
                "raw_bytes": len(raw),
            }
        )
        self.stats.dead_lettered += 1
        await self._produce(self.dlq_topic, None, value)


class Ingest:
    def __init__(self, settings: Settings, sink: KafkaSink, stats: IngestStats) -> None:
        self.settings = settings
        self.sink = sink
        self.stats = stats
        self.stopping = asyncio.Event()
        self.warn = RateLimitedLog(log)

    async def handle_frame(self, raw: bytes, source: str) -> None:
        received_us = time.time_ns() // 1000
        self.stats.frames += 1
        outcome = parse_frame(raw, max_bytes=self.settings.max_frame_bytes)
        if type(outcome) is Trade:
            self.stats.trades += 1
            await self.sink.send_trade(outcome, received_us)
        elif isinstance(outcome, Malformed):
            self.stats.malformed += 1
            self.warn.warning("malformed", "malformed frame sent to the DLQ", reason=outcome.reason)
            await self.sink.send_dead_letter(raw, outcome.reason, source)
        elif isinstance(outcome, Ignored):
            self.stats.ignored += 1
            by_type = self.stats.ignored_by_type
            by_type[outcome.event_type] = by_type.get(outcome.event_type, 0) + 1
        elif isinstance(outcome, ControlReply) and outcome.error is not None:
            self.warn.warning("control", "the server rejected a request", reply=outcome.error)

    async def follow(self, url: str) -> None:
        """Read one combined-stream URL forever, reconnecting with backoff and jitter."""
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                async with websockets.connect(
                    url,
                    max_size=max(4 * self.settings.max_frame_bytes, 1 << 20),
                    open_timeout=10,
                    close_timeout=2,
                    ping_interval=None,  # Binance pings us; websockets answers with pongs
                ) as ws:
                    log.info("connected", extra={"fields": {"url.full": url}})
                    backoff = 0.5
                    while True:
                        raw = await ws.recv(decode=False)
                        await self.handle_frame(
                            raw if isinstance(raw, bytes) else raw.encode(), url
                        )
            except (TimeoutError, OSError, websockets.WebSocketException) as exc:
                if self.stopping.is_set():
                    return
                self.stats.reconnects += 1
                delay = backoff * random.uniform(0.5, 1.5)
                self.warn.warning(
                    f"reconnect:{url}",
                    "connection lost; reconnecting",
                    **{"error.message": repr(exc), "url.full": url, "retry_in_s": round(delay, 2)},
                )
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, 30.0)

    async def poll_deliveries(self) -> None:
        last_report = time.monotonic()
        while not self.stopping.is_set():
            self.sink.producer.poll(0)
            await asyncio.sleep(0.05)
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                log.info("progress", extra={"fields": {"ingest": vars(self.stats)}})


async def run(settings: Settings) -> int:
    require_topic(settings.kafka_bootstrap, settings.topic, settings.partitions)
    require_topic(settings.kafka_bootstrap, settings.dlq_topic, None)
    stats = IngestStats()
    sink = KafkaSink(make_producer(settings), settings.topic, settings.dlq_topic, stats)
    ingest = Ingest(settings, sink, stats)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, ingest.stopping.set)
    urls = combined_stream_urls(settings.binance_ws_url, settings.symbols)
    log.info("starting", extra={"fields": {"symbols": settings.symbols, "connections": len(urls)}})
    tasks = [asyncio.create_task(ingest.follow(url)) for url in urls]
    tasks.append(asyncio.create_task(ingest.poll_deliveries()))
    await ingest.stopping.wait()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    left = await asyncio.to_thread(sink.producer.flush, 15.0)
    log.info("stopped", extra={"fields": {"ingest": vars(stats), "unflushed": left}})
    return 0 if left == 0 else 1


def main(settings: Settings) -> int:
    setup_logging("ingest", settings.log_level)
    try:
        return asyncio.run(run(settings))
    except TopicError as exc:
        log.error(str(exc))
        return 2
