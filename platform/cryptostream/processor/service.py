"""The processor process: a consumer-group member applying batches to Redis exactly once.

Correctness rests on Redis, not on Kafka's committed offsets: each batch's view updates and the
last applied offset of each of its partitions are written by one Lua script, and a partition that
is assigned to us resumes from the offset stored in Redis. Kafka offsets are committed afterwards
only so that lag tooling works.

Applies are pipelined: while Redis runs batch N's script (on an apply thread that waits on the
socket, GIL released), this thread fetches and folds batch N+1, whose expected offsets assume N
succeeds. That is safe because of the fencing: if N is refused, N+1, which expects N's offsets,
is refused too, or (if it touches only other partitions) is not sent at all; both are re-read
after a re-seek. At most one batch is in flight, and none across a rebalance, a check of the
stored offsets or a stop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from cryptostream.config import Settings
from cryptostream.core.deadletter import encode_dead_letter
from cryptostream.core.keys import SYMBOLS_KEY, VIEW_PREFIXES, offsets_key
from cryptostream.kafka_clients import make_producer
from cryptostream.logs import RateLimitedLog, setup_logging
from cryptostream.processor.batch import NO_OFFSET, Batch, RawRecord, parse_conflicts
from cryptostream.processor.books import BookBatch
from cryptostream.processor.consumers import (
    BEGINNING,
    ConsumerError,
    GroupConsumer,
    make_group_consumer,
)
from cryptostream.processor.metrics import ProcessorMetrics
from cryptostream.redis_check import credentials_error
from cryptostream.topics import TopicError, require_topic

log = logging.getLogger("cryptostream.processor")

APPLY_SCRIPT = resources.files("cryptostream.processor").joinpath("apply_batch.lua").read_text()


@dataclass
class InFlight:
    """A batch whose apply was sent and not yet answered."""

    batch: Batch
    reply: Future[Any]
    now_ms: int
    before: dict[int, int]  # its partitions' positions before it: restored if it is refused


class Processor:
    def __init__(self, settings: Settings, redis_client: redis.Redis) -> None:
        self.settings = settings
        self.redis = redis_client
        self.apply_script = redis_client.register_script(APPLY_SCRIPT)
        self.dlq: Producer = make_producer(settings, error_cb=self._on_dlq_error)
        self.offsets_key = offsets_key(settings.topic)
        self.max_future_ms = int(settings.processor_max_future_s * 1000)
        self.history_ms = settings.candle_history_minutes * 60_000
        self.consumer: GroupConsumer = make_group_consumer(settings)
        self.lag: dict[int, int] = {}
        self.running = True
        # partition -> last offset applied to Redis, as far as this process knows (-1 = none)
        self.positions: dict[int, int] = {}
        self.inflight: InFlight | None = None
        self._applier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply")
        self.warn = RateLimitedLog(log)
        self.stats: dict[str, int] = {
            "records": 0,
            "batches": 0,
            "poison": 0,
            "conflicts": 0,
            "rebalances": 0,
            "stale": 0,
            "dlq_failed": 0,
            "kafka_errors": 0,
        }
        self.metrics = ProcessorMetrics(self.stats, lambda: self.lag)

    # --- rebalance callbacks (the consumer runs them inside poll(), between batches) ----------
    def assigned(self, partitions: list[int]) -> dict[int, int]:
        self.finish_inflight()
        self.stats["rebalances"] += 1
        stored = self._stored_offsets(partitions)
        starts = {}
        for partition in partitions:
            # Resume from Redis, never from Kafka's committed offset: if Redis has nothing for a
            # partition, its views are empty and the whole partition must be (re)applied.
            position = stored.get(partition, NO_OFFSET)
            self.positions[partition] = position
            starts[partition] = _next(position)
        log.info("partitions assigned", extra={"fields": {"partitions": starts}})
        return starts

    def revoked(self, partitions: list[int]) -> None:
        self.finish_inflight()  # nothing of ours may land after the partitions leave
        self.stats["rebalances"] += 1
        self._commit_positions(partitions)
        for partition in partitions:
            self.positions.pop(partition, None)
        log.info("partitions revoked", extra={"fields": {"partitions": partitions}})

    def _stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        if not partitions:
            return {}
        values = self._with_redis_retry(
            lambda: self.redis.hmget(self.offsets_key, [str(p) for p in partitions])
        )
        return {p: int(v) for p, v in zip(partitions, values, strict=True) if v is not None}

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        self.consumer.subscribe(self)
        log.info("consuming", extra={"fields": {"kafka_client": self.consumer.name}})
        last_report = last_recommit = time.monotonic()
        try:
            while self.running:
                records = self.consumer.poll(self.settings.batch_max, self.settings.batch_timeout_s)
                if records:
                    self.process(records)
                self.dlq.poll(0)
                if not records:
                    self.finish_inflight()  # idle: make the last batch visible now
                if time.monotonic() - last_recommit >= 2:
                    last_recommit = time.monotonic()
                    self.finish_inflight()
                    self._verify_stored_offsets()
                    self._recommit_lagging()
                    self._update_lag()
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    log.info("progress", extra={"fields": {"processor": dict(self.stats)}})
        finally:
            self.close()

    def process(self, records: list[RawRecord]) -> None:
        """Apply one fetched batch (natural batching: the consumer returns what it has, up to
        batch_max, so batches grow under load and a lone record is applied at once)."""
        batch = Batch(max_future_ms=self.max_future_ms)
        positions = self.positions
        # Never re-apply: a client that hands back records at or below what was applied (a
        # fetch racing a seek) would double-count the running totals.
        stale = batch.add_all(records, positions)
        if stale:
            self.stats["stale"] += stale
        if not batch.parts:
            return
        now_ms = time.time_ns() // 1_000_000
        keys, args = batch.script_call(
            self.settings.topic, self.positions, now_ms, self.history_ms, self.max_future_ms
        )
        # Folded while the previous batch was being applied; it counted on that one's offsets.
        refused = self.finish_inflight()
        if refused is not None:
            self._reread(batch, refused)
            return
        self._dead_letter(batch)
        before = {p: positions.get(p, NO_OFFSET) for p in batch.parts}
        for partition, (_first, last) in batch.parts.items():
            positions[partition] = last  # as if applied: the next batch expects these
        reply = self._applier.submit(self._apply, keys, args)
        self.inflight = InFlight(batch, reply, now_ms, before)

    def _apply(self, keys: list[str], args: list[Any]) -> Any:
        """On the apply thread: one script call, retried while Redis is unavailable."""
        started = time.perf_counter()
        reply = self._with_redis_retry(lambda: self.apply_script(keys=keys, args=args))
        self.metrics.redis_apply.observe(time.perf_counter() - started)
        return reply

    def finish_inflight(self) -> Batch | None:
        """Wait for the batch in flight, if any, and settle it; returns it if Redis refused it
        (its partitions are re-sought from the stored offsets; positions are Redis's again)."""
        pending, self.inflight = self.inflight, None
        if pending is None:
            return None
        reply = pending.reply.result()  # re-raises what the apply thread raised
        batch = pending.batch
        if int(reply[0]) == 0:
            self.positions.update(pending.before)
            self._resolve_conflicts(parse_conflicts(reply), batch)
            return batch
        self.stats["records"] += batch.records
        self.stats["batches"] += 1
        self._observe(batch, pending.now_ms)
        self._commit(batch)
        return None

    def _reread(self, batch: Batch, refused: Batch) -> None:
        """A folded batch not sent (the one before it was refused): seek its partitions back to
        its first records, except those of the refused batch, re-sought below it already."""
        for partition, (first, _last) in batch.parts.items():
            if partition in refused.parts:
                continue
            try:
                self.consumer.seek(partition, first)
            except ConsumerError as exc:  # revoked meanwhile: its new owner resumes from Redis
                self.warn.warning("seek", "seek failed", **{"error.message": str(exc)})

    def _observe(self, batch: Batch, now_ms: int) -> None:
        self.metrics.batch_size.observe(batch.records)
        now_us = now_ms * 1000
        for views in batch.symbols.values():
            self.metrics.event_to_visible.observe(max(0, now_ms - views.latest.event_time) / 1e3)
            self.metrics.ingest_to_visible.observe(max(0, now_us - views.ingest_us) / 1e6)

    def _update_lag(self) -> None:
        highs = self.consumer.high_watermarks(list(self.positions))
        self.lag = {
            p: max(0, highs[p] - (pos + 1)) for p, pos in self.positions.items() if p in highs
        }

    def _resolve_conflicts(self, stored: dict[int, int], batch: Batch | BookBatch) -> None:
        """Redis holds other offsets than we believed: nothing was applied; re-read from Redis's.

        Causes: another member applied the partition meanwhile (we are a zombie), or Redis lost
        data (restarted empty or from an older snapshot), in which case we re-apply from there.
        """
        self.stats["conflicts"] += 1
        self.warn.warning(
            "conflict",
            "stored offsets differ from ours; nothing applied, re-seeking",
            stored=stored,
            believed={p: self.positions.get(p) for p in stored},
        )
        for partition, (first, _last) in batch.parts.items():
            if partition in stored:
                self.positions[partition] = stored[partition]
                offset = _next(stored[partition])
            else:
                offset = first
            try:
                self.consumer.seek(partition, offset)
            except ConsumerError as exc:  # revoked meanwhile: its new owner resumes from Redis
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
            stored=behind,
            believed={p: self.positions[p] for p in behind},
        )
        for partition, offset in behind.items():
            try:
                self.consumer.seek(partition, _next(offset))
            except ConsumerError as exc:  # the next apply's compare-and-set retries the seek
                self.warn.warning("seek", "seek failed", **{"error.message": str(exc)})
                continue
            self.positions[partition] = offset

    def _dead_letter(self, batch: Batch | BookBatch) -> None:
        """Each poison record to the DLQ, bounded to fit the producer's limit; its partition moves
        on either way (the record itself stays in the topic at the offset the entry names)."""
        topic = self.settings.topic
        for poison in batch.poison:
            self.stats["poison"] += 1
            record = poison.record
            where = f"{topic}/{record.partition}/{record.offset}"
            self.warn.warning(
                "poison", "poison record sent to the DLQ", reason=poison.reason[:200], source=where
            )
            value = encode_dead_letter(
                poison.reason,
                "processor",
                where,
                record.value,
                topic=topic,
                partition=record.partition,
                offset=record.offset,
            )
            while True:
                try:
                    self.dlq.produce(
                        self.settings.dlq_topic, value, on_delivery=self._on_dlq_delivery(where)
                    )
                    break
                except BufferError:
                    self.dlq.poll(0.1)
                except KafkaException as exc:  # refused at once (size, unknown topic, fatal)
                    self._dlq_failed(str(exc), where)
                    break

    def _on_dlq_delivery(self, where: str) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._dlq_failed(str(err), where)

        return delivered

    def _dlq_failed(self, error: str, where: str) -> None:
        self.stats["dlq_failed"] += 1
        log.error(
            "a dead letter could not be written; the record stays in the topic at its offset",
            extra={"fields": {"error.message": error, "source": where}},
        )

    def _on_dlq_error(self, err: KafkaError) -> None:
        self.stats["kafka_errors"] += 1
        self.warn.warning("dlq-producer", "DLQ producer error", **{"error.message": str(err)})

    def _commit(self, batch: Batch) -> None:
        self._try_commit({p: last + 1 for p, (_f, last) in batch.parts.items()})

    def _recommit_lagging(self) -> None:
        """Async commits fail during rebalances; retry until Kafka holds what Redis holds."""
        committed = self.consumer.committed
        self._try_commit(
            {
                p: pos + 1
                for p, pos in self.positions.items()
                if pos != NO_OFFSET and committed.get(p) != pos + 1
            }
        )

    def _commit_positions(self, partitions: list[int]) -> None:
        """Synchronously commit what was applied before partitions leave (lag tooling)."""
        self._try_commit(
            {
                p: self.positions[p] + 1
                for p in partitions
                if self.positions.get(p, NO_OFFSET) != NO_OFFSET
            },
            wait=True,
        )

    def _try_commit(self, offsets: dict[int, int], wait: bool = False) -> None:
        if not offsets:
            return
        try:
            self.consumer.commit(offsets, wait=wait)
        except ConsumerError as exc:  # only lag tooling depends on it
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
        ends = self.consumer.assign_from_beginning()
        partitions = sorted(ends)
        self.positions = dict.fromkeys(partitions, NO_OFFSET)
        total = sum(ends.values())

        def done() -> bool:
            return all(self.positions[p] >= ends[p] - 1 for p in partitions)

        while self.running:
            if done():
                self.finish_inflight()
                if done():  # and not re-sought by a refused last batch
                    break
            records = self.consumer.poll(self.settings.batch_max, self.settings.batch_timeout_s)
            if records:
                self.process(records)
                if progress is not None:
                    progress(sum(self.positions[p] + 1 for p in partitions), total)
        self.close()
        return int(self.stats["records"])

    def close(self) -> None:
        try:
            try:
                self.finish_inflight()
            finally:
                self._applier.shutdown(wait=True)
                self.consumer.close()  # leaves the group promptly, so partitions move at once
        finally:
            self.dlq.flush(10)
            log.info("stopped", extra={"fields": {"processor": dict(self.stats)}})


