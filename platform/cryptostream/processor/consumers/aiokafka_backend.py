"""The group consumer on aiokafka, behind the same synchronous interface as confluent-kafka.

aiokafka is asyncio-only, so it runs on a private event loop in a daemon thread; the processor's
thread calls into it with ``run_coroutine_threadsafe``. aiokafka calls its rebalance listener from
its own coordination task, at any moment, but the processor's callbacks must run between batches
in the processor's thread (as librdkafka's do). So the listener only *hands the event over*: it
queues it and awaits the answer, and :meth:`AiokafkaConsumer.poll` (or :meth:`close`) runs the
callback in the processor's thread, then lets the coordination task go on. While it waits, the
event loop keeps serving the calls the callback makes (commit, seek).

Records are returned only for partitions the processor holds (told of, and already sought to
where it asked), so a fetch that raced with a rebalance never reaches it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from cryptostream.config import Settings
from cryptostream.logs import RateLimitedLog
from cryptostream.processor.batch import RawRecord
from cryptostream.processor.consumers.base import BEGINNING, ConsumerError, Listener

log = logging.getLogger("cryptostream.processor.consumer")

T = TypeVar("T")
# (kind, partitions, answer): kind "assigned" answers start offsets, "revoked" answers None.
Handoff = tuple[str, list[int], "concurrent.futures.Future[dict[int, int] | None]"]
_RECORDS = "records"


def consumer_options(settings: Settings) -> dict[str, Any]:
    """The group consumer's own options (same fetch sizes and timeouts as librdkafka's) on top
    of the one connection value in aiokafka's spelling."""
    return settings.kafka.aiokafka(
        {
            "group_id": settings.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": 50,
            "max_partition_fetch_bytes": 8 << 20,
            "fetch_max_bytes": 64 << 20,
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 1_000,
        }
    )


