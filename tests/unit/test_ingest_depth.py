"""Ingest's depth engine (ingest/depth.py), pure inputs -> actions: Binance's procedure, the
topic contract of core/depth.py (a TopicBook fed what is published never breaks and ends with
the right book), breaks recorded on the gap topic; and the genuine recordings of ../shared/data."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from cryptostream.binance.depth import (
    parse_depth_frame,
    parse_depth_snapshot,
    snapshot_request,
    snapshot_weight,
    stream_kind,
)
from cryptostream.binance.frames import ControlReply, Ignored, Malformed
from cryptostream.config import Settings
from cryptostream.core.depth import TopicBook, decode_depth, encode_diff, encode_snapshot
from cryptostream.core.orderbook import Book, DepthDiff, DepthSnapshot
from cryptostream.ingest.depth import (
    DepthAction,
    DepthEngine,
    FetchSnapshot,
    PublishDiff,
    PublishSnapshot,
    RecordBreak,
    SymbolDepth,
    WeightBudget,
    depth_symbols,
)
from cryptostream.ingest.gaps import (
    DepthBreakRecord,
    GapRecord,
    NotATradeGap,
    decode_depth_break,
    decode_gap,
)
from cryptostream.topics import required_topics
from cryptostream_lab.reliability.gaps import summarize
from tests.shared_data import SHARED_DATA as SHARED

RECORDINGS = ["hftbacktest_spot_btcusdt_20240808.gz", "hftbacktest_spot_ethusdt_20240808.gz"]


def diff(
    first: int,
    final: int,
    bids: tuple[tuple[str, str], ...] = (),
    asks: tuple[tuple[str, str], ...] = (),
) -> DepthDiff:
    return DepthDiff("BTCUSDT", first, final, bids, asks, 1_718_000_000_000)


def snap(
    last: int,
    bids: tuple[tuple[str, str], ...] = (("10", "1"),),
    asks: tuple[tuple[str, str], ...] = (("20", "1"),),
) -> DepthSnapshot:
    return DepthSnapshot(last, bids, asks)


class Topic:
    """What a consumer of raw.depth sees: the published records, encoded and decoded as on
    the wire, applied to a TopicBook; plus the break records of the gap topic."""

    def __init__(self) -> None:
        self.book = TopicBook()
        self.outcomes: list[str] = []
        self.breaks: list[RecordBreak] = []
        self.fetches: list[FetchSnapshot] = []

    def feed(self, actions: list[DepthAction]) -> list[DepthAction]:
        for action in actions:
            if isinstance(action, PublishSnapshot):
                value = encode_snapshot(action.symbol, action.snapshot, action.recv_us)
                self.outcomes.append(self.book.apply(decode_depth(value)))
            elif isinstance(action, PublishDiff):
                value = encode_diff(action.diff, action.recv_us)
                self.outcomes.append(self.book.apply(decode_depth(value)))
            elif isinstance(action, RecordBreak):
                self.breaks.append(action)
            else:
                self.fetches.append(action)
        return actions

    @property
    def clean(self) -> bool:
        """Every published record did what the contract says: never a break, never stale."""
        return all(o in ("snapshot", "applied") for o in self.outcomes)


def test_the_procedure_buffer_snapshot_refetch_drop_then_chain() -> None:
    sync, topic = SymbolDepth("BTCUSDT"), Topic()
    (fetch,) = topic.feed(sync.on_diff(diff(95, 99, (("10", "2"),)), 1))  # first diff: fetch
    assert fetch == FetchSnapshot("BTCUSDT") and sync.fetching
    assert sync.on_diff(diff(100, 104, (("10.5", "2"),), (("11", "3"),)), 2) == []  # buffered
    assert sync.on_diff(diff(100, 104), 2) == [] and sync.stale == 1  # a duplicate
    assert sync.on_diff(diff(105, 105, (("10", "0.000"),)), 3) == []
    # older than the first buffered diff (95): refused, fetched again
    assert topic.feed(sync.on_snapshot(snap(90), 4)) == [FetchSnapshot("BTCUSDT", refetch=True)]
    assert topic.outcomes == [] and sync.refetches == 1
    actions = topic.feed(sync.on_snapshot(snap(101, (("10", "5"), ("9", "1")), (("12", "1"),)), 5))
    # the snapshot first; 95..99 is in it (dropped, stale); 100..104 spans 102; then 105
    assert [type(a) for a in actions] == [PublishSnapshot, PublishDiff, PublishDiff]
    assert [a.diff.first_id for a in actions if isinstance(a, PublishDiff)] == [100, 105]
    assert actions[0].recv_us == 5 and actions[1].recv_us == 2  # type: ignore[union-attr]
    assert topic.feed(sync.on_diff(diff(106, 107, asks=(("11", "0"),)), 6))
    assert sync.book.best() == (("10.5", "2"), ("12", "1"))
    assert topic.clean and topic.book.book == sync.book and topic.book.synced
    assert sync.on_diff(diff(100, 107), 7) == []  # old news is never published


def test_the_first_diff_after_a_snapshot_that_overtook_the_buffer_may_straddle_it() -> None:
    """The snapshot is newer than every buffered diff: nothing of the buffer is published, and
    the first live diff obeys U <= lastUpdateId + 1 <= u (not U == lastUpdateId + 1)."""
    sync, topic = SymbolDepth("BTCUSDT"), Topic()
    topic.feed(sync.on_diff(diff(100, 104), 1))
    assert [type(a) for a in topic.feed(sync.on_snapshot(snap(110), 2))] == [PublishSnapshot]
    assert topic.feed(sync.on_diff(diff(108, 112, (("11", "1"),)), 3)) == [
        PublishDiff(diff(108, 112, (("11", "1"),)), 3)
    ]
    assert topic.feed(sync.on_diff(diff(114, 115), 4))[0] == RecordBreak(
        "BTCUSDT", "depth_gap", 113, 114, "update-id gap"
    )
    assert topic.clean and sync.breaks == 1


def test_a_gap_is_recorded_and_resynced_from_a_fresh_snapshot_published_first() -> None:
    sync, topic = SymbolDepth("BTCUSDT"), Topic()
    topic.feed(sync.on_diff(diff(100, 104), 1))
    topic.feed(sync.on_snapshot(snap(102), 2))
    topic.feed(sync.on_diff(diff(105, 106), 3))
    actions = topic.feed(sync.on_diff(diff(109, 110, (("10", "7"),)), 4))  # 107, 108 lost
    assert actions == [
        RecordBreak("BTCUSDT", "depth_gap", 107, 109, "update-id gap"),
        FetchSnapshot("BTCUSDT"),
    ]
    assert not sync.live and sync.buffer == [(diff(109, 110, (("10", "7"),)), 4)]
    assert topic.feed(sync.on_diff(diff(111, 111), 5)) == []  # buffered, nothing published
    assert topic.feed(sync.on_diff(diff(112, 112), 6)) == []
    n = len(topic.outcomes)
    actions = topic.feed(sync.on_snapshot(snap(110, (("10", "7"),)), 7))
    assert [type(a) for a in actions] == [PublishSnapshot, PublishDiff, PublishDiff]
    assert topic.outcomes[n:] == ["snapshot", "applied", "applied"] and topic.clean
    assert topic.book.book == sync.book and sync.book.last_update_id == 112


def test_a_crossed_book_breaks_and_nothing_more_is_published_until_a_snapshot() -> None:
    sync, topic = SymbolDepth("BTCUSDT"), Topic()
    topic.feed(sync.on_diff(diff(1, 5), 1))
    topic.feed(sync.on_snapshot(snap(5), 2))
    (brk,) = topic.feed(sync.on_diff(diff(6, 6, bids=(("25", "1"),)), 3))  # bid above the ask
    assert brk == RecordBreak("BTCUSDT", "depth_crossed", 6, 6, "crossed book")
    assert topic.outcomes == ["snapshot"]  # the crossing diff was not published
    (fetch,) = topic.feed(sync.on_diff(diff(7, 7), 4))  # the next diff asks for a snapshot
    assert fetch == FetchSnapshot("BTCUSDT")
    # a crossed snapshot is not published either: fetched again
    assert sync.on_snapshot(snap(7, (("30", "1"),)), 5) == [FetchSnapshot("BTCUSDT", True)]
    assert sync.bad_snapshots == 1 and topic.outcomes == ["snapshot"]


def test_a_reconnect_breaks_a_live_chain_only() -> None:
    sync, topic = SymbolDepth("BTCUSDT"), Topic()
    assert sync.on_reconnect() == []  # nothing published yet: nothing to break
    topic.feed(sync.on_diff(diff(1, 5), 1))
    assert sync.on_reconnect() == [] and sync.buffer == []
    assert sync.on_snapshot(snap(5), 2) == []  # nothing buffered to check it against
    topic.feed(sync.on_diff(diff(6, 7), 3))
    topic.feed(sync.on_snapshot(snap(6), 4))
    assert topic.feed(sync.on_reconnect()) == [
        RecordBreak("BTCUSDT", "depth_reconnect", 8, None, "the WebSocket connection was lost")
    ]
    assert topic.feed(sync.on_diff(diff(8, 9), 5)) == [FetchSnapshot("BTCUSDT")]
    assert topic.feed(sync.on_lost("no room")) == []  # not live: nothing more to break
    topic.feed(sync.on_snapshot(snap(8), 6))
    assert topic.feed(sync.on_lost("Kafka refused it"))[0].cause == "depth_produce"  # type: ignore[union-attr]
    assert topic.clean and len(topic.breaks) == 2


def test_a_hole_in_the_buffer_discards_what_came_before_it_without_a_break() -> None:
    sync = SymbolDepth("BTCUSDT", max_buffer=3)
    sync.on_diff(diff(1, 2), 1)
    sync.on_diff(diff(3, 4), 2)
    assert sync.on_diff(diff(9, 9), 3) == [] and sync.buffer_discarded == 2
    for i in range(10, 13):
        sync.on_diff(diff(i, i), i)
    assert [d.first_id for d, _ in sync.buffer] == [10, 11, 12] and sync.buffer_discarded == 3
    assert sync.on_snapshot(snap(8), 20) == [FetchSnapshot("BTCUSDT", True)]  # older than 10
    assert sync.breaks == 0


def test_the_engine_routes_by_symbol_and_counts_strangers() -> None:
    engine = DepthEngine(["BTCUSDT", "ETHUSDT"])
    assert engine.on_diff(DepthDiff("SOLUSDT", 1, 1, (), ()), 1) == []
    assert engine.unknown_symbol == 1
    assert engine.on_diff(diff(1, 1), 1) == [FetchSnapshot("BTCUSDT")]
    assert engine.on_fetch_failed("BTCUSDT") == [] and not engine.books["BTCUSDT"].fetching
    assert engine.on_diff(diff(2, 2), 2) == [FetchSnapshot("BTCUSDT")]  # asks again
    engine.on_snapshot("BTCUSDT", snap(1), 3)
    assert [type(a) for a in engine.on_reconnect(["BTCUSDT", "ETHUSDT", "X"])] == [RecordBreak]


# ----- the genuine recordings ------------------------------------------------------------------


def read_recording(path: Path) -> Iterator[tuple[int, str, bytes]]:
    """(receive time in µs, "diff" | "snapshot" | "other", the line's JSON) of a recording."""
    with gzip.open(path, "rb") as f:
        for line in f:
            ts, _, raw = line.rstrip(b"\n").partition(b" ")
            recv_us = int(ts) // 1000 if len(ts) >= 19 else int(ts)
            if raw.startswith(b'{"lastUpdateId"'):
                yield recv_us, "snapshot", raw
            elif b"@depth" in raw[:40]:
                yield recv_us, "diff", raw
            else:
                yield recv_us, "other", raw


def _shadow(book: dict[str, dict[Decimal, Decimal]], data: dict[str, list[list[str]]]) -> None:
    for side, key in (("bids", "b"), ("asks", "a")):
        for p, q in data[key]:
            if Decimal(q) == 0:
                book[side].pop(Decimal(p), None)
            else:
                book[side][Decimal(p)] = Decimal(q)


def _levels(book: Book) -> dict[str, dict[Decimal, Decimal]]:
    return {
        side: {Decimal(p): Decimal(q) for p, q in levels.values()}
        for side, levels in (("bids", book.bids), ("asks", book.asks))
    }


def replay(
    path: Path, skip: frozenset[int] = frozenset(), resnap_at: int | None = None
) -> tuple[Topic, DepthEngine, dict[str, dict[Decimal, Decimal]], int]:
    """Feed a recording's frames through parse_depth_frame and the engine, answering its
    FetchSnapshot with the recording's own snapshot line when it comes. ``skip``: indexes of
    diffs lost on the way. ``resnap_at``: the diff index after which an outstanding fetch is
    answered with the exchange's book as the recording shows it then (the independent
    reconstruction). Returns the topic, the engine, that reconstruction, and its update id."""
    engine, topic = None, Topic()
    shadow: dict[str, dict[Decimal, Decimal]] | None = None
    shadow_id, early, n, symbol = -1, [], 0, ""
    for recv_us, kind, raw in read_recording(path):
        if kind == "snapshot":
            doc = orjson.loads(raw)
            shadow = {
                side: {Decimal(p): Decimal(q) for p, q in doc[side]} for side in ("bids", "asks")
            }
            shadow_id = doc["lastUpdateId"]
            for data in early:
                if data["u"] > shadow_id:
                    _shadow(shadow, data)
                    shadow_id = data["u"]
            assert engine is not None and topic.fetches
            topic.feed(engine.on_snapshot(symbol, parse_depth_snapshot(doc), recv_us))
        elif kind == "diff":
            outcome = parse_depth_frame(raw)
            assert isinstance(outcome, DepthDiff), outcome
            symbol = outcome.symbol
            engine = engine or DepthEngine([symbol])
            data = orjson.loads(raw)["data"]
            if shadow is None:
                early.append(data)
            elif data["u"] > shadow_id:
                _shadow(shadow, data)
                shadow_id = data["u"]
            if n not in skip:
                before = len(topic.fetches)
                topic.feed(engine.on_diff(outcome, recv_us))
                if resnap_at is not None and n >= resnap_at and len(topic.fetches) > before:
                    assert shadow is not None
                    state = DepthSnapshot(
                        shadow_id,
                        tuple((f"{p:f}", f"{q:f}") for p, q in sorted(shadow["bids"].items())),
                        tuple((f"{p:f}", f"{q:f}") for p, q in sorted(shadow["asks"].items())),
                    )
                    topic.feed(engine.on_snapshot(symbol, state, recv_us))
            n += 1
    assert engine is not None and shadow is not None
    return topic, engine, shadow, shadow_id


def _recordings() -> list[Path]:
    return [SHARED / name for name in RECORDINGS if (SHARED / name).exists()]


@pytest.mark.parametrize("path", _recordings(), ids=lambda p: p.name)
def test_a_genuine_recording_publishes_records_that_rebuild_its_final_book(path: Path) -> None:
    topic, engine, shadow, shadow_id = replay(path)
    (sync,) = engine.books.values()
    assert topic.breaks == [] and len(topic.fetches) == 1  # one snapshot, never refetched
    assert topic.outcomes[0] == "snapshot" and topic.outcomes.count("snapshot") == 1
    assert topic.clean and topic.outcomes.count("applied") > 3000
    assert topic.book.synced and topic.book.book.last_update_id == shadow_id
    assert _levels(topic.book.book) == shadow  # independent Decimal reconstruction
    assert topic.book.book == sync.book and not sync.book.crossed()


@pytest.mark.parametrize("path", _recordings(), ids=lambda p: p.name)
def test_a_lost_diff_in_a_genuine_recording_is_a_recorded_break_then_a_resync(path: Path) -> None:
    """Drop the 1000th diff: the break is recorded with the ids, nothing of the broken chain is
    published, and after a fresh snapshot (the exchange's book at that moment, reconstructed
    independently) the topic again rebuilds the exact final book."""
    topic, _engine, shadow, shadow_id = replay(path, skip=frozenset({1000}), resnap_at=1001)
    (brk,) = topic.breaks
    assert brk.cause == "depth_gap" and brk.got_id is not None and brk.got_id > brk.expected_id
    assert topic.outcomes.count("snapshot") == 2 and topic.clean
    assert _levels(topic.book.book) == shadow and topic.book.book.last_update_id == shadow_id


def test_a_recording_without_a_snapshot_publishes_nothing() -> None:
    path = SHARED / "hftbacktest_spot_btcusdt_20230405.dat.gz"
    if not path.exists():
        pytest.skip("recording not present")
    engine, topic = DepthEngine(["BTCUSDT"]), Topic()
    for recv_us, kind, raw in read_recording(path):
        if kind == "diff":
            outcome = parse_depth_frame(raw)
            assert isinstance(outcome, DepthDiff)
            topic.feed(engine.on_diff(outcome, recv_us))
    assert topic.outcomes == [] and topic.breaks == [] and len(topic.fetches) == 1
    assert len(engine.books["BTCUSDT"].buffer) > 3000  # all waiting for a snapshot


# ----- frames, REST weights, settings, the gap topic -------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "not JSON"),
        (
            b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","s":"BTCUSDT","U":5,"u":4,'
            b'"b":[],"a":[]}}',
            "U 5 is after u 4",
        ),
        (
            b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":2,'
            b'"b":[["NaN","1"]],"a":[]}}',
            "price",
        ),
        (b'{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":2,"b":[],"a":"x"}', "list"),
        (b'{"stream":"x","data":[1]}', "not an object"),
        (b'{"stream":"x","data":{"U":1}}', "no event type"),
        (b"[" + b"1," * 40000 + b"1]", "exceeds"),
    ],
)
def test_a_malformed_depth_frame_says_why(raw: bytes, reason: str) -> None:
    outcome = parse_depth_frame(raw)
    assert isinstance(outcome, Malformed) and reason in outcome.reason


