"""The group consumer on confluent-kafka (librdkafka): cooperative-sticky rebalancing."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from cryptostream.config import Settings
from cryptostream.kafka_clients import make_consumer
from cryptostream.logs import RateLimitedLog
from cryptostream.processor.batch import RawRecord
from cryptostream.processor.consumers.base import BEGINNING, ConsumerError, Listener

log = logging.getLogger("cryptostream.processor.consumer")


class ConfluentConsumer:
    name = "confluent"

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic
        self.committed: dict[int, int] = {}
        self.consumer: Consumer = make_consumer(settings, on_commit=self._on_commit)
        self.listener: Listener | None = None
        self.warn = RateLimitedLog(log)

    def subscribe(self, listener: Listener) -> None:
        self.listener = listener
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    # librdkafka calls these from poll()/consume()/close(), in our thread, between batches.
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self.listener is not None
        starts = self.listener.assigned([tp.partition for tp in partitions])
        for tp in partitions:
            offset = starts.get(tp.partition, BEGINNING)
            tp.offset = OFFSET_BEGINNING if offset == BEGINNING else offset
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self.listener is not None
        self.listener.revoked([tp.partition for tp in partitions])
        consumer.incremental_unassign(partitions)

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        # consume(n, timeout) would wait out the whole timeout whenever fewer than n arrive.
        first = self.consumer.poll(timeout_s)
        if first is None:
            return []
        out: list[RawRecord] = []
        append = out.append
        new = tuple.__new__  # RawRecord(...) runs a Python-level __new__: twice the cost
        messages: list[Any] = [first, *self.consumer.consume(max_records - 1, timeout=0)]
        for msg in messages:
            err = msg.error()
            if err is None:
                append(new(RawRecord, (msg.partition(), msg.offset(), msg.value())))
            elif err.code() != KafkaError._PARTITION_EOF:
                self.warn.warning("consume", "consumer error", **{"error.message": str(err)})
        return out

    def seek(self, partition: int, offset: int) -> None:
        target = OFFSET_BEGINNING if offset == BEGINNING else offset
        try:
            self.consumer.seek(TopicPartition(self.topic, partition, target))
        except KafkaException as exc:
            raise ConsumerError(str(exc)) from None

    def commit(self, offsets: dict[int, int], wait: bool = False) -> None:
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            if wait:  # (two calls: the stubs type each mode separately)
                self.consumer.commit(offsets=tps, asynchronous=False)
            else:
                self.consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            raise ConsumerError(str(exc)) from None

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is None:
            for tp in partitions:
                if tp.error is None and tp.offset >= 0:
                    self.committed[tp.partition] = tp.offset

    def high_watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        out = {}
        for partition in partitions:
            try:
                _low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                out[partition] = high
        return out

    def assign_from_beginning(self) -> dict[int, int]:
        meta = self.consumer.list_topics(self.topic, timeout=15)
        partitions = sorted(meta.topics[self.topic].partitions)
        ends = {
            p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=15)[1]
            for p in partitions
        }
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        return ends

    def close(self) -> None:
        self.consumer.close()  # runs the revoke callback, then leaves the group at once
