"""Where a restarted ingest picks up: each symbol's last trade id already in ``raw.trades``.

Without it a new ingest process would take the first trade it receives as the start of history,
and every trade generated while the previous process was down (crash, deploy, SIGKILL) would be
lost without a trace. Seeded with the last published id, the id tracker sees the first live trade
as a jump and opens a ``reconnect`` gap from there, which is backfilled from REST or reported.

Only the tail of each partition is read (``CSP_INGEST_RESUME_SCAN`` records): a symbol with no
trade in that window starts fresh, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaException, TopicPartition

from cryptostream.config import Settings
from cryptostream.core.codec import DecodeError, decode_trade
from cryptostream.kafka_clients import make_consumer

log = logging.getLogger("cryptostream.ingest")


def last_trade_ids(values: Iterable[bytes | None], symbols: set[str]) -> dict[str, int]:
    """The highest trade id per symbol (of ``symbols``) among record values; others skipped."""
    last: dict[str, int] = {}
    for value in values:
        try:
            trade = decode_trade(value).trade
        except DecodeError:
            continue  # a poison record: the processor dead-letters it; it carries no position
        if trade.symbol in symbols and trade.trade_id > last.get(trade.symbol, -1):
            last[trade.symbol] = trade.trade_id
    return last


def start_offsets(watermarks: dict[int, tuple[int, int]], scan: int) -> dict[int, int]:
    """Per partition, where to start reading so at most ``scan`` records remain (empty: none)."""
    return {p: max(low, high - scan) for p, (low, high) in watermarks.items() if high > low}


def read_last_trade_ids(
    settings: Settings, symbols: list[str], timeout_s: float = 30.0
) -> dict[str, int]:
    """Read the tail of every partition of the trade topic; see :func:`last_trade_ids`."""
    scan = settings.ingest_resume_scan
    if scan <= 0 or not symbols:
        return {}
    started = time.monotonic()
    consumer = make_consumer(
        settings,
        **{"group.id": f"{settings.group_id}-ingest-resume", "enable.partition.eof": True},
    )
    try:
        topic = settings.topic
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        watermarks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            for p in partitions
        }
        starts = start_offsets(watermarks, scan)
        if not starts:
            return {}
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
        ends = {p: watermarks[p][1] for p in starts}
        values: list[bytes | None] = []
        pending = set(starts)
        deadline = started + timeout_s
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.5):
                partition, offset = msg.partition(), msg.offset()
                if partition is None or offset is None:
                    continue
                if msg.error() is None:
                    values.append(msg.value())
                if offset >= ends[partition] - 1:  # the last record, or end of partition
                    pending.discard(partition)
        last = last_trade_ids(values, set(symbols))
    except KafkaException as exc:
        log.warning(
            "could not read the last published trade ids; starting fresh",
            extra={"fields": {"error.message": str(exc)}},
        )
        return {}
    finally:
        consumer.close()
    log.info(
        "resuming from the last published trade ids",
        extra={
            "fields": {
                "symbols_resumed": len(last),
                "records_read": len(values),
                "incomplete_partitions": sorted(pending),
                "duration_s": round(time.monotonic() - started, 2),
            }
        },
    )
    return last
