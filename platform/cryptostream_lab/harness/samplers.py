"""Samplers over time (I/O shells): offsets and lag, latency, CPU and memory, Redis checksum.

- Produced: each partition's high watermark (Kafka). Processed: each partition's last applied
  offset, which the processors store in Redis atomically with the views (``offsets:{topic}``).
  Their difference is the consumer lag per partition; no processor cooperation is needed.
- Latency: a subscriber to ``updates:price`` (the processors publish each batch's updates) feeds
  the open-model ``VisibilityTracker``, so every record's latency runs from its intended send time.
- Resources: CPU % and RSS of every process of the run with its children (psutil, by PID).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import psutil
import redis
from confluent_kafka import Consumer, TopicPartition

from cryptostream.kafka_connection import KafkaConnection
from cryptostream.redisconn import stored_offsets
from cryptostream_lab.checker import read_views
from cryptostream_lab.harness import stats
from cryptostream_lab.harness.schedule import VisibilityTracker

UPDATES_CHANNEL = "updates:price"


class OffsetProbe:
    """High watermarks (Kafka) and applied offsets (Redis) of one topic's partitions."""

    def __init__(self, kafka: KafkaConnection, redis_url: str, topic: str, partitions: int) -> None:
        quiet = logging.getLogger("cryptostream_lab.harness.probe")
        quiet.setLevel(logging.CRITICAL)
        self.consumer = Consumer(
            kafka.librdkafka({"group.id": "csp-harness-probe", "logger": quiet})
        )
        self.redis = redis.Redis.from_url(redis_url)
        self.topic = topic
        self.partitions = list(range(partitions))

    def produced(self) -> dict[int, int]:
        out = {}
        for p in self.partitions:
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=5, cached=False
            )
            out[p] = max(0, high)
        return out

    def applied(self) -> dict[int, int]:
        stored = stored_offsets(self.redis, self.topic, self.partitions, len(self.partitions))
        out = dict.fromkeys(self.partitions, 0)
        for partition, value in stored.items():
            out[partition] = value + 1
        return out

    def close(self) -> None:
        self.consumer.close()
        self.redis.close()


@dataclass
class Series:
    """Samples of one trial: t (s since the trial's start) and per-partition figures."""

    t: list[float] = field(default_factory=list)
    produced: list[dict[int, int]] = field(default_factory=list)
    applied: list[dict[int, int]] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    rss_mb: dict[str, list[float]] = field(default_factory=dict)
    machine_cpu: list[float] = field(default_factory=list)  # all processes, % of one core

    def lag(self) -> list[dict[int, int]]:
        return [
            {p: max(0, prod[p] - app.get(p, 0)) for p in prod}
            for prod, app in zip(self.produced, self.applied, strict=True)
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "produced": [sum(x.values()) for x in self.produced],
            "applied": [sum(x.values()) for x in self.applied],
            "lag_per_partition": {
                str(p): [lag[p] for lag in self.lag()] for p in (self.produced or [{}])[0]
            },
            "cpu_percent": self.cpu,
            "rss_mb": self.rss_mb,
            "machine_cpu_percent": self.machine_cpu,
        }


