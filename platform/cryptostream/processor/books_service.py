"""The books side of the processor: ``raw.depth`` -> the L2 books in Redis, exactly once.

A :class:`BookProcessor` is a :class:`~cryptostream.processor.service.Processor` on the depth
topic (same consumer group, same backends, same rebalance handling and resume-from-Redis rule,
same DLQ), whose batches are folded by :mod:`cryptostream.processor.books` over its copies of the
books and applied by apply_books.lua, fenced by the depth topic's offsets in Redis. The process
runs it on a thread of its own next to the trades processor when ``CSP_PROCESSOR_BOOKS`` is on.

Applies are pipelined as the trades' are (service.py): while Redis runs batch N's script on the
apply thread, this thread fetches and folds batch N+1 over copies that already hold N. If N is
refused, the copies are dropped and N+1 is not sent but re-read; if N+1 is refused (it expected
N's offsets), nothing of it was applied either. At most one batch is in flight, and none across
a rebalance, a check of the stored offsets or a stop.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cryptostream.config import Settings
from cryptostream.core.keys import book_key, book_side_key, symbol_tag
from cryptostream.processor.batch import NO_OFFSET, RawRecord
from cryptostream.processor.books import BookBatch, BookMirror, parse_book_conflicts
from cryptostream.processor.consumers import ConsumerError
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


@dataclass
class BookInFlight:
    """A books batch whose apply was sent and not yet answered."""

    batch: BookBatch
    reply: Future[Any]
    now_ms: int
    before: dict[int, int]  # its partitions' positions before it: restored if it is refused


class BookProcessor(Processor):
    def __init__(self, settings: Settings, redis_client: Client) -> None:
        super().__init__(settings.model_copy(update={"topic": settings.depth_topic}), redis_client)
        self.books_script = ScriptRunner(redis_client, BOOKS_SCRIPT)
        self.mirrors: dict[str, BookMirror] = {}
        self.books_inflight: BookInFlight | None = None
        for name in BOOK_COUNTERS:
            self.stats.setdefault(name, 0)
        self.metrics = ProcessorMetrics(
            self.stats, lambda: self.lag, prefix=BOOKS_PREFIX, counters=BOOK_COUNTERS
        )

    def process(self, records: list[RawRecord]) -> None:
        # folds each record whose book is here as it is added
        batch = BookBatch(self.mirrors, home=self._home)
        positions = self.positions
        for record in records:
            if record.offset <= positions.get(record.partition, NO_OFFSET):
                self.stats["stale"] += 1
                continue
            batch.add(record)
        if not batch.parts:
            return
        n = self.layout_partitions
        missing = batch.missing()
        if missing:
            # (none of them is in the batch in flight: its books stay here until it settles)
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
        # Folded while the previous batch was being applied; it counted on that one's offsets.
        refused = self._settle()
        if refused is not None:
            self._reread_books(batch, refused)
            return
        self._dead_letter(batch)
        before = {p: positions.get(p, NO_OFFSET) for p in partitions}
        for partition in partitions:
            positions[partition] = batch.parts[partition][1]  # as if applied: the next expects it
        for symbol, changes in batch.changes.items():
            if changes.changed:
                self.mirrors[symbol].stored = True
        reply = self._applier.submit(self._apply_books, calls)
        self.books_inflight = BookInFlight(batch, reply, now_ms, before)

    def _apply_books(self, calls: list[tuple[list[str], list[str | bytes]]]) -> Any:
        """On the apply thread: the batch's script calls in one round trip, retried while Redis
        is unavailable."""
        started = time.perf_counter()
        replies = self._with_redis_retry(lambda: self.books_script.many(calls))
        self.metrics.redis_apply.observe(time.perf_counter() - started)
        return replies

    def finish_inflight(self) -> None:
        self._settle()

    def _settle(self) -> dict[int, list[int]] | None:
        """Wait for the batch in flight, if any, and settle it; returns the parts Redis refused
        (their positions are Redis's again and they are re-sought; every copy is dropped)."""
        pending, self.books_inflight = self.books_inflight, None
        if pending is None:
            return None
        replies = pending.reply.result()  # re-raises what the apply thread raised
        batch = pending.batch
        partitions = list(pending.before)
        conflicts: dict[int, int] = {}
        for partition, reply in zip(partitions, replies, strict=True):
            if int(reply[0]) == 0:
                stored = parse_book_conflicts(reply)
                if stored.get(partition) != batch.parts[partition][1]:  # not our own, retried
                    conflicts.update(stored)
        applied = [p for p in partitions if p not in conflicts]
        refused: dict[int, list[int]] | None = None
        if conflicts:
            for partition in partitions:
                if partition in conflicts:
                    self.positions[partition] = pending.before[partition]
            self.mirrors.clear()  # folded ahead of a Redis that holds something else: reload
            refused = {p: list(batch.parts[p]) for p in partitions if p in conflicts}
            self._resolve_conflicts(conflicts, refused)
        if applied:
            self._count(batch)
            self._observe_books(batch, pending.now_ms)
            self._commit_applied()
        return refused

    def _reread_books(self, batch: BookBatch, refused: dict[int, list[int]]) -> None:
        """A folded batch not sent (the one before it was refused): seek its partitions back to
        its first records, except the refused ones, re-sought from Redis's offsets already."""
        for partition, (first, _last) in batch.parts.items():
            if partition in refused:
                continue
            try:
                self.consumer.seek(partition, first)
            except ConsumerError as exc:  # revoked meanwhile: its new owner resumes from Redis
                self.warn.warning("seek", "seek failed", **{"error.message": str(exc)})

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
