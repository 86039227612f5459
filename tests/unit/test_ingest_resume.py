"""Resuming ingest from what raw.trades and raw.trades.gaps hold (pure parts)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cryptostream.ingest.gaps import DepthBreakRecord, GapRecord
from cryptostream.ingest.resume import (
    PartitionTail,
    Reopen,
    Scanned,
    _Tail,
    gap_records,
    resume_plan,
    start_offsets,
)
from cryptostream.ingest.tracker import Cause, Status, SymbolTracker

SYMBOLS = {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
SETTLE = 5000


def tail(ids: list[tuple[str, int]], whole: bool = True, step_ms: int = 1) -> PartitionTail:
    return PartitionTail([Scanned(s, i, n * step_ms) for n, (s, i) in enumerate(ids)], whole)


def gap(first: int, last: int, status: Status, at: int = 7, cause: Cause = "stream") -> GapRecord:
    return GapRecord("BTCUSDT", first, last, status, cause, at, at + 1)


def test_highest_id_per_wanted_symbol() -> None:
    tails = [
        tail([("BTCUSDT", 7), ("BTCUSDT", 6), ("ETHUSDT", 3), ("XRPUSDT", 99)]),
        tail([("SOLUSDT", 1)]),
        tail([]),
    ]
    plan = resume_plan(tails, [], SYMBOLS, SETTLE)
    assert {s: seed.last for s, seed in plan.items()} == {"BTCUSDT": 7, "ETHUSDT": 3, "SOLUSDT": 1}
    assert all(not seed.holes and not seed.reopen for seed in plan.values())


def test_start_offsets_read_at_most_the_tail() -> None:
    assert start_offsets({0: (0, 100), 1: (90, 100), 2: (5, 5)}, scan=20) == {0: 80, 1: 90}


def test_holes_below_the_last_id_are_reopened_minus_the_unrecoverable_ones() -> None:
    ids = [("BTCUSDT", i) for i in (10, 11, 14, 12, 17, 18, 22)]  # 13, 15-16, 19-21 missing
    gaps = [gap(19, 21, "detected"), gap(19, 20, "unrecoverable"), gap(21, 21, "backfilled")]
    (seed,) = resume_plan([tail(ids)], gaps, SYMBOLS, SETTLE).values()
    # 21 was reported backfilled, yet is not in the topic (in flight when the process died)
    assert seed.last == 22 and seed.holes == [(13, 13), (15, 16), (21, 21)]
    assert not seed.reopen and not seed.unknown


def test_an_unfinished_detection_is_continued_under_its_own_detection() -> None:
    ids = [("BTCUSDT", i) for i in (1, 2, 3, 9, 4, 6)]  # 4-8 detected; 4 and 6 backfilled
    gaps = [
        gap(4, 8, "detected", at=50, cause="reconnect"),
        gap(20, 30, "detected", at=60),
        gap(20, 30, "backfilled", at=60),
    ]
    (seed,) = resume_plan([tail(ids)], gaps, SYMBOLS, SETTLE).values()
    assert seed.reopen == [Reopen(4, 8, "reconnect", 50, ((5, 5), (7, 8)))]
    assert seed.holes == [] and seed.last == 9
    # a detection above everything published (nothing backfilled yet) moves the resume point
    gaps = [gap(10, 15, "detected", at=70), gap(10, 11, "unrecoverable", at=70)]
    (seed,) = resume_plan([tail(ids)], gaps, SYMBOLS, SETTLE).values()
    assert seed.reopen == [Reopen(12, 15, "stream", 70, ((12, 15),))] and seed.last == 15


def test_overlapping_unfinished_detections_backfill_each_id_once() -> None:
    ids = [("BTCUSDT", i) for i in (1, 2, 9)]
    gaps = [gap(3, 6, "detected", at=50), gap(5, 8, "detected", at=60)]
    (seed,) = resume_plan([tail(ids)], gaps, SYMBOLS, SETTLE).values()
    assert seed.reopen == [
        Reopen(3, 6, "stream", 50, ((3, 6),)),
        Reopen(5, 8, "stream", 60, ((7, 8),)),
    ]


def test_a_cut_window_trusts_only_ids_past_the_settle_time_outside_detected_ranges() -> None:
    # The window starts in the middle of a backfill (ids 50-52, detected 50-60) and with a
    # reordered frame (80): ids 53-60 and 81 may sit before the window. The floor is the lowest
    # id published past the settle time that no detection covers: 83.
    ids = [("BTCUSDT", i) for i in (50, 51, 52, 80, 82, 83, 84, 85, 86, 87, 89, 90)]
    window = tail(ids, whole=False, step_ms=1000)
    gaps = [gap(50, 60, "detected"), gap(50, 60, "backfilled")]
    (seed,) = resume_plan([window], gaps, SYMBOLS, SETTLE).values()
    assert seed.last == 90 and seed.holes == [(88, 88)]
    # the same records as a whole partition: everything from 50 up is known
    (seed,) = resume_plan([tail(ids)], gaps, SYMBOLS, SETTLE).values()
    assert seed.holes == [(53, 79), (81, 81), (88, 88)]
    # a window too short to settle: no holes at all, just the last id
    (seed,) = resume_plan([tail(ids, whole=False)], gaps, SYMBOLS, SETTLE).values()
    assert seed.last == 90 and not seed.holes


def test_unfinished_detections_below_the_floor_are_left_unknown() -> None:
    ids = [("BTCUSDT", i) for i in range(100, 120)]
    window = tail(ids, whole=False, step_ms=1000)  # 105 is the first id past the settle time
    gaps = [gap(10, 20, "detected"), gap(100, 106, "detected", at=8)]  # floor: 107
    (seed,) = resume_plan([window], gaps, SYMBOLS, SETTLE).values()
    assert seed.unknown == [(10, 20), (100, 106)] and not seed.reopen
    # in a whole partition every detection is judged, also below the lowest id
    (seed,) = resume_plan([tail(ids)], [gap(95, 102, "detected")], SYMBOLS, SETTLE).values()
    assert not seed.unknown and seed.reopen == [Reopen(95, 102, "stream", 7, ((95, 99),))]


def test_a_detection_younger_than_the_window_is_judged_below_the_floor() -> None:
    # A reconnect gap detected 9 s into the window, half backfilled when the process died: its
    # backfilled records are late fills, the floor (the first live id past the settle time
    # outside every detection) lies above it, yet none of its ids can predate the window.
    ids = [("BTCUSDT", i) for i in (1, 2, 3, 4, 5, 20, 21, 22, 23, 24, 25, 6, 7)]
    window = tail(ids, whole=False, step_ms=1000)
    gaps = [gap(6, 19, "detected", at=9_000_000, cause="reconnect")]
    (seed,) = resume_plan([window], gaps, SYMBOLS, SETTLE).values()
    assert seed.reopen == [Reopen(6, 19, "reconnect", 9_000_000, ((8, 19),))]
    assert not seed.unknown and not seed.holes and seed.last == 25
    # detected before the window's start + the settle time: left unknown
    gaps = [gap(6, 19, "detected", at=4_000_000)]
    (seed,) = resume_plan([window], gaps, SYMBOLS, SETTLE).values()
    assert seed.unknown == [(6, 19)] and not seed.reopen


@given(
    st.lists(st.integers(0, 200), min_size=1, max_size=120),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 5)), max_size=6),
)
def test_every_id_between_floor_and_last_is_published_reported_or_reopened(
    published: list[int], lost: list[tuple[int, int]]
) -> None:
    """In a whole partition, each id from the lowest published up to the resume point is in
    exactly one of: the topic, an unrecoverable range, a restart hole, a reopened range."""
    records = [("BTCUSDT", i) for i in published]
    gaps = [gap(a, a + n, "unrecoverable") for a, n in lost]
    (seed,) = resume_plan([tail(records)], gaps, SYMBOLS, SETTLE).values()
    unrecoverable = {i for a, n in lost for i in range(a, a + n + 1)}
    holes = [i for lo, hi in seed.holes for i in range(lo, hi + 1)]
    assert len(holes) == len(set(holes))
    for i in range(min(published), seed.last + 1):
        where = [i in published, i in holes, i in unrecoverable and i not in published]
        assert sum(where) >= 1, i
        assert not (i in holes and (i in published or i in unrecoverable)), i


def test_a_seeded_tracker_turns_the_downtime_into_a_reconnect_gap() -> None:
    tracker = SymbolTracker("BTCUSDT", grace_s=0.0)
    tracker.last, tracker.after_reconnect = 100, True
    assert not tracker.observe(100, now=0.0), "already published: a duplicate"
    assert tracker.observe(151, now=0.0)
    (gap,) = tracker.due(now=1.0, now_us=1)
    assert (gap.first, gap.last, gap.cause) == (101, 150, "reconnect")


def test_undecodable_gap_records_are_reported_and_depth_breaks_skipped() -> None:
    good = gap(3, 5, "detected")
    depth_break = DepthBreakRecord("BTCUSDT", "depth_gap", 10, 12, "a diff was missed", 7, 8)
    tails = {
        0: _Tail(True, True, [(good.encode(), 1), (b"not json", 2)]),
        1: _Tail(True, True, [(depth_break.encode(), 3), (None, 4)]),
    }
    records, bad = gap_records(tails)
    assert records == [good]
    assert len(bad) == 2
    assert bad[0].startswith("partition 0, timestamp 2: ")
    assert bad[1].startswith("partition 1, timestamp 4: ")
