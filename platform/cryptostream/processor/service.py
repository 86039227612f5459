"""The processor process: a consumer-group member applying batches to Redis exactly once.

Correctness rests on Redis, not on Kafka's committed offsets: each batch's view updates and the
last applied offset of each of its partitions are written by one Lua script, and a partition that
is assigned to us resumes from the offset stored in Redis. Kafka offsets are committed afterwards
only so that lag tooling works.

A fetched batch is folded per partition, and each partition's views and fence live under that
partition's hash tag (core/keys.py), so one apply touches one hash slot. The batch is sent as one
script call per partition in one pipelined round trip (``CSP_PROCESSOR_APPLY=partition``, the
one choice on a Redis Cluster: one round trip per node, in parallel), or on one Redis node as one
call for the whole batch (``batch``); ``auto``, the default, picks one call for a small batch
(a flatter latency tail) and one per partition for a large one (a faster drain), see the README. Each call is atomic on its own: a refused call (its partition's fence) leaves the
others applied; in batch style one call holds every partition's fence.

Applies are pipelined: while Redis runs batch N's script (on an apply thread that waits on the
socket, GIL released), this thread fetches and folds batch N+1, whose expected offsets assume N
succeeds. That is safe because of the fencing: if N is refused, N+1, which expects N's offsets,
is refused too, or (if it touches only other partitions) is not sent at all; both are re-read
after a re-seek. At most one batch is in flight, and none across a rebalance, a check of the
stored offsets or a stop.

Misrouted records (a symbol's record on another partition than its home, core/keys.py: another
producer's keys, a topic whose partition count changed) are not lost and not applied under the
wrong tag: the apply of their partition Q parks them in ``outbox:{pQ}`` atomically with Q's
fence; then each parked entry is applied under its symbols' home tag P, fenced by field Q of
``offsets:{pP}`` (records at or below it are already there), and removed. Counted
(``csp_processor_misrouted_total``) and logged.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from itertools import groupby
from operator import itemgetter
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from redis.exceptions import RedisClusterException

from cryptostream.config import Settings
from cryptostream.core.deadletter import encode_dead_letter
from cryptostream.core.keys import (
    LAYOUT_KEY,
    OFFSETS_PREFIX,
    VIEW_PREFIXES,
    home_partition,
    offsets_key,
    outbox_key,
)
from cryptostream.kafka_clients import make_producer
from cryptostream.logs import RateLimitedLog, setup_logging
from cryptostream.processor.batch import (
    NO_OFFSET,
    Batch,
    Group,
    RawRecord,
    apply_call,
    parse_conflicts,
    record_symbol,
)
from cryptostream.processor.books import BookBatch
from cryptostream.processor.consumers import (
    BEGINNING,
    ConsumerError,
    GroupConsumer,
    make_group_consumer,
)
from cryptostream.processor.known import KnownViews
from cryptostream.processor.metrics import ProcessorMetrics
from cryptostream.redis_check import credentials_error
from cryptostream.redisconn import (
    RETRYABLE,
    Client,
    LayoutMismatch,
    ScriptRunner,
    ensure_layout,
    make_client,
    stored_offsets,
)
from cryptostream.runtime import tune_gc, tune_thread_switching
from cryptostream.topics import TopicError, require_topic

log = logging.getLogger("cryptostream.processor")

APPLY_SCRIPT = resources.files("cryptostream.processor").joinpath("apply_batch.lua").read_text()
_PARTITION = itemgetter(0)  # a RawRecord's partition
# CSP_PROCESSOR_APPLY=auto on one node: up to this many records, one call for the whole batch
# (at 10,000 trades/s, ~22-record batches: p99 12/15/15/16 ms against 25/19/18/15 for a call
# per partition); above it, one per partition (the pipelined calls drain ~10 % faster: Redis
# starts on the first while the others are still being sent).
AUTO_ONE_CALL_RECORDS = 1000
COMMIT_INTERVAL_S = 0.5  # at most this often a Kafka offset commit after applied batches


@dataclass
class Call:
    """One script call of an apply, and the partitions whose fences it carries."""

    partitions: list[int]
    keys: list[str]
    args: list[Any]
    number: int = 0  # its number for the expectations (processor/known.py)
    names: list[str] = field(default_factory=list)  # its symbols, in the call's order


@dataclass
class InFlight:
    """A fetched batch whose apply was sent and not yet answered."""

    batches: dict[int, Batch]  # per partition
    calls: list[Call]
    reply: Future[Any]  # the calls' replies, in order
    now_ms: int
    before: dict[int, int]  # its partitions' positions before it: restored if it is refused
    parked: set[int] = field(default_factory=set)  # partitions whose apply parks records


# Parked entries kept in memory per (partition, home) after they were applied: if the home's
# Redis master loses them (a failover to a replica that had not received them), they are
# applied again from here (the fence at home says which records are missing).
_DRAINED_KEPT = 256


def one_call(style: str, records: int) -> bool:
    """Whether a fetched batch of ``records`` goes to Redis as one script call (else one per
    partition) in apply style ``style`` (Settings.apply_style)."""
    return style == "batch" or (style == "auto" and records <= AUTO_ONE_CALL_RECORDS)


class Processor:
    def __init__(self, settings: Settings, redis_client: Client) -> None:
        self.settings = settings
        self.redis = redis_client
        self.layout_partitions = settings.partitions  # the key layout's partition count
        self.apply_style = settings.apply_style
        self._last_commit = 0.0  # monotonic time of the last commit after an applied batch
        self.runner = ScriptRunner(redis_client, APPLY_SCRIPT)
        self.dlq: Producer = make_producer(settings, error_cb=self._on_dlq_error)
        self.max_future_ms = int(settings.processor_max_future_s * 1000)
        self.history_ms = settings.candle_history_minutes * 60_000
        self.consumer: GroupConsumer = make_group_consumer(settings)
        self.lag: dict[int, int] = {}
        self.running = True
        # partition -> last offset applied to Redis, as far as this process knows (-1 = none)
        self.positions: dict[int, int] = {}
        self.inflight: InFlight | None = None
        self.known = KnownViews()  # what we wrote: expectations that spare Lua its merges
        self._applier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply")
        self.warn = RateLimitedLog(log)
        self._homes: dict[str, int] = {}  # symbol -> home partition (a cache)
        # (partition, home) -> the parked entries applied there lately, and the fence set
        self._drained: dict[tuple[int, int], deque[bytes]] = {}
        self._drained_fence: dict[tuple[int, int], int] = {}
        self.stats: dict[str, int] = {
            "records": 0,
            "batches": 0,
            "poison": 0,
            "conflicts": 0,
            "rebalances": 0,
            "stale": 0,
            "dlq_failed": 0,
            "kafka_errors": 0,
            "misrouted": 0,
            "misrouted_reapplied": 0,
        }
        self.metrics = ProcessorMetrics(self.stats, lambda: self.lag)

    # --- rebalance callbacks (the consumer runs them inside poll(), between batches) ----------
    def assigned(self, partitions: list[int]) -> dict[int, int]:
        self.finish_inflight()
        self.known.clear()
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
        self.known.clear()
        self.stats["rebalances"] += 1
        self._commit_positions(partitions)
        for partition in partitions:
            self.positions.pop(partition, None)
        for pair in [pair for pair in self._drained if pair[0] in partitions]:
            del self._drained[pair]
            self._drained_fence.pop(pair, None)
        log.info("partitions revoked", extra={"fields": {"partitions": partitions}})

    def _stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        if not partitions:
            return {}
        result: dict[int, int] = self._with_redis_retry(
            lambda: stored_offsets(
                self.redis, self.settings.topic, partitions, self.layout_partitions
            )
        )
        return result

    # --- the loop ------------------------------------------------------------------------------
    def check_layout(self) -> None:
        """Refuse Redis views written with another layout (LayoutMismatch), else record ours."""
        self._with_redis_retry(lambda: ensure_layout(self.redis, self.layout_partitions))

    def run(self) -> None:
        try:
            self.check_layout()  # before consuming: views of another layout are refused
            self.consumer.subscribe(self)
            log.info("consuming", extra={"fields": {"kafka_client": self.consumer.name}})
            last_report = last_recommit = time.monotonic()
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
                    self.drain_outboxes()
                    self._recommit_lagging()
                    self._update_lag()
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    fields = {"processor": dict(self.stats), "expectations": dict(self.known.stats)}
                    log.info("progress", extra={"fields": fields})
        finally:
            self.close()

    def process(self, records: list[RawRecord]) -> None:
        """Apply one fetched batch (natural batching: the consumer returns what it has, up to
        batch_max, so batches grow under load and a lone record is applied at once)."""
        batches: dict[int, Batch] = {}
        positions = self.positions
        max_future = self.max_future_ms
        stale = 0
        # Never re-apply: a client that hands back records at or below what was applied (a
        # fetch racing a seek) would double-count the running totals. Records come in runs of
        # one partition; each run is folded in one loop into its partition's batch.
        for partition, run in groupby(records, _PARTITION):
            found = batches.get(partition)
            if found is None:
                found = batches[partition] = Batch(max_future_ms=max_future)
            stale += found.add_all(run, positions)
        if stale:
            self.stats["stale"] += stale
            batches = {p: b for p, b in batches.items() if b.parts}
        if not batches:
            return
        parked = self._park_misrouted(batches, records)
        now_ms = time.time_ns() // 1_000_000
        calls = self._calls(batches, parked, now_ms)
        # Folded while the previous batch was being applied; it counted on that one's offsets.
        refused = self.finish_inflight()
        if refused:
            self._reread(batches, refused)
            return
        for batch in batches.values():
            self._dead_letter(batch)
        before = {p: positions.get(p, NO_OFFSET) for p in batches}
        for partition, batch in batches.items():
            positions[partition] = batch.parts[partition][1]  # as if applied: the next expects it
        reply = self._applier.submit(self._apply, calls)
        self.inflight = InFlight(batches, calls, reply, now_ms, before, set(parked))

    def _calls(
        self, batches: dict[int, Batch], parked: dict[int, list[str]], now_ms: int
    ) -> list[Call]:
        """The script calls of one fetched batch: one per partition, or (batch style, one Redis
        node) one for all."""
        n, topic = self.layout_partitions, self.settings.topic
        groups: list[Group] = []
        for partition, batch in batches.items():
            (group,) = batch.groups(self.positions, n)
            group.out = parked.get(partition, [])
            groups.append(group)
        history, future, known = self.history_ms, self.max_future_ms, self.known
        if one_call(self.apply_style, sum(b.records for b in batches.values())):
            number = known.next_call()
            keys, args = apply_call(groups, topic, n, now_ms, history, future, known, number)
            names = [symbol for group in groups for symbol, _views in group.symbols]
            return [Call(list(batches), keys, args, number, names)]
        calls = []
        for group in groups:
            number = known.next_call()
            keys, args = apply_call([group], topic, n, now_ms, history, future, known, number)
            names = [symbol for symbol, _views in group.symbols]
            calls.append(Call([group.tag], keys, args, number, names))
        return calls

    def _home(self, symbol: str) -> int:
        home = self._homes.get(symbol)
        if home is None:
            if len(self._homes) >= 100_000:
                self._homes.clear()
            home = self._homes[symbol] = home_partition(symbol, self.layout_partitions)
        return home

    def _park_misrouted(
        self, batches: dict[int, Batch], records: list[RawRecord]
    ) -> dict[int, list[str]]:
        """Take every misrouted record out of its partition's batch (rare: the fold is redone
        for that partition) into outbox entries, one per home partition: partition -> entries.
        The partition's fence still covers them: they are parked in the same atomic step."""
        homes = self._homes
        suspect = []
        for partition, batch in batches.items():
            for symbol in batch.symbols:
                home = homes.get(symbol)
                if home is None:
                    home = self._home(symbol)
                if home != partition:
                    suspect.append(partition)
                    break
        parked: dict[int, list[str]] = {}
        for partition in suspect:
            old = batches[partition]
            main = Batch(max_future_ms=self.max_future_ms)
            away: dict[int, list[list[object]]] = {}
            floor = self.positions.get(partition, NO_OFFSET)
            for record in records:
                if record.partition != partition or record.offset <= floor:
                    continue
                name = record_symbol(record.value, self.max_future_ms)
                home = partition if name is None else self._home(name)
                if home == partition or record.value is None:
                    main.add(record)
                else:
                    away.setdefault(home, []).append([record.offset, record.value.decode()])
            main.parts[partition] = list(old.parts[partition])  # the fence covers them all
            main.records = old.records
            main.misrouted = sum(len(rows) for rows in away.values())
            batches[partition] = main
            parked[partition] = [
                orjson.dumps({"q": partition, "h": home, "r": rows}).decode()
                for home, rows in away.items()
            ]
            self.warn.warning(
                f"misrouted-{partition}",
                "records on a partition other than their symbol's home partition (a producer "
                "keyed differently, or a changed partition count): parked, then applied at "
                "their symbols' home",
                partition=partition,
                homes={h: len(rows) for h, rows in away.items()},
                layout_partitions=self.layout_partitions,
            )
        return parked

    def _apply(self, calls: list[Call]) -> Any:
        """On the apply thread: the calls in one round trip, retried while Redis is
        unavailable (a call applied before a lost reply is refused by its fence on the retry,
        and recognized as ours, see finish_inflight)."""
        started = time.perf_counter()
        reply = self._with_redis_retry(lambda: self.runner.many([(c.keys, c.args) for c in calls]))
        self.metrics.redis_apply.observe(time.perf_counter() - started)
        return reply

    def finish_inflight(self) -> set[int] | None:
        """Wait for the batch in flight, if any, and settle it; returns the partitions Redis
        refused (re-sought from the stored offsets; their positions are Redis's again)."""
        pending, self.inflight = self.inflight, None
        if pending is None:
            return None
        replies = pending.reply.result()  # re-raises what the apply thread raised
        applied: list[int] = []
        refused: set[int] = set()
        conflicts: dict[int, int] = {}
        for call, reply in zip(pending.calls, replies, strict=True):
            if int(reply[0]) == 1:
                applied += call.partitions
                self.known.settle(call.number, call.names, reply)
                continue
            # its expectations, and those of the calls built on them (the next batch's, not
            # sent if this one is refused), are unknown
            self.known.clear()
            stored = parse_conflicts(reply)
            lasts = {p: pending.batches[p].parts[p][1] for p in call.partitions}
            if all(stored.get(p) == last for p, last in lasts.items()):
                # Redis holds exactly this call's offsets: our own apply, whose reply was lost
                # (a retry after a broken connection or a failover). Applied, exactly once.
                applied += call.partitions
                continue
            refused.update(call.partitions)
            conflicts.update(stored)
        for partition in refused:  # before the commit below, which commits what positions hold
            self.positions[partition] = pending.before[partition]
        if applied:
            done = [pending.batches[p] for p in applied]
            self.stats["batches"] += 1
            self.stats["records"] += sum(b.records for b in done)
            self.stats["misrouted"] += sum(b.misrouted for b in done)
            self._observe(done, pending.now_ms)
            self._commit_applied()
            if pending.parked & set(applied):
                self.drain_outboxes(sorted(pending.parked & set(applied)))
        if not refused:
            return None
        self._resolve_conflicts(
            conflicts, {p: pending.batches[p].parts[p] for p in sorted(refused)}
        )
        return refused

    def _reread(self, batches: dict[int, Batch], refused: set[int]) -> None:
        """A folded batch not sent (the one before it was refused): seek its partitions back to
        their first records, except those refused, re-sought below it already."""
        for partition, batch in batches.items():
            if partition in refused:
                continue
            try:
                self.consumer.seek(partition, batch.parts[partition][0])
            except ConsumerError as exc:  # revoked meanwhile: its new owner resumes from Redis
                self.warn.warning("seek", "seek failed", **{"error.message": str(exc)})

    # --- misrouted records: the outboxes ---------------------------------------------------------
    def drain_outboxes(self, partitions: Iterable[int] | None = None) -> None:
        """Apply every parked entry of our partitions' outboxes at its symbols' home, then
        remove it. Safe to repeat and to race with another member (a zombie): the home's fence
        for the source partition admits each record once."""
        topic, n = self.settings.topic, self.layout_partitions
        owned = sorted(self.positions) if partitions is None else list(partitions)
        if not owned:
            return

        def lengths() -> list[int]:
            pipe = self.redis.pipeline(transaction=False)
            for q in owned:
                pipe.llen(outbox_key(topic, q, n))
            return [int(x) for x in pipe.execute()]

        for q, length in zip(owned, self._with_redis_retry(lengths), strict=True):
            if not length:
                continue
            key = outbox_key(topic, q, n)
            entries: list[bytes] = self._with_redis_retry(
                lambda key=key: self.redis.lrange(key, 0, -1)
            )
            for entry in entries:
                self._drain_entry(q, entry)
                self._with_redis_retry(lambda key=key, entry=entry: self.redis.lrem(key, 1, entry))

    def _drain_entry(self, q: int, entry: bytes) -> int:
        """Apply one parked entry at home (the records above the home's fence for ``q``);
        returns how many records it applied."""
        doc = orjson.loads(entry)
        home, rows = int(doc["h"]), doc["r"]
        topic, n = self.settings.topic, self.layout_partitions
        fence_key = offsets_key(topic, home, n)
        while True:
            raw = self._with_redis_retry(lambda: self.redis.hget(fence_key, str(q)))
            fence = NO_OFFSET if raw is None else int(raw)
            batch = Batch(max_future_ms=self.max_future_ms)
            last = fence
            for offset, value in rows:
                if offset > fence:
                    batch.add(RawRecord(q, offset, value.encode()))
                    last = max(last, offset)
            if not batch.symbols:
                applied = 0
                break
            group = Group(home, [[str(q), str(fence), str(last)]], list(batch.symbols.items()))
            now_ms = time.time_ns() // 1_000_000
            keys, args = apply_call([group], topic, n, now_ms, self.history_ms, self.max_future_ms)
            reply = self._with_redis_retry(lambda keys=keys, args=args: self.runner(keys, args))
            if int(reply[0]) == 1:
                applied = batch.records
                break
            # another member drained it meanwhile (or Redis went back): read the fence again
        pair = (q, home)
        kept = self._drained.setdefault(pair, deque(maxlen=_DRAINED_KEPT))
        kept.append(entry)
        self._drained_fence[pair] = max(self._drained_fence.get(pair, NO_OFFSET), last)
        return applied

    def _verify_drained(self) -> None:
        """A home whose fence for one of our partitions went below what we applied there lost
        those writes (a failover to a replica that lagged): apply them again from memory."""
        pairs = [pair for pair in self._drained_fence if pair[0] in self.positions]
        if not pairs:
            return
        topic, n = self.settings.topic, self.layout_partitions

        def fences() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for q, home in pairs:
                pipe.hget(offsets_key(topic, home, n), str(q))
            return list(pipe.execute())

        for (q, home), raw in zip(pairs, self._with_redis_retry(fences), strict=True):
            stored = NO_OFFSET if raw is None else int(raw)
            if stored >= self._drained_fence[(q, home)]:
                continue
            kept = list(self._drained[(q, home)])
            oldest = min((r[0] for e in kept for r in orjson.loads(e)["r"]), default=None)
            evicted = len(kept) >= _DRAINED_KEPT  # older entries may have left the memory
            if oldest is None or (evicted and oldest > stored + 1):
                log.error(
                    "misrouted records applied at their home were lost by Redis and are no "
                    "longer in memory; run `csp rebuild`",
                    extra={"fields": {"partition": q, "home": home, "stored": stored}},
                )
            self.warn.warning(
                "misrouted-lost",
                "Redis lost misrouted records applied at their home; applying them again",
                partition=q,
                home=home,
                stored=stored,
                believed=self._drained_fence[(q, home)],
            )
            self._drained_fence[(q, home)] = stored
            for entry in kept:
                self.stats["misrouted_reapplied"] += self._drain_entry(q, entry)

    def _observe(self, batches: list[Batch], now_ms: int) -> None:
        """One applied fetched batch (its applied partitions)."""
        self.metrics.batch_size.observe(sum(b.records for b in batches))
        now_us = now_ms * 1000
        event, ingest = self.metrics.event_to_visible, self.metrics.ingest_to_visible
        for batch in batches:
            for views in batch.symbols.values():
                event.observe(max(0, now_ms - views.latest.event_time) / 1e3)
                ingest.observe(max(0, now_us - views.ingest_us) / 1e6)

    def _update_lag(self) -> None:
        highs = self.consumer.high_watermarks(list(self.positions))
        self.lag = {
            p: max(0, highs[p] - (pos + 1)) for p, pos in self.positions.items() if p in highs
        }

    def _resolve_conflicts(self, stored: dict[int, int], parts: dict[int, list[int]]) -> None:
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
        for partition, (first, _last) in parts.items():
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
        self._verify_drained()
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

    def _commit_applied(self) -> None:
        """After an applied batch: Kafka's committed offsets serve lag tooling only (Redis holds
        the offsets that count), so they follow at most every COMMIT_INTERVAL_S instead of once
        per batch: at low rates batches are small, and each commit is a write to
        __consumer_offsets that cost the broker more CPU than the records themselves."""
        now = time.monotonic()
        if now - self._last_commit >= COMMIT_INTERVAL_S:
            self._last_commit = now
            self._recommit_lagging()

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
            except RETRYABLE as exc:
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

        self.check_layout()
        while self.running:
            if done():
                self.finish_inflight()
                if done():  # and not re-sought by a refused last batch
                    self.drain_outboxes()
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


