"""Ingest's counters and the Prometheus ``/metrics`` + ``/health`` server.

The hot path only bumps plain ints (and one bucket of a latency histogram per acknowledged
read); the Prometheus families are built from them at scrape time.

Exported names (prefix ``csp_ingest_``): ``frames_total``, ``trades_total`` (new trades parsed),
``duplicates_total``, ``produced_total``, ``acked_total``, ``delivery_failed_total``,
``dead_letters_total``, ``ignored_total{event}``, ``errors_total{kind}``, ``reconnects_total``,
``gaps_total{status}`` and ``gap_trades_total{status}`` (status = detected | backfilled |
unrecoverable), ``backfilled_trades_total``, ``buffer_dropped_total``, ``tail_checks_total``, ``buffer_depth`` (trades
in flight to Kafka), ``connections`` (open), ``symbols``, and the histogram
``produce_latency_seconds`` (frame received -> acknowledged by Kafka).

With depth on (``CSP_DEPTH_SYMBOLS``), also ``depth_frames_total``, ``depth_diffs_total`` (parsed),
``depth_diffs_published_total``, ``depth_snapshots_total`` (published), ``depth_acked_total``,
``depth_delivery_failed_total``, ``depth_snapshot_requests_total``, ``depth_refetches_total``
(snapshot older than the stream), ``depth_malformed_total`` (frames sent to the DLQ),
``depth_breaks_total{cause}`` (each one a resync: ``depth_gap``, ``depth_crossed``,
``depth_reconnect``, ``depth_produce``), ``depth_errors_total{kind}`` and the gauges
``depth_connections``, ``depth_symbols_live``.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

PREFIX = "csp_ingest_"
# receive -> ack, in microseconds (upper bounds); the last bucket is +Inf
LATENCY_BOUNDS_US = (
    250,
    500,
    1000,
    2000,
    3000,
    5000,
    7500,
    10_000,
    15_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
)


class LatencyHistogram:
    """Fixed-bucket histogram of microsecond latencies (pure; one bisect per sample)."""

    __slots__ = ("bounds", "count", "counts", "sum_us")

    def __init__(self, bounds: tuple[int, ...] = LATENCY_BOUNDS_US) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum_us = 0

    def record(self, us: int) -> None:
        self.counts[bisect_left(self.bounds, us)] += 1
        self.count += 1
        self.sum_us += us

    def record_many(self, us: int, n: int) -> None:
        """``n`` samples of the same latency (a read's trades, acknowledged together)."""
        self.counts[bisect_left(self.bounds, us)] += n
        self.count += n
        self.sum_us += us * n

    def quantile(self, q: float) -> float | None:
        """Upper bound (µs) of the bucket holding quantile ``q``; None when empty."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return float(self.bounds[i]) if i < len(self.bounds) else float("inf")
        return float("inf")


@dataclass
class IngestStats:
    frames: int = 0
    trades: int = 0
    duplicates: int = 0
    produced: int = 0
    acked: int = 0
    delivery_failed: int = 0
    dead_letters: int = 0
    reconnects: int = 0
    backfilled_trades: int = 0
    buffer_dropped: int = 0
    tail_checks: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, int] = field(default_factory=dict)
    gap_trades: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def error(self, kind: str, n: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + n

    def gap(self, status: str, trades: int) -> None:
        self.gaps[status] = self.gaps.get(status, 0) + 1
        self.gap_trades[status] = self.gap_trades.get(status, 0) + trades

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "latency"}
        p50, p99 = self.latency.quantile(0.5), self.latency.quantile(0.99)
        out["latency_p50_ms_le"] = None if p50 is None else p50 / 1000
        out["latency_p99_ms_le"] = None if p99 is None else p99 / 1000
        return out


@dataclass
class DepthStats:
    frames: int = 0
    diffs: int = 0
    diffs_published: int = 0
    snapshots: int = 0
    acked: int = 0
    delivery_failed: int = 0
    snapshot_requests: int = 0
    refetches: int = 0
    malformed: int = 0
    reconnects: int = 0
    breaks: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str, n: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + n

    def summary(self) -> dict[str, Any]:
        return dict(vars(self))


_DEPTH_COUNTERS = (
    ("frames", "frames received on depth connections"),
    ("diffs", "depth diffs parsed from frames"),
    ("diffs_published", "depth diffs handed to the Kafka producer"),
    ("snapshots", "depth snapshots published (one per sync or resync)"),
    ("acked", "depth records acknowledged by Kafka"),
    ("delivery_failed", "depth records Kafka did not take (each breaks the chain: a resync)"),
    ("snapshot_requests", "REST depth snapshots requested"),
    ("refetches", "snapshots older than the buffered diffs, fetched again"),
    ("malformed", "depth frames sent to the DLQ"),
    ("reconnects", "depth connections replaced"),
)

_COUNTERS = (
    ("frames", "WebSocket frames received"),
    ("trades", "new trades parsed from frames"),
    ("duplicates", "trades seen before (overlap, replays), dropped"),
    ("produced", "trade records handed to the Kafka producer"),
    ("acked", "trade records acknowledged by Kafka"),
    ("delivery_failed", "trade records Kafka did not take after all retries (become gaps)"),
    ("dead_letters", "frames published to the DLQ"),
    ("reconnects", "connections replaced (lost, silent, or at the lifetime limit)"),
    ("backfilled_trades", "trades recovered from the REST API"),
    ("buffer_dropped", "trades not published because the buffer stayed full (become gaps)"),
    ("tail_checks", "quiet symbols checked against the REST API's newest trade id"),
)


class _Collector(Collector):
    def __init__(
        self,
        stats: IngestStats,
        gauges: Callable[[], dict[str, float]],
        depth: DepthStats | None = None,
    ) -> None:
        self.stats = stats
        self.gauges = gauges
        self.depth = depth

    def _depth(self, d: DepthStats) -> Iterator[Metric]:
        for name, doc in _DEPTH_COUNTERS:
            yield CounterMetricFamily(PREFIX + "depth_" + name, doc, value=getattr(d, name))
        for name, doc, label, values in (
            ("breaks", "depth chain breaks (each a resync), by cause", "cause", d.breaks),
            ("errors", "depth errors by kind", "kind", d.errors),
        ):
            family = CounterMetricFamily(PREFIX + "depth_" + name, doc, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            yield family

    def collect(self) -> Iterator[Metric]:
        if self.depth is not None:
            yield from self._depth(self.depth)
        s = self.stats
        for name, doc in _COUNTERS:
            yield CounterMetricFamily(PREFIX + name, doc, value=getattr(s, name))
        for name, doc, label, values in (
            ("ignored", "well-formed events not consumed, by event type", "event", s.ignored),
            ("errors", "errors by kind", "kind", s.errors),
            ("gaps", "gap records by status", "status", s.gaps),
            ("gap_trades", "trade ids in gap records by status", "status", s.gap_trades),
        ):
            family = CounterMetricFamily(PREFIX + name, doc, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            yield family
        for gauge, level in self.gauges().items():
            yield GaugeMetricFamily(PREFIX + gauge, gauge.replace("_", " "), value=level)
        h = s.latency
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*h.bounds, None), h.counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound is None else repr(bound / 1e6), running))
        yield HistogramMetricFamily(
            PREFIX + "produce_latency_seconds",
            "frame received -> acknowledged by Kafka",
            buckets=buckets,
            sum_value=h.sum_us / 1e6,
        )


class MetricsServer:
    """``GET /metrics`` (Prometheus text) and ``GET /health`` (JSON; 503 when unhealthy) on one
    port, served by the event loop itself."""

    def __init__(
        self,
        stats: IngestStats,
        gauges: Callable[[], dict[str, float]],
        health: Callable[[], tuple[bool, dict[str, Any]]],
        depth: DepthStats | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(stats, gauges, depth))
        self.health = health
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b" ", 2)
            path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
            if path == b"/metrics":
                status, ctype, body = (
                    200,
                    b"text/plain; version=0.0.4",
                    generate_latest(self.registry),
                )
            elif path == b"/health":
                ok, doc = self.health()
                status, ctype, body = (200 if ok else 503), b"application/json", orjson.dumps(doc)
            else:
                status, ctype, body = 404, b"application/json", b'{"error":"not found"}'
            reason = {200: b"OK", 404: b"Not Found", 503: b"Service Unavailable"}[status]
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % (status, reason, ctype, len(body)) + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
