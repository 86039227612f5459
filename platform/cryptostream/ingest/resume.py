"""Where a restarted ingest picks up: what ``raw.trades`` and ``raw.trades.gaps`` already hold.

Without it a new ingest process would take the first trade it receives as the start of history,
and every trade generated while the previous process was down (crash, deploy, SIGKILL) would be
lost without a trace. Seeded with the last published id, the id tracker sees the first live trade
as a jump and opens a ``reconnect`` gap from there, which is backfilled from REST or reported.

The last id is not enough after a crash: the dead process may have had *holes* below it that it
had not reported yet (still inside the reorder grace), trades it had accepted but Kafka never
got, and backfills half done (a ``detected`` record without its final records). All of them are
visible in the tail of the partitions, so :func:`resume_plan` (pure) works out per symbol:

* ``last``: the highest id published (or of a detection still open, whichever is higher);
* ``holes``: ids missing from the topic between a *floor* and ``last`` and not reported
  ``unrecoverable``: opened again as gaps with cause ``restart``;
* ``reopen``: ranges of ``detected`` records that no final record covers: continued as the same
  detection (its ``detected_at_us``), so its final records still cover it exactly;
* ``unknown``: older open detections below the floor, which the scan cannot judge (left as
  they are).

The floor is the lowest id above which the window is known to hold *every* published id of the
symbol. If the window starts at the partition's first record, that is the lowest id in it. If it
starts later, a record in it may be a late fill (a reordered frame, a backfill) of an id below
ids published before the window, which would then look missing. A late fill is either a backfill
or live fill of a detected gap (its range is on the gap topic), or a reordered frame accepted
within the grace period of a gap opened before it. So the floor is the lowest id of a record that
lies in no detected range and was published at least ``settle_ms`` (the grace and the detection
delay, with margin) after the window's first record: it filled no gap opened before the window,
so every id published before the window is below it. A detection needs no floor when it is
younger than the window's first record plus ``settle_ms``: its ids were not in the topic when its
gap opened, so those that are anywhere are in the window (this covers a backfill cut short by a
kill, whose late records would otherwise keep the floor above it).

Only the tail of each partition is read (``CSP_INGEST_RESUME_SCAN`` records, the same number of
gap records): a symbol with no trade in that window starts fresh, holes below the floor are not
seen, and a detection older than the gap window is not known (see the README's limits).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition

from cryptostream.config import Settings
from cryptostream.core.codec import DecodeError, decode_trade
from cryptostream.core.idranges import subtract as _subtract
from cryptostream.ingest.gaps import GapDecodeError, GapRecord, NotATradeGap, decode_gap
from cryptostream.ingest.tracker import Cause
from cryptostream.kafka_clients import make_consumer

log = logging.getLogger("cryptostream.ingest")

Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Scanned:
    """One trade record read back: symbol, trade id, Kafka timestamp (ms, the producer's)."""

    symbol: str
    trade_id: int
    ts_ms: int


@dataclass(slots=True)
class PartitionTail:
    """The records read from one partition, in offset order."""

    records: list[Scanned]
    whole: bool  # the window starts at the partition's first record
    complete: bool = True  # read up to the end offset seen at start


@dataclass(frozen=True, slots=True)
class Reopen:
    """A detected range no final record covers: backfill it again under its own detection."""

    first: int
    last: int
    cause: Cause
    detected_at_us: int
    missing: tuple[Range, ...]  # the ids of first..last not in the topic


@dataclass(slots=True)
class Seed:
    last: int
    holes: list[Range] = field(default_factory=list)
    reopen: list[Reopen] = field(default_factory=list)
    unknown: list[Range] = field(default_factory=list)


def _absent(ids: Iterable[int], lo: int, hi: int) -> list[Range]:
    """Ranges of ``lo..hi`` not in ``ids``."""
    out: list[Range] = []
    cursor = lo
    for i in sorted(i for i in set(ids) if lo <= i <= hi):
        if i > cursor:
            out.append((cursor, i - 1))
        cursor = i + 1
    if cursor <= hi:
        out.append((cursor, hi))
    return out


def _merged(ranges: Iterable[Range]) -> list[Range]:
    out: list[Range] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _first_outside(candidates: Iterable[int], ranges: list[Range]) -> int | None:
    """The lowest candidate in none of the (merged, sorted) ranges."""
    for tid in sorted(set(candidates)):
        i = bisect.bisect_right(ranges, (tid, float("inf"))) - 1
        if i < 0 or ranges[i][1] < tid:
            return tid
    return None


def open_detections(gaps: Iterable[GapRecord]) -> dict[str, list[tuple[Range, GapRecord]]]:
    """Per symbol, the detected ranges that no final record (same ``detected_at_us``) covers."""
    detected: dict[tuple[str, int], list[GapRecord]] = {}
    finals: list[GapRecord] = []
    for record in gaps:
        if record.status == "detected":
            detected.setdefault((record.symbol, record.detected_at_us), []).append(record)
        else:
            finals.append(record)
    left = {key: [(r.first_id, r.last_id) for r in records] for key, records in detected.items()}
    for record in finals:
        key = (record.symbol, record.detected_at_us)
        if key in left:
            left[key] = _subtract(left[key], (record.first_id, record.last_id))
    out: dict[str, list[tuple[Range, GapRecord]]] = {}
    for key, ranges in left.items():
        for lo, hi in ranges:
            origin = next(r for r in detected[key] if r.first_id <= lo <= r.last_id)
            out.setdefault(key[0], []).append(((lo, hi), origin))
    return out


def resume_plan(
    tails: Iterable[PartitionTail], gaps: Iterable[GapRecord], symbols: set[str], settle_ms: int
) -> dict[str, Seed]:
    """Per symbol of ``symbols`` seen in the tails: where to resume, what to reopen (see above)."""
    gaps = [g for g in gaps if g.symbol in symbols]
    detected: dict[str, list[Range]] = {}
    unrecoverable: dict[str, list[Range]] = {}
    for g in gaps:
        if g.status == "detected":
            detected.setdefault(g.symbol, []).append((g.first_id, g.last_id))
        elif g.status == "unrecoverable":
            unrecoverable.setdefault(g.symbol, []).append((g.first_id, g.last_id))

    merged = {symbol: _merged(ranges) for symbol, ranges in detected.items()}
    ids: dict[str, set[int]] = {}
    floors: dict[str, int | None] = {}
    # per symbol, from when (ms) a detection's ids cannot lie before the window; -1: never
    # (an incomplete read, or the symbol in two partitions); 0: always (a whole partition)
    known_after: dict[str, int] = {}
    for tail in tails:
        if not tail.records:
            continue
        settled_ms = tail.records[0].ts_ms + settle_ms
        candidates: dict[str, list[int]] = {}
        for r in tail.records:
            if r.symbol not in symbols:
                continue
            ids.setdefault(r.symbol, set()).add(r.trade_id)
            wanted = candidates.setdefault(r.symbol, [])
            if tail.whole or r.ts_ms >= settled_ms:
                wanted.append(r.trade_id)
        for symbol, wanted in candidates.items():
            floor: int | None = None
            if tail.complete:
                floor = (
                    min(wanted, default=None)
                    if tail.whole
                    else (_first_outside(wanted, merged.get(symbol, [])))
                )
            after = (0 if tail.whole else settled_ms) if tail.complete else -1
            if symbol in floors:  # in two partitions (repartitioned topic): be conservative
                prev = floors[symbol]
                floor = None if prev is None or floor is None else max(prev, floor)
                after = -1
            floors[symbol] = floor
            known_after[symbol] = after

    opened = open_detections(gaps)
    plan: dict[str, Seed] = {}
    for symbol, seen in ids.items():
        seed = Seed(max(seen))
        floor = floors.get(symbol)
        after = known_after.get(symbol, -1)
        holes = [] if floor is None else _absent(seen, floor, seed.last)
        for cut in unrecoverable.get(symbol, ()):
            holes = _subtract(holes, cut)
        claimed = set(seen)  # published, or to be backfilled by an earlier reopened range
        for (lo, hi), origin in opened.get(symbol, ()):
            # A detection's ids were not in the topic when its gap opened (at most the settle
            # time before it was detected): one younger than that is judged from the window.
            young = after >= 0 and origin.detected_at_us // 1000 >= after
            if not young:
                if floor is None or hi < floor:
                    seed.unknown.append((lo, hi))
                    continue
                if lo < floor:
                    seed.unknown.append((lo, floor - 1))
                    lo = floor
            holes = _subtract(holes, (lo, hi))
            missing = tuple(_absent(claimed, lo, hi))
            claimed.update(i for a, b in missing for i in range(a, b + 1))
            seed.reopen.append(Reopen(lo, hi, origin.cause, origin.detected_at_us, missing))
            seed.last = max(seed.last, hi)
        seed.holes = holes
        plan[symbol] = seed
    return plan


def start_offsets(watermarks: dict[int, tuple[int, int]], scan: int) -> dict[int, int]:
    """Per partition, where to start reading so at most ``scan`` records remain (empty: none)."""
    return {p: max(low, high - scan) for p, (low, high) in watermarks.items() if high > low}


@dataclass(slots=True)
class _Tail:
    whole: bool
    complete: bool = False
    messages: list[tuple[bytes | None, int]] = field(default_factory=list)  # value, ts (ms)


def _read_tails(consumer: Consumer, topic: str, scan: int, deadline: float) -> dict[int, _Tail]:
    """The last ``scan`` records of every partition of ``topic`` (until ``deadline``)."""
    partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
    watermarks = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15) for p in partitions
    }
    starts = start_offsets(watermarks, scan)
    tails = {p: _Tail(whole=offset == watermarks[p][0]) for p, offset in starts.items()}
    if not starts:
        return tails
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
    ends = {p: watermarks[p][1] for p in starts}
    pending = set(starts)
    while pending and time.monotonic() < deadline:
        for msg in consumer.consume(10_000, timeout=0.5):
            partition, offset = msg.partition(), msg.offset()
            if msg.topic() != topic or partition is None or offset is None:
                continue  # (a record of the previous assignment, still in the fetch queue)
            if partition not in tails:
                continue
            if msg.error() is None:
                tails[partition].messages.append((msg.value(), msg.timestamp()[1]))
            if offset >= ends[partition] - 1:  # the last record, or end of partition
                tails[partition].complete = True
                pending.discard(partition)
    consumer.unassign()
    return tails


