"""The L2 book and Binance's local-book procedure, on synthetic cases and on the genuine
BTCUSDT/ETHUSDT spot recordings of ../shared/data (snapshot + diffs + bookTickers)."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest

from cryptostream.binance.depth import parse_depth_diff, parse_depth_snapshot
from cryptostream.core.orderbook import (
    Applied,
    BookSync,
    ChainBreak,
    DepthDiff,
    DepthError,
    DepthSnapshot,
    Synced,
)
from tests.shared_data import recordings


def diff(first: int, final: int, bids: list[tuple[str, str]] = (), asks=()) -> DepthDiff:  # type: ignore[assignment]
    return DepthDiff("BTCUSDT", first, final, tuple(bids), tuple(asks))


def test_the_documented_procedure_buffer_snapshot_drop_then_chain() -> None:
    sync = BookSync("BTCUSDT")
    assert sync.wants_snapshot
    assert sync.on_diff(diff(95, 99, [("10.0", "1")])) == []  # buffered
    assert sync.on_diff(diff(100, 104, [("10.5", "2")], [("11", "3")])) == []
    assert sync.on_diff(diff(105, 105, [("10.0", "0.000")])) == []
    snapshot = DepthSnapshot(101, (("10.0", "5"), ("9", "1")), (("12", "1"),))
    events = sync.on_snapshot(snapshot)
    # 95..99 is older than the snapshot and dropped; 100..104 spans 102: applied; then 105
    assert events[0] == Synced(101, 2, 1) and [type(e) for e in events[1:]] == [Applied, Applied]
    bids, asks = sync.book.top(5)
    assert bids == [("10.5", "2"), ("9", "1")] and asks == [("11", "3"), ("12", "1")]
    assert sync.on_diff(diff(106, 107, asks=[("11", "0")])) == [
        Applied(diff(106, 107, asks=[("11", "0")]))
    ]
    assert sync.book.best() == (("10.5", "2"), ("12", "1"))
    assert sync.on_diff(diff(100, 107)) == []  # old news
    (brk,) = sync.on_diff(diff(109, 110))  # 108 lost
    assert brk == ChainBreak("BTCUSDT", 108, 109, "update-id gap") and sync.wants_snapshot


def test_a_snapshot_older_than_the_buffer_is_refused_and_a_crossed_book_breaks() -> None:
    sync = BookSync("BTCUSDT")
    sync.on_diff(diff(200, 210))
    assert sync.on_snapshot(DepthSnapshot(150, (), ())) == [] and sync.wants_snapshot
    assert isinstance(sync.on_snapshot(DepthSnapshot(205, (("1", "1"),), (("2", "1"),)))[0], Synced)
    (brk,) = sync.on_diff(diff(211, 211, bids=[("3", "1")]))  # bid above the ask
    assert isinstance(brk, ChainBreak) and brk.reason == "crossed book" and sync.wants_snapshot


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"e": "depthUpdate", "s": "BTCUSDT", "U": 5, "u": 4, "b": [], "a": []}, "after u"),
        ({"e": "depthUpdate", "s": "BTC-USDT", "U": 1, "u": 1, "b": [], "a": []}, "symbol"),
        ({"e": "depthUpdate", "s": "BTCUSDT", "U": 1, "u": True, "b": [], "a": []}, "u must"),
        (
            {"e": "depthUpdate", "s": "BTCUSDT", "U": 1, "u": 2, "b": [["1e5", "1"]], "a": []},
            "price",
        ),
        (
            {"e": "depthUpdate", "s": "BTCUSDT", "U": 1, "u": 2, "b": [], "a": [["1", "-1"]]},
            "quantity",
        ),
        ({"e": "depthUpdate", "s": "BTCUSDT", "U": 1, "u": 2, "b": "x", "a": []}, "list"),
    ],
)
def test_malformed_depth_says_why(payload: dict[str, object], reason: str) -> None:
    with pytest.raises(DepthError, match=reason):
        parse_depth_diff(payload)


def _shadow_apply(book: dict[str, dict[Decimal, Decimal]], data: dict[str, object]) -> int:
    for side, key in (("bids", "b"), ("asks", "a")):
        for p, q in data[key]:  # type: ignore[attr-defined]
            if Decimal(q) == 0:
                book[side].pop(Decimal(p), None)
            else:
                book[side][Decimal(p)] = Decimal(q)
    return int(data["u"])  # type: ignore[call-overload]


@pytest.mark.parametrize("path", recordings(), ids=lambda p: p.name)
def test_genuine_recordings_rebuild_exactly(path: Path) -> None:
    """Snapshot + diffs of a genuine recording through BookSync: no chain break, and the book
    equals an independent reconstruction (plain Decimal dicts) level by level; wherever a
    bookTicker carries the final update id of a diff, the book's best bid and ask are the
    exchange's own."""
    sync = BookSync("X")
    shadow: dict[str, dict[Decimal, Decimal]] | None = None  # the independent reconstruction
    shadow_id = -1
    best_after: dict[int, tuple[tuple[str, str] | None, tuple[str, str] | None]] = {}
    tickers: list[dict[str, str]] = []
    early: list[dict[str, object]] = []
    breaks = applied = 0
    with gzip.open(path, "rt") as f:
        for line in f:
            frame = json.loads(line.partition(" ")[2])
            if "lastUpdateId" in frame:
                for event in sync.on_snapshot(parse_depth_snapshot(frame)):
                    applied += isinstance(event, Applied)
                    breaks += isinstance(event, ChainBreak)
                shadow = {
                    side: {Decimal(p): Decimal(q) for p, q in frame[side]}
                    for side in ("bids", "asks")
                }
                shadow_id = frame["lastUpdateId"]
                for data in early:  # diffs received before the snapshot that go past it
                    if data["u"] > shadow_id:
                        shadow_id = _shadow_apply(shadow, data)
                continue
            stream, data = frame["stream"], frame["data"]
            if stream.endswith("@bookTicker"):
                tickers.append(data)
            elif "@depth" in stream:
                d = parse_depth_diff(data)
                for event in sync.on_diff(d):
                    applied += isinstance(event, Applied)
                    breaks += isinstance(event, ChainBreak)
                if shadow is None:
                    early.append(data)
                elif d.final_id > shadow_id:
                    shadow_id = _shadow_apply(shadow, data)
                if sync.synced:
                    best_after[sync.book.last_update_id] = sync.book.best()
    assert breaks == 0 and applied > 1000 and sync.synced and shadow is not None
    assert not sync.book.crossed()
    got = {
        side: {Decimal(p): Decimal(q) for p, q in levels.values()}
        for side, levels in (("bids", sync.book.bids), ("asks", sync.book.asks))
    }
    assert got == shadow
    checked = 0
    for t in tickers:
        best = best_after.get(t["u"])
        if best is not None:
            (bid, bid_qty), (ask, ask_qty) = best  # type: ignore[misc]
            assert (Decimal(bid), Decimal(bid_qty), Decimal(ask), Decimal(ask_qty)) == (
                Decimal(t["b"]),
                Decimal(t["B"]),
                Decimal(t["a"]),
                Decimal(t["A"]),
            )
            checked += 1
    assert checked > 0


def test_a_snapshot_newer_than_the_whole_buffer_accepts_the_next_straddling_diff() -> None:
    """Binance's rule for the first diff applied (U <= lastUpdateId + 1 <= u) holds also when it
    arrives after the snapshot: a snapshot newer than every buffered diff leaves none to apply."""
    sync = BookSync("BTCUSDT")
    sync.on_diff(diff(1, 3))
    (synced,) = sync.on_snapshot(DepthSnapshot(5, (("10", "1"),), (("11", "1"),)))
    assert isinstance(synced, Synced) and synced.dropped == 1 and synced.applied == 0
    assert [type(e) for e in sync.on_diff(diff(4, 7, bids=[("10.5", "1")]))] == [Applied]
    assert [type(e) for e in sync.on_diff(diff(9, 9))] == [ChainBreak]  # then strictly U = u + 1
