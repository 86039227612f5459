"""``csp archive``: a consumer-group member writing ``raw.trades`` to the Parquet archive.

A thin shell around :class:`~cryptostream.archive.core.SinkCore` (what to write, when) and a
:class:`~cryptostream.archive.store.Store` (how, durably: a local folder or an object store). Run as many as you like in
the group ``CSP_ARCHIVE_GROUP_ID``: each owns some partitions, resumes each from the archive's
own commit marker (never from Kafka's committed offset), and flushes a partition before giving
it up in a rebalance. Kafka offsets are committed after a flush is durable, for lag tooling.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from cryptostream.archive.core import SinkCore
from cryptostream.archive.metrics import ArchiveMetrics
from cryptostream.archive.objects import ObjectRoot
from cryptostream.archive.store import Store, archive_root, open_store
from cryptostream.config import Settings
from cryptostream.kafka_clients import make_consumer
from cryptostream.logs import RateLimitedLog, setup_logging
from cryptostream.topics import TopicError, require_topic

log = logging.getLogger("cryptostream.archive")

POLL_MAX = 20_000


class ArchiveSink:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.topic = settings.topic
        self.core = SinkCore(
            settings.archive_flush_rows,
            settings.archive_flush_s,
            int(settings.processor_max_future_s * 1000),
        )
        self.store = open_store(settings) if store is None else store
        self.consumer: Consumer = make_consumer(
            settings,
            **{"group.id": settings.archive_group_id, "enable.partition.eof": False},
        )
        self.running = True
        self.warn = RateLimitedLog(log)
        self.stats = {"records": 0, "archived": 0, "files": 0, "flushes": 0}
        self._last_report = time.monotonic()
        self.metrics = ArchiveMetrics(self.counters, lambda: self.core.buffered)

    def counters(self) -> dict[str, int]:
        return {
            **self.stats,
            "undecodable": self.core.undecodable,
            "stale": self.core.stale,
            "unrepresentable": self.store.unrepresentable,
        }

    # librdkafka runs these inside poll()/consume()/close(), in this thread, between batches.
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        starts: dict[int, int | None] = {}
        for tp in partitions:
            start = self.store.resume(tp.partition)
            starts[tp.partition] = start
            self.core.start(tp.partition, 0 if start is None else start)
            tp.offset = OFFSET_BEGINNING if start is None else start
        consumer.incremental_assign(partitions)
        log.info("partitions assigned", extra={"fields": {"partitions": starts}})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        owned = {tp.partition for tp in partitions}
        for partition in self.core.due(time.monotonic(), everything=True):
            if partition in owned:
                self._flush(partition)
        for partition in owned:
            self.core.drop(partition)
        consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: what is buffered is theirs to write.
        for tp in partitions:
            self.core.drop(tp.partition)
        consumer.incremental_unassign(partitions)

    def _flush(self, partition: int) -> None:
        flush = self.core.take(partition)
        with self.metrics.flush_seconds.time():
            paths = self.store.commit(flush)
        self.stats["archived"] += flush.rows
        self.stats["files"] += len(paths)
        self.stats["flushes"] += 1
        try:  # after the commit point: for lag tooling only
            self.consumer.commit(
                offsets=[TopicPartition(self.topic, partition, flush.last + 1)],
                asynchronous=True,
            )
        except KafkaException as exc:
            self.warn.warning("commit", "offset commit failed", **{"error.message": str(exc)})

    def run(self) -> None:
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while self.running:
                self.step(self.settings.batch_timeout_s)
            for partition in self.core.due(time.monotonic(), everything=True):
                self._flush(partition)
        finally:
            self.consumer.close()  # runs the revoke callback (nothing left to flush)
            self._report()

    def step(self, timeout_s: float) -> None:
        first = self.consumer.poll(timeout_s)
        now = time.monotonic()
        if first is not None:
            messages: list[Any] = [first, *self.consumer.consume(POLL_MAX - 1, timeout=0)]
            add = self.core.add
            for msg in messages:
                err = msg.error()
                if err is None:
                    add(msg.partition(), msg.offset(), msg.value(), now)
                elif err.code() != KafkaError._PARTITION_EOF:
                    self.warn.warning("consume", "consumer error", **{"error.message": str(err)})
            self.stats["records"] += len(messages)
        for partition in self.core.due(now):
            self._flush(partition)
        if now - self._last_report >= 10:
            self._report()

    def _report(self) -> None:
        self._last_report = time.monotonic()
        log.info(
            "archive progress",
            extra={"fields": {**self.counters(), "buffered": self.core.buffered}},
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
    try:
        require_topic(settings.kafka, settings.topic, settings.partitions)
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