def trade_tails(tails: dict[int, _Tail]) -> list[PartitionTail]:
    out: list[PartitionTail] = []
    for tail in tails.values():
        records: list[Scanned] = []
        for value, ts_ms in tail.messages:
            try:
                trade = decode_trade(value).trade
            except DecodeError:
                continue  # a poison record: the processor dead-letters it; it carries no position
            records.append(Scanned(trade.symbol, trade.trade_id, ts_ms))
        out.append(PartitionTail(records, tail.whole, tail.complete))
    return out


def gap_records(tails: dict[int, _Tail]) -> tuple[list[GapRecord], list[str]]:
    """The gap records of the scanned tails, and the reasons of those that do not decode (a gap
    topic is written by ingest alone, so one that does not decode is reported, not skipped)."""
    out: list[GapRecord] = []
    bad: list[str] = []
    for partition, tail in tails.items():
        for value, ts in tail.messages:
            try:
                out.append(decode_gap(value))
            except NotATradeGap:  # an order-book break: valid, and not about trades
                continue
            except GapDecodeError as exc:
                bad.append(f"partition {partition}, timestamp {ts}: {exc}")
    return out, bad


def read_resume_plan(
    settings: Settings, symbols: list[str], timeout_s: float = 30.0
) -> dict[str, Seed]:
    """Read the tails of the trade and gap topics; see :func:`resume_plan`."""
    scan = settings.ingest_resume_scan
    if scan <= 0 or not symbols:
        return {}
    started = time.monotonic()
    deadline = started + timeout_s
    consumer = make_consumer(
        settings,
        **{"group.id": f"{settings.group_id}-ingest-resume", "enable.partition.eof": True},
    )
    try:
        trades = _read_tails(consumer, settings.topic, scan, deadline)
        gaps = _read_tails(consumer, settings.gap_topic, scan, deadline)
    except KafkaException as exc:
        log.warning(
            "could not read the last published trade ids; starting fresh",
            extra={"fields": {"error.message": str(exc)}},
        )
        return {}
    finally:
        consumer.close()
    settle_ms = int((2 * settings.ingest_gap_grace_s + 5.0) * 1000)
    records, undecodable = gap_records(gaps)
    if undecodable:
        log.warning(
            "gap records that do not decode were left out of the resume plan: the holes they "
            "would have reported are not known to this run",
            extra={"fields": {"count": len(undecodable), "first": undecodable[:5]}},
        )
    plan = resume_plan(trade_tails(trades), records, set(symbols), settle_ms)
    log.info(
        "resuming from what raw.trades holds",
        extra={
            "fields": {
                "symbols_resumed": len(plan),
                "records_read": sum(len(t.messages) for t in trades.values()),
                "gap_records_read": sum(len(t.messages) for t in gaps.values()),
                "gap_records_undecodable": len(undecodable),
                "holes": sum(len(s.holes) for s in plan.values()),
                "hole_ids": sum(hi - lo + 1 for s in plan.values() for lo, hi in s.holes),
                "detections_reopened": sum(len(s.reopen) for s in plan.values()),
                "incomplete_partitions": sorted(p for p, t in trades.items() if not t.complete),
                "duration_s": round(time.monotonic() - started, 2),
            }
        },
    )
    for symbol, seed in plan.items():
        if seed.unknown:
            log.warning(
                "detected gaps without final records lie below what the resume scan can judge; "
                "raise CSP_INGEST_RESUME_SCAN to resolve them",
                extra={"fields": {"symbol": symbol, "ranges": seed.unknown[:10]}},
            )
    return plan