def delete_views(client: Client, topic: str, depth_topic: str | None = None) -> int:
    """Remove every derived key (admin use only: SCAN over our own fixed prefixes, on every
    master of a cluster). The books (``book:*``) go too, with the depth topic's offsets, so a
    running books processor sees its offsets go back and re-applies raw.depth from its start.
    Keys of the layout before hash tags (``offsets:TOPIC``, ``symbols``) go as well."""
    patterns = [prefix + "*" for prefix in VIEW_PREFIXES]
    for name in (topic, depth_topic):
        if name:
            patterns.append(f"{OFFSETS_PREFIX}*:{name}")
    deleted = 0
    for pattern in patterns:
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
    legacy = [OFFSETS_PREFIX + topic, "symbols", LAYOUT_KEY]
    if depth_topic:
        legacy.append(OFFSETS_PREFIX + depth_topic)
    for key in legacy:  # one by one: on a cluster, keys of different slots
        deleted += int(client.unlink(key))
    return deleted


_STARTUP_RETRYABLE: tuple[type[Exception], ...] = (*RETRYABLE, RedisClusterException)


def _client(settings: Settings) -> Client:
    """The processor's Redis client; on a cluster, retried until a node answers (the cluster
    client needs the slot map before its first command)."""
    delay = 0.5
    while True:
        try:
            return make_client(
                settings.redis_url,
                settings.redis_cluster,
                seeds=settings.redis_seeds,
                socket_timeout=10,
                socket_connect_timeout=5,
            )
        except _STARTUP_RETRYABLE as exc:  # "cannot be connected" while no node answers
            log.warning(
                "Redis Cluster not reachable yet; retrying",
                extra={"fields": {"error.message": str(exc)}},
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def rebuild(settings: Settings) -> int:
    """``csp rebuild``: empty the views, then replay the topic from its start."""
    setup_logging("rebuild", settings.log_level, settings.log_format)
    require_topic(
        settings.kafka, settings.topic, settings.partitions, settings.kafka_connect_timeout_s
    )
    client = _client(settings)
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
    client = _client(settings)
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
    tune_gc()
    tune_thread_switching()
    failed: list[BaseException] = []
    thread = None
    if books is not None:
        thread = threading.Thread(
            target=_run_books, args=(books, processor, failed), name="books", daemon=True
        )
        thread.start()
    try:
        _run(processor)
    except LayoutMismatch as exc:
        log.error(str(exc))
        return 2
    finally:
        if books is not None and thread is not None:
            books.running = False
            thread.join(60)
    return 1 if failed else 0


def _run(processor: Processor) -> None:
    try:
        processor.run()
    except RETRYABLE as exc:
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