def test_depth_frames_control_replies_and_other_events() -> None:
    ok = parse_depth_frame(
        b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":5,'
        b'"s":"btcusdt","U":1,"u":2,"b":[["1.5","0"]],"a":[]}}'
    )
    assert ok == DepthDiff("BTCUSDT", 1, 2, (("1.5", "0"),), (), 5)
    assert parse_depth_frame(b'{"result":null,"id":1}') == ControlReply(1, None)
    assert parse_depth_frame(b'{"e":"serverShutdown","E":1}') == Ignored("serverShutdown")
    assert parse_depth_frame(b'{"e":"trade","s":"BTCUSDT","t":1}') == Ignored("trade")


def test_rest_weights_and_the_budget() -> None:
    assert [snapshot_weight(n) for n in (1, 100, 101, 500, 501, 1000, 1001, 5000)] == [
        5,
        5,
        25,
        25,
        50,
        50,
        250,
        250,
    ]
    budget = WeightBudget(120)
    assert budget.wait_s(50, 0.0) == 0 and budget.wait_s(50, 1.0) == 0
    assert budget.wait_s(50, 2.0) == pytest.approx(58.0)  # the first must expire
    assert budget.wait_s(50, 60.0) == 0 and budget.used(60.5) == 100
    big = WeightBudget(100)
    assert big.wait_s(250, 0.0) == 0  # heavier than the budget: alone in its window
    assert big.wait_s(5, 30.0) == pytest.approx(30.0)