def _next(position: int) -> int:
    """Where to resume after ``position`` (the last applied offset; NO_OFFSET = none)."""
    return position + 1 if position != NO_OFFSET else BEGINNING


def delete_views(client: redis.Redis, topic: str, depth_topic: str | None = None) -> int:
    """Remove every derived key (admin use only: SCAN over our own fixed prefixes). The books
    (``book:*``) go too, with the depth topic's offsets, so a running books processor sees its
    offsets go back and re-applies raw.depth from its start."""
    deleted = 0
    for prefix in VIEW_PREFIXES:
        pattern = prefix + "*"
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
    extra = [offsets_key(depth_topic)] if depth_topic else []
    deleted += int(client.unlink(SYMBOLS_KEY, offsets_key(topic), *extra))
    return deleted


def rebuild(settings: Settings) -> int:
    """``csp rebuild``: empty the views, then replay the topic from its start."""
    setup_logging("rebuild", settings.log_level, settings.log_format)
    require_topic(
        settings.kafka, settings.topic, settings.partitions, settings.kafka_connect_timeout_s
    )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    deleted = delete_views(client, settings.topic, settings.depth_topic)
    log.info("views deleted", extra={"fields": {"keys": deleted}})
    rebuild_settings = settings.model_copy(update={"group_id": f"{settings.group_id}-rebuild"})
    processor = Processor(rebuild_settings, client)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 2:
            last[0] = time.monotonic()
            log.info("rebuild progress", extra={"fields": {"records": done, "of": total}})

    records = processor.rebuild(progress)
    log.info("rebuild done", extra={"fields": {"records": records}})
    return records