class Sampler(threading.Thread):
    """Samples offsets and resources every ``interval`` seconds until stopped."""

    def __init__(
        self,
        probe: OffsetProbe,
        interval: float,
        pids: Callable[[], Mapping[str, int]],
        resources: bool = True,
    ) -> None:
        super().__init__(daemon=True, name="harness-sampler")
        self.probe = probe
        self.interval = interval
        self.pids = pids
        self.resources = resources
        self.series = Series()
        self.t0 = time.monotonic()
        self._halt = threading.Event()
        self._trees: dict[str, dict[int, psutil.Process]] = {}
        psutil.cpu_percent(None)  # primes the machine-wide counter
        self.error: BaseException | None = None

    def sample(self) -> None:
        t = time.monotonic() - self.t0
        produced, applied = self.probe.produced(), self.probe.applied()
        s = self.series
        s.t.append(round(t, 3))
        s.produced.append(produced)
        s.applied.append(applied)
        if self.resources:
            self._sample_resources(len(s.t) - 1)
            # Every process of the machine (other users included), in % of one core.
            s.machine_cpu.append(round(psutil.cpu_percent(None) * (psutil.cpu_count() or 1), 1))

    def _sample_resources(self, index: int) -> None:
        for name, pid in self.pids().items():
            cpu_list = self.series.cpu.setdefault(name, [])
            rss_list = self.series.rss_mb.setdefault(name, [])
            while len(cpu_list) < index:  # joined late: pad so all series align with t
                cpu_list.append(0.0)
                rss_list.append(0.0)
            cpu, rss = self._tree(name, pid)
            cpu_list.append(round(cpu, 1))
            rss_list.append(round(rss / 2**20, 1))

    def _tree(self, name: str, pid: int) -> tuple[float, int]:
        """CPU % and RSS of a process and all its descendants (uvicorn workers, Locust's
        workers): a child's CPU counts from the sample after it was first seen."""
        known = self._trees.setdefault(name, {})
        try:
            root = known[pid] if pid in known else psutil.Process(pid)
            # The harness's children are the other processes of the run, sampled by name.
            members = [root] if name == "harness" else [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0, 0
        cpu, rss, seen = 0.0, 0, {}
        for proc in members:
            cached = known.get(proc.pid)
            try:
                if cached is None:
                    proc.cpu_percent(None)  # primes the counter; the next call measures
                    cached = proc
                else:
                    cpu += cached.cpu_percent(None)
                rss += cached.memory_info().rss
            except psutil.Error:
                continue
            seen[proc.pid] = cached
        self._trees[name] = seen
        return cpu, rss

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                started = time.monotonic()
                self.sample()
                self._halt.wait(max(0.0, self.interval - (time.monotonic() - started)))
        except BaseException as exc:  # reported by the runner, never swallowed
            self.error = exc

    def stop(self) -> Series:
        self._halt.set()
        self.join(10)
        if self.error is not None:
            raise RuntimeError(f"sampler failed: {self.error!r}") from self.error
        return self.series


class LatencyListener(threading.Thread):
    """Event -> visible latency of every record, from the ``updates:price`` channel.

    With a ``tracker`` (direct load) each record counts from its intended send time; without one
    (full path, replay) each update counts once from its event time.
    """

    def __init__(
        self, redis_url: str, tracker: VisibilityTracker | None, measure_from_wall: float
    ) -> None:
        super().__init__(daemon=True, name="harness-latency")
        self.client = redis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.pubsub.subscribe(UPDATES_CHANNEL)
        self.tracker = tracker
        self.measure_from = measure_from_wall
        self.histogram = stats.new_histogram()
        self.updates = 0
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    message = self.pubsub.get_message(timeout=0.2)
                except redis.exceptions.TimeoutError:
                    # redis-py passes the timeout down to recv(): a large update message that
                    # has only partly arrived times out. The parser keeps what it has read.
                    continue
                if message is None:
                    continue
                now = time.time()
                for update in orjson.loads(message["data"]):
                    self.updates += 1
                    self._record(update, now)
        except BaseException as exc:
            self.error = exc

    def _record(self, update: dict[str, Any], now: float) -> None:
        if self.tracker is None:
            if update["event_time"] / 1000 >= self.measure_from:
                stats.record_seconds(self.histogram, now - update["event_time"] / 1000)
            return
        for intended, latency in self.tracker.visible(
            update["symbol"], int(update["trade_id"]), now
        ):
            if intended >= self.measure_from:
                stats.record_seconds(self.histogram, latency)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        with contextlib.suppress(Exception):
            self.pubsub.close()
            self.client.close()
        if self.error is not None:
            raise RuntimeError(f"latency listener failed: {self.error!r}") from self.error


def views_checksum(client: redis.Redis, symbols: list[str]) -> str:
    """SHA-256 of the deterministic part of the views: prices (without wall-clock fields),
    candles and running totals of ``symbols``. Same seed and workload -> same checksum."""
    views = read_views(client, symbols)
    digest = hashlib.sha256()
    for symbol in sorted(symbols):
        price = views.prices.get(symbol, {})
        doc = {
            "s": symbol,
            "price": {k: price.get(k) for k in ("price", "quantity", "trade_id", "trade_time")},
            "candles": sorted(views.candles.get(symbol, []), key=lambda c: int(c["t"])),
            "stats": views.stats.get(symbol, {}),
        }
        digest.update(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()
