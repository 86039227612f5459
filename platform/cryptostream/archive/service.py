"""``csp archive``: a consumer-group member writing ``raw.trades`` (and, with
``CSP_ARCHIVE_DEPTH``, ``raw.depth``) to the Parquet archive.

A thin shell around :class:`~cryptostream.archive.core.SinkCore` (what to write, when) and a
:class:`~cryptostream.archive.store.Store` (how, durably: a local folder or an object store). Run as many as you like in
the group ``CSP_ARCHIVE_GROUP_ID``: each owns some partitions, resumes each from the archive's
own commit marker (never from Kafka's committed offset), and flushes a partition before giving
it up in a rebalance. Kafka offsets are committed after a flush is durable, for lag tooling.
Each topic is a *lane*: its own core (what a record becomes), store (where its files and
markers go) and partitions; one consumer serves both.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from cryptostream.archive.core import DepthSinkCore, SinkCore
from cryptostream.archive.metrics import ArchiveMetrics
from cryptostream.archive.objects import ObjectRoot
from cryptostream.archive.store import Store, archive_root, open_store
from cryptostream.config import Settings
from cryptostream.kafka_clients import make_consumer
from cryptostream.logs import RateLimitedLog, setup_logging
from cryptostream.topics import TopicError, require_topic

log = logging.getLogger("cryptostream.archive")

POLL_MAX = 20_000


@dataclass
class Lane:
    """One archived topic: its core and its store."""

    topic: str
    core: SinkCore
    store: Store


class ArchiveSink:
    def __init__(
        self, settings: Settings, store: Store | None = None, depth_store: Store | None = None
    ) -> None:
        self.settings = settings
        self.topic = settings.topic
        max_future_ms = int(settings.processor_max_future_s * 1000)
        self.core = SinkCore(settings.archive_flush_rows, settings.archive_flush_s, max_future_ms)
        self.store = open_store(settings) if store is None else store
        self.lanes = {self.topic: Lane(self.topic, self.core, self.store)}
        if settings.archive_depth:
            depth_core = DepthSinkCore(settings.archive_flush_rows, settings.archive_flush_s)
            if depth_store is None:
                depth_store = open_store(settings, archive_root(settings), depth=True)
            self.lanes[settings.depth_topic] = Lane(settings.depth_topic, depth_core, depth_store)
        self.consumer: Consumer = make_consumer(
            settings,
            **{"group.id": settings.archive_group_id, "enable.partition.eof": False},
        )
        self.running = True
        self.warn = RateLimitedLog(log)
        self.stats = {"records": 0, "archived": 0, "files": 0, "flushes": 0}
        self._last_report = time.monotonic()
        self.metrics = ArchiveMetrics(self.counters, self.buffered)

    def buffered(self) -> int:
        return sum(lane.core.buffered for lane in self.lanes.values())

    def counters(self) -> dict[str, int]:
        lanes = self.lanes.values()
        return {
            **self.stats,
            "undecodable": sum(lane.core.undecodable for lane in lanes),
            "stale": sum(lane.core.stale for lane in lanes),
            "unrepresentable": sum(lane.store.unrepresentable for lane in lanes),
        }

    # librdkafka runs these inside poll()/consume()/close(), in this thread, between batches.
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        starts: dict[str, int | None] = {}
        for tp in partitions:
            lane = self.lanes[tp.topic]
            start = lane.store.resume(tp.partition)
            starts[f"{tp.topic}/{tp.partition}"] = start
            lane.core.start(tp.partition, 0 if start is None else start)
            tp.offset = OFFSET_BEGINNING if start is None else start
        consumer.incremental_assign(partitions)
        log.info("partitions assigned", extra={"fields": {"partitions": starts}})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for topic, lane in self.lanes.items():
            owned = {tp.partition for tp in partitions if tp.topic == topic}
            for partition in lane.core.due(time.monotonic(), everything=True):
                if partition in owned:
                    self._flush(lane, partition)
            for partition in owned:
                lane.core.drop(partition)
        consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: what is buffered is theirs to write.
        for tp in partitions:
            self.lanes[tp.topic].core.drop(tp.partition)
        consumer.incremental_unassign(partitions)

    def _flush(self, lane: Lane, partition: int) -> None:
        flush = lane.core.take(partition)
        with self.metrics.flush_seconds.time():
            paths = lane.store.commit(flush)
        self.stats["archived"] += flush.rows
        self.stats["files"] += len(paths)
        self.stats["flushes"] += 1
        try:  # after the commit point: for lag tooling only
            self.consumer.commit(
                offsets=[TopicPartition(lane.topic, partition, flush.last + 1)],
                asynchronous=True,
            )
        except KafkaException as exc:
            self.warn.warning("commit", "offset commit failed", **{"error.message": str(exc)})

    def flush_all(self) -> None:
        for lane in self.lanes.values():
            for partition in lane.core.due(time.monotonic(), everything=True):
                self._flush(lane, partition)

    def run(self) -> None:
        self.consumer.subscribe(
            list(self.lanes),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while self.running:
                self.step(self.settings.batch_timeout_s)
            self.flush_all()
        finally:
            self.consumer.close()  # runs the revoke callback (nothing left to flush)
            self._report()

    def step(self, timeout_s: float) -> None:
        first = self.consumer.poll(timeout_s)
        now = time.monotonic()
        if first is not None:
            messages: list[Any] = [first, *self.consumer.consume(POLL_MAX - 1, timeout=0)]
            add = self.core.add
            lanes = self.lanes if len(self.lanes) > 1 else None
            for msg in messages:
                err = msg.error()
                if err is None:
                    if lanes is not None:  # else the trades lane alone: no lookup per record
                        add = lanes[msg.topic()].core.add
                    add(msg.partition(), msg.offset(), msg.value(), now)
                elif err.code() != KafkaError._PARTITION_EOF:
                    self.warn.warning("consume", "consumer error", **{"error.message": str(err)})
            self.stats["records"] += len(messages)
        for lane in self.lanes.values():
            for partition in lane.core.due(now):
                self._flush(lane, partition)
        if now - self._last_report >= 10:
            self._report()

    def _report(self) -> None:
        self._last_report = time.monotonic()
        log.info(
            "archive progress",
            extra={"fields": {**self.counters(), "buffered": self.buffered()}},
        )


def prepare_root(root: Path | ObjectRoot) -> str | None:
    """Make the archive's folder, or check that its bucket exists (the sink creates no buckets)
    and answers; None if the sink can start, else why not."""
    if isinstance(root, Path):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create the archive folder {root}: {exc}"
        return None
    try:
        missing = root.fs.get_file_info(root.bucket).type == pafs.FileType.NotFound
    except OSError as exc:
        return f"cannot reach the archive {root.url()}: {exc}"
    if missing:
        return f"the archive's bucket does not exist: {root.url(root.bucket)}"
    return None


def main(settings: Settings) -> int:
    setup_logging("archive", settings.log_level)
    topics = [settings.topic, *([settings.depth_topic] if settings.archive_depth else [])]
    try:
        for topic in topics:
            require_topic(settings.kafka, topic, settings.partitions)
    except TopicError as exc:
        log.error(str(exc))
        return 2
    root = archive_root(settings)
    problem = prepare_root(root)
    if problem is not None:
        log.error(problem)
        return 2
    sink = ArchiveSink(settings, open_store(settings, root))
    if settings.archive_metrics_port:
        sink.metrics.serve(settings.archive_metrics_port, settings.metrics_host)

    def _stop(signum: int, frame: object) -> None:
        sink.running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sink.run()
    return 0