def main(settings: Settings) -> int:
    setup_logging("processor", settings.log_level, settings.log_format)
    try:
        kafka, timeout = settings.kafka, settings.kafka_connect_timeout_s
        require_topic(kafka, settings.topic, settings.partitions, timeout)
        require_topic(kafka, settings.dlq_topic, None, timeout)
        if settings.processor_books:
            require_topic(kafka, settings.depth_topic, settings.partitions, timeout)
    except TopicError as exc:
        log.error(str(exc))
        return 2
    auth_error = credentials_error(settings.redis_url)
    if auth_error is not None:
        log.error(auth_error)
        return 2
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    books: Processor | None = None
    try:
        processor = Processor(settings, client)
        if settings.processor_books:
            from cryptostream.processor.books_service import BookProcessor

            books = BookProcessor(settings, client)
    except ConsumerError as exc:
        log.error(str(exc))
        return 2
    if settings.processor_metrics_port:
        if books is not None:
            processor.metrics.include(books.metrics)
        processor.metrics.serve(settings.processor_metrics_port, settings.metrics_host)

    def _stop(signum: int, frame: object) -> None:
        processor.running = False
        if books is not None:
            books.running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    failed: list[BaseException] = []
    thread = None
    if books is not None:
        thread = threading.Thread(
            target=_run_books, args=(books, processor, failed), name="books", daemon=True
        )
        thread.start()
    try:
        _run(processor)
    finally:
        if books is not None and thread is not None:
            books.running = False
            thread.join(60)
    return 1 if failed else 0


def _run(processor: Processor) -> None:
    try:
        processor.run()
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
        if processor.running:  # not a stop request: the retry loop gave up on its own
            raise
        # Asked to stop while waiting for Redis: nothing was applied that is not recorded
        # (offsets live in Redis with the views), so this is a clean stop, not a crash.
        log.warning(
            "stopped while Redis was unavailable", extra={"fields": {"error.message": str(exc)}}
        )


def _run_books(books: Processor, trades: Processor, failed: list[BaseException]) -> None:
    """The books processor's thread: if it fails, the whole process stops (and exits 1) rather
    than serving trades with books that silently stopped moving."""
    try:
        _run(books)
    except BaseException as exc:
        failed.append(exc)
        log.exception("the books processor failed; stopping")
        trades.running = False