class _Bridge(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: AiokafkaConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.hand_over("revoked", revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner.hand_over("assigned", assigned)


class AiokafkaConsumer:
    name = "aiokafka"

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic
        self.committed: dict[int, int] = {}
        self.listener: Listener | None = None
        self.assigned: set[int] = set()  # as far as the listener has been told
        self.warn = RateLimitedLog(log)
        self.closing = False
        self.pending_commits: set[concurrent.futures.Future[None]] = set()
        self.events: queue.SimpleQueue[Handoff | tuple[str, Any, None]] = queue.SimpleQueue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aiokafka", daemon=True)
        self.thread.start()
        self.admin_options = settings.kafka.aiokafka()
        options = consumer_options(settings)

        async def start() -> AIOKafkaConsumer:
            consumer = AIOKafkaConsumer(**options)
            await consumer.start()
            return consumer

        try:
            self.consumer = self._call(start())
        except Exception as exc:
            self._stop_loop()
            raise ConsumerError(
                f"aiokafka could not connect to {settings.kafka_bootstrap}: {exc!r}"
            ) from exc

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    # --- rebalances: aiokafka's coordination task -> the processor's thread -----------------
    async def hand_over(self, kind: str, tps: Iterable[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in tps if tp.topic == self.topic)
        if self.closing or (kind == "revoked" and not partitions):
            return
        answer: concurrent.futures.Future[dict[int, int] | None] = concurrent.futures.Future()
        self.events.put((kind, partitions, answer))
        starts = await asyncio.wrap_future(answer)
        if kind == "assigned" and starts is not None:
            await self._seek(starts)
            # Only now, in the same step as the seeks (no await in between): records the fetcher
            # read meanwhile from Kafka's committed offset were filtered out by poll() (and are
            # re-read from the seek) or are discarded by aiokafka (their position no longer
            # matches); none reaches the processor.
            self.assigned.update(starts)

    async def _seek(self, starts: dict[int, int]) -> None:
        """Seek partitions to explicit offsets; ``BEGINNING`` is looked up first, so the seeks
        themselves are synchronous (aiokafka's ``seek_to_beginning`` resets asynchronously)."""
        tps = [self._tp(p) for p, offset in starts.items() if offset == BEGINNING]
        firsts = await self.consumer.beginning_offsets(tps) if tps else {}
        for partition, offset in starts.items():
            tp = self._tp(partition)
            self.consumer.seek(tp, firsts[tp] if offset == BEGINNING else offset)

    def _answer(
        self, kind: str, partitions: list[int], answer: concurrent.futures.Future[Any]
    ) -> None:
        """Run a rebalance callback here (the processor's thread) and release the coordinator."""
        try:
            if self.closing or self.listener is None:
                answer.set_result(None)
            elif kind == "revoked":
                self.assigned.difference_update(partitions)
                self.listener.revoked(partitions)
                answer.set_result(None)
            else:
                answer.set_result(self.listener.assigned(partitions))
        except BaseException as exc:
            answer.set_exception(exc)
            raise

    # --- the interface ----------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self.listener = listener

        async def subscribe() -> None:
            self.consumer.subscribe([self.topic], listener=_Bridge(self))

        self._call(subscribe())

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        fetch = asyncio.run_coroutine_threadsafe(self._fetch(max_records, timeout_s), self.loop)
        fetch.add_done_callback(lambda f: self.events.put((_RECORDS, f, None)))
        while True:
            try:
                kind, payload, answer = self.events.get(timeout=timeout_s + 60)
            except queue.Empty:  # getmany honours its timeout: the loop thread is stuck
                raise ConsumerError("aiokafka did not answer a fetch within a minute") from None
            if kind == _RECORDS:
                if payload is fetch:
                    break
                continue  # a fetch abandoned by an earlier exception
            assert answer is not None
            self._answer(kind, payload, answer)
        try:
            records = fetch.result()
        except KafkaError as exc:
            self.warn.warning("consume", "consumer error", **{"error.message": repr(exc)})
            return []
        # Filtered again here: partitions revoked while the records waited for this thread.
        assigned = self.assigned
        return [r for r in records if r.partition in assigned]

    async def _fetch(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        batches = await self.consumer.getmany(
            timeout_ms=int(timeout_s * 1000), max_records=max_records
        )
        # Filtered in the loop, where hand_over() seeks and then adds partitions in one step:
        # records fetched from Kafka's committed offset before that seek are dropped here.
        assigned = self.assigned
        return [
            RawRecord(tp.partition, record.offset, record.value)
            for tp, records in batches.items()
            if tp.partition in assigned
            for record in records
        ]

    def seek(self, partition: int, offset: int) -> None:
        try:
            self._call(self._seek({partition: offset}))
        except (KafkaError, AssertionError, ValueError) as exc:  # not assigned (any more)
            raise ConsumerError(repr(exc)) from None

    def commit(self, offsets: dict[int, int], wait: bool = False) -> None:
        request = {self._tp(p): o for p, o in offsets.items()}

        async def commit() -> None:
            await self.consumer.commit(request)
            self.committed.update(offsets)

        future = asyncio.run_coroutine_threadsafe(commit(), self.loop)
        if wait:
            try:
                future.result(30)
            except KafkaError as exc:
                raise ConsumerError(repr(exc)) from None
        else:
            self.pending_commits.add(future)
            future.add_done_callback(self._commit_done)

    def _commit_done(self, future: concurrent.futures.Future[None]) -> None:
        self.pending_commits.discard(future)
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            self.warn.warning("commit", "offset commit failed", **{"error.message": repr(exc)})

    def high_watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        wanted = [p for p in partitions if p in self.assigned]

        async def read() -> dict[int, int]:
            out = {}
            for partition in wanted:
                tp = self._tp(partition)
                if tp in self.consumer.assignment():
                    high = self.consumer.highwater(tp)
                    if high is not None:
                        out[partition] = high
            return out

        return self._call(read())

    def assign_from_beginning(self) -> dict[int, int]:
        async def assign() -> dict[int, int]:
            admin = AIOKafkaAdminClient(**self.admin_options)
            await admin.start()
            try:
                (described,) = await admin.describe_topics([self.topic])
            finally:
                await admin.close()
            partitions = sorted(p["partition"] for p in described.get("partitions", ()))
            if not partitions:
                raise ConsumerError(f"topic {self.topic!r} has no partitions: {described}")
            tps = [self._tp(p) for p in partitions]
            self.consumer.assign(tps)
            await self.consumer.seek_to_beginning(*tps)
            ends = await self.consumer.end_offsets(tps)
            return {tp.partition: int(offset) for tp, offset in ends.items()}

        ends = self._call(assign())
        self.assigned = set(ends)
        return ends

    def close(self) -> None:
        try:
            if self.listener is not None and self.assigned:
                partitions = sorted(self.assigned)
                self.assigned.clear()
                self.listener.revoked(partitions)  # commit what was applied, as librdkafka does
        finally:
            self.closing = True
            concurrent.futures.wait(list(self.pending_commits), timeout=5)
            stop = asyncio.run_coroutine_threadsafe(self.consumer.stop(), self.loop)
            # The coordinator may be waiting on a hand-over queued before `closing` was set.
            while not stop.done():
                try:
                    _kind, _payload, answer = self.events.get(timeout=0.05)
                except queue.Empty:
                    continue
                if answer is not None:
                    answer.set_result(None)
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()
