"""The processor process: a consumer-group member applying batches to Redis exactly once.

Correctness rests on Redis, not on Kafka's committed offsets: each batch's view updates and the
last applied offset of each of its partitions are written by one Lua script, and a partition that
is assigned to us resumes from the offset stored in Redis. Kafka offsets are committed afterwards
only so that lag tooling works.
"""

from __future__ import annotations

import logging
import signal
import time
from importlib import resources
from typing import Any

import orjson
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from cryptostream.config import Settings
from cryptostream.core.keys import offsets_key
from cryptostream.kafka_clients import make_consumer, make_producer, security_config
from cryptostream.logs import RateLimitedLog, setup_logging
from cryptostream.processor.batch import NO_OFFSET, Batch, RawRecord, parse_conflicts
from cryptostream.processor.metrics import ProcessorMetrics
from cryptostream.redis_check import credentials_error
from cryptostream.topics import TopicError, require_topic

log = logging.getLogger("cryptostream.processor")

APPLY_SCRIPT = resources.files("cryptostream.processor").joinpath("apply_batch.lua").read_text()


class Processor:
    def __init__(self, settings: Settings, redis_client: redis.Redis, producer: Producer) -> None:
        self.settings = settings
        self.redis = redis_client
        self.apply_script = redis_client.register_script(APPLY_SCRIPT)
        self.dlq = producer
        self.offsets_key = offsets_key(settings.topic)
        self.consumer: Consumer = make_consumer(settings, on_commit=self._on_commit)
        self.committed: dict[int, int] = {}  # partition -> offset Kafka acknowledged
        self.lag: dict[int, int] = {}
        self.running = True
        # partition -> last offset applied to Redis, as far as this process knows (-1 = none)
        self.positions: dict[int, int] = {}
        self.warn = RateLimitedLog(log)
        self.stats: dict[str, int] = {
            "records": 0, "batches": 0, "poison": 0, "conflicts": 0, "rebalances": 0,
        }  # fmt: skip
        self.metrics = ProcessorMetrics(self.stats, lambda: self.lag)

    # --- rebalance callbacks (they run inside consume(), between batches) ----------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats["rebalances"] += 1
        stored = self._stored_offsets([p.partition for p in partitions])
        for tp in partitions:
            # Resume from Redis, never from Kafka's committed offset: if Redis has nothing for a
            # partition, its views are empty and the whole partition must be (re)applied.
            position = stored.get(tp.partition, NO_OFFSET)
            self.positions[tp.partition] = position
            tp.offset = position + 1 if position != NO_OFFSET else OFFSET_BEGINNING
        consumer.incremental_assign(partitions)
        log.info(
            "partitions assigned",
            extra={"fields": {"partitions": {tp.partition: tp.offset for tp in partitions}}},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing is in flight here: batches are applied before the next consume() call.
        self.stats["rebalances"] += 1
        self._commit_positions([p.partition for p in partitions])
        for tp in partitions:
            self.positions.pop(tp.partition, None)
        consumer.incremental_unassign(partitions)
        log.info(
            "partitions revoked",
            extra={"fields": {"partitions": [p.partition for p in partitions]}},
        )

    def _stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        if not partitions:
            return {}
        values = self._with_redis_retry(
            lambda: self.redis.hmget(self.offsets_key, [str(p) for p in partitions])
        )
        return {p: int(v) for p, v in zip(partitions, values, strict=True) if v is not None}

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        self.consumer.subscribe(
            [self.settings.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )  # fmt: skip
        last_report = last_recommit = time.monotonic()
        try:
            while self.running:
                messages = self._next_batch()
                if messages:
                    self.process(messages)
                self.dlq.poll(0)
                if time.monotonic() - last_recommit >= 2:
                    last_recommit = time.monotonic()
                    self._verify_stored_offsets()
                    self._recommit_lagging()
                    self._update_lag()
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    log.info("progress", extra={"fields": {"processor": dict(self.stats)}})
        finally:
            self.close()

    def _next_batch(self) -> list[Any]:
        """Natural batching: wait for the first record, then take whatever is already queued.

        Under load batches grow up to batch_max by themselves; when quiet, one record is applied
        at once instead of waiting for a batch to fill (consume(n, timeout) would wait out the
        whole timeout whenever fewer than n records arrive).
        """
        first = self.consumer.poll(self.settings.batch_timeout_s)
        if first is None:
            return []
        return [first, *self.consumer.consume(self.settings.batch_max - 1, timeout=0)]

    def process(self, messages: list[Any]) -> None:
        batch = Batch()
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.warn.warning("consume", "consumer error", **{"error.message": str(err)})
                continue
            batch.add(RawRecord(msg.partition(), msg.offset(), msg.value()))
        if not batch.parts:
            return
        self._dead_letter(batch)
        now_ms = time.time_ns() // 1_000_000
        payload = batch.script_payload(self.positions, now_ms)
        history_ms = str(self.settings.candle_history_minutes * 60_000)
        started = time.perf_counter()
        reply = self._with_redis_retry(
            lambda: self.apply_script(args=[self.offsets_key, str(now_ms), history_ms, payload])
        )
        self.metrics.redis_apply.observe(time.perf_counter() - started)
        if int(reply[0]) == 0:
            self._resolve_conflicts(parse_conflicts(reply), batch)
            return
        for partition, (_first, last) in batch.parts.items():
            self.positions[partition] = last
        self.stats["records"] += batch.records
        self.stats["batches"] += 1
        self._observe(batch, now_ms)
        self._commit(batch)

    def _observe(self, batch: Batch, now_ms: int) -> None:
        self.metrics.batch_size.observe(batch.records)
        now_us = now_ms * 1000
        for symbol, views in batch.symbols.items():
            self.metrics.event_to_visible.observe(max(0, now_ms - views.latest.event_time) / 1e3)
            self.metrics.ingest_to_visible.observe(max(0, now_us - batch.ingest_us[symbol]) / 1e6)

    def _update_lag(self) -> None:
        lag = {}
        for partition, position in self.positions.items():
            tp = TopicPartition(self.settings.topic, partition)
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0:
                lag[partition] = max(0, high - (position + 1))
        self.lag = lag

    def _resolve_conflicts(self, stored: dict[int, int], batch: Batch) -> None:
        """Redis holds other offsets than we believed: nothing was applied; re-read from Redis's.

        Causes: another member applied the partition meanwhile (we are a zombie), or Redis lost
        data (restarted empty or from an older snapshot), in which case we re-apply from there.
        """
        self.stats["conflicts"] += 1
        self.warn.warning(
            "conflict", "stored offsets differ from ours; nothing applied, re-seeking",
            stored=stored, believed={p: self.positions.get(p) for p in stored},
        )  # fmt: skip
        for partition, (first, _last) in batch.parts.items():
            if partition in stored:
                self.positions[partition] = stored[partition]
                offset = (
                    stored[partition] + 1 if stored[partition] != NO_OFFSET else OFFSET_BEGINNING
                )
            else:
                offset = first
            try:
                self.consumer.seek(TopicPartition(self.settings.topic, partition, offset))
            except KafkaException as exc:  # revoked meanwhile: its new owner resumes from Redis
                self.warn.warning("seek", "seek failed", **{"error.message": str(exc)})

    def _verify_stored_offsets(self) -> None:
        """Notice a Redis that lost data even when no new record arrives to reveal it.

        Only the owner advances a partition's stored offset, so a stored offset below what we
        applied means Redis went back (restarted without persistence, restored an older
        snapshot, failed over to a stale replica): re-apply from there. The views rebuild
        themselves from the topic; ``csp rebuild`` is not needed. (A stored offset above ours
        means we are a zombie; the next apply's compare-and-set handles that.)
        """
        mine = [p for p, pos in self.positions.items() if pos != NO_OFFSET]
        if not mine:
            return
        stored = self._stored_offsets(mine)
        behind = {
            p: stored.get(p, NO_OFFSET)
            for p in mine
            if p in self.positions and stored.get(p, NO_OFFSET) < self.positions[p]
        }
        if not behind:
            return
        self.stats["conflicts"] += 1
        self.warn.warning(
            "offsets-went-back",
            "Redis holds older offsets than were applied (data lost?); re-applying from them",
            stored=behind, believed={p: self.positions[p] for p in behind},
        )  # fmt: skip
        for partition, offset in behind.items():
            target = offset + 1 if offset != NO_OFFSET else OFFSET_BEGINNING
            try:
                self.consumer.seek(TopicPartition(self.settings.topic, partition, target))
            except KafkaException as exc:  # the next apply's compare-and-set retries the seek
                self.warn.warning("seek", "seek failed", **{"error.message": str(exc)})
                continue
            self.positions[partition] = offset

    def _dead_letter(self, batch: Batch) -> None:
        for poison in batch.poison:
            self.stats["poison"] += 1
            record = poison.record
            self.warn.warning("poison", "poison record sent to the DLQ", reason=poison.reason)
            value = orjson.dumps(
                {
                    "reason": poison.reason,
                    "source": f"{self.settings.topic}/{record.partition}/{record.offset}",
                    "topic": self.settings.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "raw": (record.value or b"")[:65536].decode(errors="replace"),
                }
            )
            while True:
                try:
                    self.dlq.produce(self.settings.dlq_topic, value)
                    break
                except BufferError:
                    self.dlq.poll(0.1)

    def _commit(self, batch: Batch) -> None:
        offsets = [
            TopicPartition(self.settings.topic, p, last + 1)
            for p, (_f, last) in batch.parts.items()
        ]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:  # only lag tooling depends on it
            self.warn.warning("commit", "offset commit failed", **{"error.message": str(exc)})

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is None:
            for tp in partitions:
                if tp.error is None and tp.offset >= 0:
                    self.committed[tp.partition] = tp.offset

    def _recommit_lagging(self) -> None:
        """Async commits fail during rebalances; retry until Kafka holds what Redis holds."""
        lagging = [
            TopicPartition(self.settings.topic, p, pos + 1)
            for p, pos in self.positions.items()
            if pos != NO_OFFSET and self.committed.get(p) != pos + 1
        ]
        if lagging:
            try:
                self.consumer.commit(offsets=lagging, asynchronous=True)
            except KafkaException as exc:
                self.warn.warning("commit", "offset commit failed", **{"error.message": str(exc)})

    def _commit_positions(self, partitions: list[int]) -> None:
        """Synchronously commit what was applied before partitions leave (lag tooling)."""
        offsets = [
            TopicPartition(self.settings.topic, p, self.positions[p] + 1)
            for p in partitions
            if self.positions.get(p, NO_OFFSET) != NO_OFFSET
        ]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                self.warn.warning("commit", "offset commit failed", **{"error.message": str(exc)})

    def _with_redis_retry(self, call: Any) -> Any:
        """Retry a Redis call with backoff until it succeeds or we are asked to stop."""
        delay = 0.1
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                if not self.running:
                    raise
                self.warn.warning(
                    "redis", "Redis unavailable; retrying", **{"error.message": str(exc)}
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def rebuild(self, progress: Any = None) -> int:
        """Replay the whole topic into empty views; returns the number of records applied.

        Reads every partition from the beginning up to the end offsets seen at the start,
        outside the consumer group, so running processors are not disturbed.
        """
        topic = self.settings.topic
        meta = self.consumer.list_topics(topic, timeout=15)
        partitions = sorted(meta.topics[topic].partitions)
        ends = {
            p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1]
            for p in partitions
        }
        self.positions = dict.fromkeys(partitions, NO_OFFSET)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        total = sum(ends.values())

        def done() -> bool:
            return all(self.positions[p] >= ends[p] - 1 for p in partitions)

        while self.running and not done():
            messages = self.consumer.consume(self.settings.batch_max, self.settings.batch_timeout_s)
            if messages:
                self.process(messages)
                if progress is not None:
                    progress(sum(self.positions[p] + 1 for p in partitions), total)
        self.close()
        return int(self.stats["records"])

    def close(self) -> None:
        try:
            self.consumer.close()  # leaves the group promptly, so partitions move at once
        finally:
            self.dlq.flush(10)
            log.info("stopped", extra={"fields": {"processor": dict(self.stats)}})


def delete_views(client: redis.Redis, topic: str) -> int:
    """Remove every derived key (admin use only: SCAN over our own fixed prefixes)."""
    deleted = 0
    for pattern in ("price:*", "candles:1m:*", "stats:*"):
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
    deleted += int(client.unlink("symbols", offsets_key(topic)))
    return deleted


def rebuild(settings: Settings) -> int:
    """``csp rebuild``: empty the views, then replay the topic from its start."""
    setup_logging("rebuild", settings.log_level)
    require_topic(settings.kafka_bootstrap, settings.topic, settings.partitions,
                  client_config=security_config(settings))  # fmt: skip
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    deleted = delete_views(client, settings.topic)
    log.info("views deleted", extra={"fields": {"keys": deleted}})
    rebuild_settings = settings.model_copy(update={"group_id": f"{settings.group_id}-rebuild"})
    processor = Processor(rebuild_settings, client, make_producer(settings))
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 2:
            last[0] = time.monotonic()
            log.info("rebuild progress", extra={"fields": {"records": done, "of": total}})

    records = processor.rebuild(progress)
    log.info("rebuild done", extra={"fields": {"records": records}})
    return records


def main(settings: Settings) -> int:
    setup_logging("processor", settings.log_level)
    try:
        security = security_config(settings)
        require_topic(settings.kafka_bootstrap, settings.topic, settings.partitions,
                      client_config=security)  # fmt: skip
        require_topic(settings.kafka_bootstrap, settings.dlq_topic, None, client_config=security)
    except TopicError as exc:
        log.error(str(exc))
        return 2
    auth_error = credentials_error(settings.redis_url)
    if auth_error is not None:
        log.error(auth_error)
        return 2
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    processor = Processor(settings, client, make_producer(settings))
    if settings.processor_metrics_port:
        processor.metrics.serve(settings.processor_metrics_port, settings.metrics_host)

    def _stop(signum: int, frame: object) -> None:
        processor.running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    processor.run()
    return 0