def test_depth_settings_and_the_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    default = Settings()
    assert default.depth_symbols == [] and default.depth_speed == "100ms"
    assert default.depth_snapshot_limit == 1000 and default.depth_topic == "raw.depth"
    monkeypatch.setenv("CSP_DEPTH_SYMBOLS", "ethusdt, ALL,BTCUSDT")
    settings = Settings()
    assert settings.depth_symbols == ["ETHUSDT", "*", "BTCUSDT"]
    assert depth_symbols(settings.depth_symbols, ["BTCUSDT", "SOLUSDT"]) == [
        "ETHUSDT",
        "BTCUSDT",
        "SOLUSDT",
    ]
    assert depth_symbols([], ["BTCUSDT"]) == []
    assert stream_kind("100ms") == "depth@100ms" and stream_kind("1000ms") == "depth"
    assert snapshot_request("BTCUSDT", 500).url("https://api.binance.com/") == (
        "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=500"
    )
    specs = {s.name: s.partitions for s in required_topics(settings)}
    assert specs["raw.depth"] == settings.partitions == 8


def test_a_depth_break_record_is_not_a_trade_gap() -> None:
    record = DepthBreakRecord("BTCUSDT", "depth_gap", 107, 109, "update-id gap", 5, 6)
    value = record.encode()
    assert orjson.loads(value)["status"] == "depth_break" and decode_depth_break(value) == record
    with pytest.raises(NotATradeGap):
        decode_gap(value)
    trade_gap = GapRecord("BTCUSDT", 1, 2, "detected", "stream", 5, 6).encode()
    final = GapRecord("BTCUSDT", 1, 2, "unrecoverable", "stream", 5, 6).encode()
    summary = summarize([value, trade_gap, final])  # the reliability audit's decoder
    assert summary.invalid == 0 and summary.unrecoverable_count == 2 and summary.detected == 2
