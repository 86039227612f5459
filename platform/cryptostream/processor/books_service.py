"""The books side of the processor: ``raw.depth`` -> the L2 books in Redis, exactly once.

A :class:`BookProcessor` is a :class:`~cryptostream.processor.service.Processor` on the depth
topic (same consumer group, same backends, same rebalance handling and resume-from-Redis rule,
same DLQ), whose batches are folded by :mod:`cryptostream.processor.books` over its copies of the
books and applied by apply_books.lua, fenced by the depth topic's offsets in Redis. The process
runs it on a thread of its own next to the trades processor when ``CSP_PROCESSOR_BOOKS`` is on.
"""

from __future__ import annotations

import logging
import time
from importlib import resources

from cryptostream.config import Settings
from cryptostream.core.keys import book_key, book_side_key, symbol_tag
from cryptostream.processor.batch import NO_OFFSET, RawRecord
from cryptostream.processor.books import BookBatch, BookMirror, parse_book_conflicts
from cryptostream.processor.metrics import ProcessorMetrics
from cryptostream.processor.service import Processor
from cryptostream.redisconn import Client, ScriptRunner

log = logging.getLogger("cryptostream.processor.books")

BOOKS_SCRIPT = resources.files("cryptostream.processor").joinpath("apply_books.lua").read_text()
BOOK_COUNTERS = (
    "records",
    "batches",
    "poison",
    "conflicts",
    "rebalances",
    "dlq_failed",
    "kafka_errors",
    "stale",
    "snapshots",
    "diffs",
    "stale_diffs",
    "unsynced",
    "breaks",
    "misrouted",
)
BOOKS_PREFIX = "csp_processor_books_"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def load_mirrors(client: Client, symbols: list[str], partitions: int) -> dict[str, BookMirror]:
    """The stored books of ``symbols`` as the fold's copies: one atomic read (MULTI/EXEC) per
    hash tag (a transaction stays within one slot on a cluster; a book lives in one tag)."""
    by_tag: dict[str, list[str]] = {}
    for symbol in symbols:
        by_tag.setdefault(symbol_tag(symbol, partitions), []).append(symbol)
    out = {}
    for group in by_tag.values():
        pipe = client.pipeline(transaction=True)
        for symbol in group:
            pipe.hgetall(book_key(symbol, partitions))
            pipe.zrange(book_side_key(symbol, "bids", partitions), 0, -1)
            pipe.zrange(book_side_key(symbol, "asks", partitions), 0, -1)
        replies = pipe.execute()
        for i, symbol in enumerate(group):
            state, bids, asks = replies[3 * i : 3 * i + 3]
            out[symbol] = BookMirror.from_redis(
                {_text(k): _text(v) for k, v in state.items()},
                [_text(m) for m in bids],
                [_text(m) for m in asks],
            )
    return out


class BookProcessor(Processor):
    def __init__(self, settings: Settings, redis_client: Client) -> None:
        super().__init__(settings.model_copy(update={"topic": settings.depth_topic}), redis_client)
        self.books_script = ScriptRunner(redis_client, BOOKS_SCRIPT)
        self.mirrors: dict[str, BookMirror] = {}
        for name in BOOK_COUNTERS:
            self.stats.setdefault(name, 0)
        self.metrics = ProcessorMetrics(
            self.stats, lambda: self.lag, prefix=BOOKS_PREFIX, counters=BOOK_COUNTERS
        )

    def process(self, records: list[RawRecord]) -> None:
        batch = BookBatch(home=self._home)
        positions = self.positions
        for record in records:
            if record.offset <= positions.get(record.partition, NO_OFFSET):
                self.stats["stale"] += 1
                continue
            batch.add(record)
        if not batch.parts:
            return
        self._dead_letter(batch)
        n = self.layout_partitions
        missing = [s for s in batch.records_by_symbol if s not in self.mirrors]
        if missing:
            self.mirrors.update(
                self._with_redis_retry(lambda: load_mirrors(self.redis, missing, n))
            )
        batch.fold(self.mirrors)
        now_ms = time.time_ns() // 1_000_000
        # one call per partition (its hash tag: one slot on a cluster), in one round trip
        partitions = list(batch.parts)
        calls = [
            batch.script_call(self.settings.topic, positions, now_ms, self.mirrors, n, p)
            for p in partitions
        ]
        started = time.perf_counter()
        replies = self._with_redis_retry(lambda: self.books_script.many(calls))
        self.metrics.redis_apply.observe(time.perf_counter() - started)
        conflicts: dict[int, int] = {}
        for partition, reply in zip(partitions, replies, strict=True):
            if int(reply[0]) == 0:
                stored = parse_book_conflicts(reply)
                if stored.get(partition) != batch.parts[partition][1]:  # not our own, retried
                    conflicts.update(stored)
        if conflicts:
            # folded ahead of a Redis that holds something else: reload every copy
            self.mirrors.clear()
            refused = {p: batch.parts[p] for p in partitions if p in conflicts}
            self._resolve_conflicts(conflicts, refused)
            applied = [p for p in partitions if p not in conflicts]
        else:
            applied = partitions
            for symbol, changes in batch.changes.items():
                if changes.changed:
                    self.mirrors[symbol].stored = True
        for partition in applied:
            self.positions[partition] = batch.parts[partition][1]
        if not applied:
            return
        self._count(batch)
        self._observe_books(batch, now_ms)
        self._try_commit({p: batch.parts[p][1] + 1 for p in applied})

    def _count(self, batch: BookBatch) -> None:
        stats, counts = self.stats, batch.counts
        stats["records"] += batch.records
        stats["batches"] += 1
        stats["snapshots"] += counts.get("snapshot", 0)
        stats["diffs"] += counts.get("applied", 0)
        stats["stale_diffs"] += counts.get("stale", 0)
        stats["unsynced"] += counts.get("unsynced", 0)
        stats["breaks"] += len(batch.breaks)
        stats["misrouted"] += batch.misrouted
        for symbol, reason in batch.breaks:
            self.warn.warning(
                f"break-{symbol}",
                "book unsynced until the next snapshot",
                symbol=symbol,
                reason=reason,
            )

    def _observe_books(self, batch: BookBatch, now_ms: int) -> None:
        self.metrics.batch_size.observe(batch.records)
        now_us = now_ms * 1000
        for changes in batch.changes.values():
            if changes.event_time is not None:
                self.metrics.event_to_visible.observe(max(0, now_ms - changes.event_time) / 1e3)
            if changes.ingest_us:
                self.metrics.ingest_to_visible.observe(max(0, now_us - changes.ingest_us) / 1e6)

    def _verify_stored_offsets(self) -> None:
        before = dict(self.positions)
        super()._verify_stored_offsets()
        if self.positions != before:  # Redis went back: our copies are ahead of it
            self.mirrors.clear()

    def revoked(self, partitions: list[int]) -> None:
        super().revoked(partitions)
        self.mirrors.clear()  # their new owner changes them; ours would go stale
