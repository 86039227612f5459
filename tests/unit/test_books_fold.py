"""The books fold (processor/books.py) against the contract's reference, TopicBook (no server).

The fold's mirrors must equal TopicBook after every batch, and the net changes it hands the
script must turn the batch-start sets into exactly the mirror's (checked on plain Python sets of
members here; on real Redis in tests/integration/test_processor_books_apply.py).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.core.depth import (
    DepthRecordError,
    TopicBook,
    decode_depth,
    encode_diff,
    encode_snapshot,
)
from cryptostream.core.keys import level_key, level_member
from cryptostream.core.orderbook import DepthDiff, DepthSnapshot, Level
from cryptostream.core.trades import MAX_TIME_MS, MAX_TIME_US
from cryptostream.processor.batch import RawRecord
from cryptostream.processor.books import BookBatch, BookMirror, Diff, decode_record

SYMBOLS = ("BTCUSDT", "ETHUSDT")
# One price, several spellings: the book must treat them as one level (level_key).
_PRICES = [(f"{n // 2}.{5 * (n % 2)}", f"{n // 2}.{5 * (n % 2)}0") for n in range(2, 40)]


@st.composite
def levels(draw: Any, low: int, high: int, zero: bool) -> tuple[Level, ...]:
    out = []
    for _ in range(draw(st.integers(0, 6))):
        spellings = _PRICES[draw(st.integers(low, high))]
        price = spellings[draw(st.integers(0, 1))]
        quantities = ["1", "2.5", "0.001", "10.10"] + (["0", "0.000"] if zero else [])
        qty = draw(st.sampled_from(quantities))
        out.append((price, qty))
    return tuple(out)


@st.composite
def depth_values(draw: Any, count: int = 60) -> list[tuple[str, bytes]]:
    """(symbol, raw.depth value) sequences: snapshots, contiguous, stale, gapped and
    overlapping diffs, qty-0 removals, and levels that cross the book."""
    ids = dict.fromkeys(SYMBOLS, 100)
    out = []
    for i in range(draw(st.integers(1, count))):
        symbol = draw(st.sampled_from(SYMBOLS))
        uid = ids[symbol]
        kind = draw(
            st.sampled_from(["snapshot", "next", "next", "next", "next", "overlap", "stale", "gap"])
        )
        if kind == "snapshot":
            uid += draw(st.integers(-3, 20))
            ids[symbol] = max(uid, 0)
            snap = DepthSnapshot(
                ids[symbol], draw(levels(0, 17, False)), draw(levels(18, 37, False))
            )
            out.append((symbol, encode_snapshot(symbol, snap, 1_700_000_000_000_000 + i)))
            continue
        span = draw(st.integers(0, 3))
        if kind == "next":
            first = uid + 1
        elif kind == "overlap":  # spans the id: fits right after a snapshot only
            first = max(0, uid - draw(st.integers(0, 2)))
        elif kind == "stale":
            first = max(0, uid - 5)
            span = min(span, uid - first)
        else:
            first = uid + 2 + draw(st.integers(0, 3))
        final = max(first + span, first)
        ids[symbol] = max(uid, final)
        # bids mostly below asks; the ranges overlap a little, so some diffs cross the book
        diff = DepthDiff(
            symbol,
            first,
            final,
            draw(levels(0, 20, True)),
            draw(levels(16, 37, True)),
            1_700_000_000_000 + i,
        )
        out.append((symbol, encode_diff(diff, 1_700_000_000_000_000 + i)))
    return out


def split(draw: Any, n: int) -> list[int]:
    """Batch boundaries over n records."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=8))))
    return [0, *[c for c in cuts if c < n], n]


def _expected_levels(book: TopicBook, side: str) -> list[Level]:
    levels = book.book.bids if side == "bids" else book.book.asks
    return [levels[p] for p in sorted(levels, reverse=side == "bids")]


def _apply_rows(sets: dict[str, dict[str, set[str]]], batch: BookBatch, args: list[Any]) -> None:
    """The script's level changes, on plain sets of members (what apply_books.lua does with its
    flat ARGV: the partition triples, then per symbol seven counts, the update, the hash
    fields, and the members out and in)."""
    changed = [s for s, ch in batch.changes.items() if ch.changed]
    i = 2 + 3 * int(args[1])
    for symbol in changed:
        replaced, nh, nx, nbr, nar, nba, naa = (int(x) for x in args[i : i + 7])
        i += 8 + nh + nx  # the counts, the update, the hash
        book = sets.setdefault(symbol, {"b": set(), "a": set()})
        if replaced:
            book["b"].clear()
            book["a"].clear()
        for side, n in (("b", nbr), ("a", nar)):
            out = set(args[i : i + n])
            assert len(out) == n and out <= book[side], "removes a member that is not stored"
            book[side] -= out
            i += n
        for side, n in (("b", nba), ("a", naa)):
            pairs = args[i : i + n]
            assert pairs[::2] == ["0"] * (n // 2), "every score is 0"
            book[side].update(pairs[1::2])
            i += n
    assert i == len(args), "every argument belongs to a symbol"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fold_equals_topicbook_and_its_net_changes_rebuild_the_sets(data: Any) -> None:
    values = data.draw(depth_values())
    bounds = split(data.draw, len(values))
    reference: dict[str, TopicBook] = {}
    mirrors: dict[str, BookMirror] = {}
    sets: dict[str, dict[str, set[str]]] = {}
    offset = 0
    for lo, hi in itertools.pairwise(bounds):
        # with the copies, records of a symbol that has one fold as they are added (the
        # processor's way); without, every record waits for fold()
        batch = BookBatch(mirrors) if data.draw(st.booleans()) else BookBatch()
        for _symbol, value in values[lo:hi]:
            batch.add(RawRecord(0, offset, value))
            offset += 1
            record = decode_depth(value)
            reference.setdefault(record.symbol, TopicBook()).apply(record)
        for symbol in batch.records_by_symbol:
            mirrors.setdefault(symbol, BookMirror())
        batch.fold(mirrors)
        _keys, args = batch.script_call("raw.depth", {}, 1, mirrors, 8)
        _apply_rows(sets, batch, args)
        for symbol, changes in batch.changes.items():
            if changes.changed:
                mirrors[symbol].stored = True
        for symbol, want in reference.items():
            got = mirrors[symbol]
            assert got.synced == want.synced
            assert got.last_update_id == want.book.last_update_id
            for side, name in (("bids", "b"), ("asks", "a")):
                expected = _expected_levels(want, side)
                assert got.levels(side) == expected
                assert sets[symbol][name] == {level_member(p, q) for p, q in expected}
            # a copy reloaded from what is stored continues identically
            if data.draw(st.integers(0, 9)) == 0:
                stored = {
                    "last_update_id": str(got.last_update_id),
                    "snapshot_id": str(got.snapshot_id),
                    "status": "synced" if got.synced else "unsynced",
                }
                mirrors[symbol] = BookMirror.from_redis(
                    stored, sorted(sets[symbol]["b"]), sorted(sets[symbol]["a"])
                )


def test_chain_outcomes_and_reasons() -> None:
    snap = DepthSnapshot(10, (("9", "1"),), (("11", "1"),))
    values = [
        encode_diff(DepthDiff("BTCUSDT", 1, 5, (), ()), 1),  # before any snapshot
        encode_snapshot("BTCUSDT", snap, 2),
        encode_diff(DepthDiff("BTCUSDT", 8, 10, (), ()), 3),  # stale
        encode_diff(DepthDiff("BTCUSDT", 9, 12, (("9.5", "2"),), ()), 4),  # spans 11: applied
        encode_diff(DepthDiff("BTCUSDT", 14, 15, (), ()), 5),  # 13 missing: break
        encode_diff(DepthDiff("BTCUSDT", 16, 16, (), ()), 6),  # unsynced until a snapshot
        b"not json",
    ]
    batch = BookBatch()
    for i, value in enumerate(values):
        batch.add(RawRecord(3, 40 + i, value))
    mirrors = {"BTCUSDT": BookMirror()}
    batch.fold(mirrors)
    assert batch.counts == {"unsynced": 2, "snapshot": 1, "stale": 1, "applied": 1, "break": 1}
    assert batch.breaks == [("BTCUSDT", "update-id gap: expected first_id == 13, got 14..15")]
    assert [p.reason.split(":")[0] for p in batch.poison] == ["not JSON"]
    assert batch.parts == {3: [40, 46]}
    book = mirrors["BTCUSDT"]
    assert (book.synced, book.last_update_id, book.levels("bids")) == (
        False,
        12,
        [("9.5", "2"), ("9", "1")],
    )
    state, gone = BookBatch.state(book, batch.changes["BTCUSDT"], 99)
    assert gone == []  # both sides have levels; unsynced keeps its reason
    assert state["status"] == "unsynced" and state["reason"].startswith("update-id gap")
    assert (state["best_bid"], state["best_ask"], state["update_time"]) == ("9.5", "11", "99")


def test_a_crossing_diff_breaks_the_book() -> None:
    batch = BookBatch()
    batch.add(
        RawRecord(
            0, 0, encode_snapshot("ETHUSDT", DepthSnapshot(5, (("9", "1"),), (("11", "1"),)), 1)
        )
    )
    batch.add(RawRecord(0, 1, encode_diff(DepthDiff("ETHUSDT", 6, 6, (("11.0", "3"),), ()), 2)))
    mirrors = {"ETHUSDT": BookMirror()}
    batch.fold(mirrors)
    assert batch.breaks == [("ETHUSDT", "crossed book after update 6")]
    assert not mirrors["ETHUSDT"].synced and mirrors["ETHUSDT"].crossed()


def synthetic_depth(symbols: list[str], count: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """(symbol, value) of realistic streams: per symbol a snapshot, then contiguous diffs of a
    few levels around a fixed mid, and now and then a lost diff (a gap) or a corrupt diff that
    crosses the book, each followed by a few diffs and then a resyncing snapshot, as ingest
    publishes them. ``count`` records in all, symbols interleaved."""
    rng = random.Random(seed)
    state = {
        s: {"id": 1000 + 10 * i, "bids": {}, "asks": {}, "resync": True}
        for i, s in enumerate(symbols)
    }
    out: list[tuple[str, bytes]] = []
    for n in range(count):
        symbol = rng.choice(symbols)
        st_ = state[symbol]
        bids: dict[str, str] = st_["bids"]  # type: ignore[assignment]
        asks: dict[str, str] = st_["asks"]  # type: ignore[assignment]
        ingest = 1_700_000_000_000_000 + n
        if st_["resync"] and rng.random() < 0.5:
            st_["resync"] = False
            snap = DepthSnapshot(int(st_["id"]), tuple(bids.items()), tuple(asks.items()))  # type: ignore[call-overload]
            out.append((symbol, encode_snapshot(symbol, snap, ingest)))
            continue
        first = int(st_["id"]) + 1  # type: ignore[call-overload]
        final = first + rng.randrange(3)
        changes: dict[str, list[Level]] = {"b": [], "a": []}
        for _ in range(rng.randrange(1, 8)):
            side = rng.choice("ba")
            cents = rng.randrange(9000, 9999) if side == "b" else rng.randrange(10001, 11000)
            price = f"{cents // 100}.{cents % 100:02d}"
            qty = "0" if rng.random() < 0.3 else f"{rng.randrange(1, 10**6) / 1000:.3f}"
            changes[side].append((price, qty))
        roll = rng.random()
        if roll < 0.01 and not st_["resync"]:  # a lost diff: its ids never arrive
            first, final = first + 1, final + 1
            st_["resync"] = True
        elif roll < 0.015 and not st_["resync"]:  # corrupt: a bid above every ask
            changes["b"].append(("200.00", "1"))
            st_["resync"] = True
        else:
            for side, book in (("b", bids), ("a", asks)):
                for price, qty in changes[side]:
                    if qty == "0":
                        book.pop(price, None)
                    else:
                        book[price] = qty
        st_["id"] = final
        diff = DepthDiff(
            symbol, first, final, tuple(changes["b"]), tuple(changes["a"]), 1_700_000_000_000 + n
        )
        out.append((symbol, encode_diff(diff, ingest)))
    return out


_ODD = st.sampled_from(
    [
        "1",
        "0",
        "0.0",
        "1.",
        ".5",
        "01.50",
        "1e5",
        "-1",
        "1.2.3",
        "\uff11",
        " 1",
        "1\n2",
        "1\n",
        "0\n0",
        ["1", "1\n2"],
        "1" * 21,
        "1." + "1" * 21,
        "5.00000000",
        "",
        True,
        1,
        None,
        2**63,
        -1,
        2**63 - 1,
        "btcusdt",
        "BTC-USDT",
        [],
        ["1"],
        ["1", "2", "x"],
        MAX_TIME_MS,
        MAX_TIME_MS + 1,
        MAX_TIME_US,
        MAX_TIME_US + 1,
    ]
)


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_the_fast_diff_decoder_accepts_exactly_what_decode_depth_does(data: Any) -> None:
    doc: dict[str, Any] = {
        "v": 1,
        "kind": "diff",
        "exchange": "binance",
        "symbol": "btcUSDT",
        "first_id": 5,
        "final_id": 9,
        "event_time": 1,
        "bids": [["1.5", "2"]],
        "asks": [["2", "0"], ["3.25", "1"]],
        "ingest_time_us": 3,
    }
    for _ in range(data.draw(st.integers(0, 3))):
        name = data.draw(
            st.sampled_from([*doc, "bids.level", "asks.price", "bids.qty", "asks.qty"])
        )
        odd = data.draw(_ODD)
        if name == "bids.level":
            bids = doc.get("bids")
            doc["bids"] = [*(bids if isinstance(bids, list) else []), odd]
        elif name == "asks.price":
            doc["asks"] = [[odd, "1"]]
        elif name == "bids.qty":
            doc["bids"] = [["7", odd]]
        elif name == "asks.qty":
            doc["asks"] = [["8", "1"], ["9", odd], ["10", "2"]]
        elif data.draw(st.booleans()):
            doc[name] = odd
        else:
            doc.pop(name, None)
    value = orjson.dumps(doc)
    try:
        want: Any = decode_depth(value)
    except DepthRecordError as exc:
        want = exc
    try:
        got: Any = decode_record(value)
    except DepthRecordError as exc:
        assert isinstance(want, DepthRecordError) and str(exc) == str(want)
        return
    assert not isinstance(want, DepthRecordError), (doc, want)
    if isinstance(got, tuple):
        got, bid_keys, ask_keys = got
        assert isinstance(got, Diff)
        d = want.diff
        assert bid_keys == [level_key(p) for p, _q in d.bids]
        assert ask_keys == [level_key(p) for p, _q in d.asks]
        assert (got.symbol, got.first_id, got.final_id, got.event_time, got.ingest_time_us) == (
            d.symbol,
            d.first_id,
            d.final_id,
            d.event_time,
            want.ingest_time_us,
        )
        for mine, theirs in ((got.bids, d.bids), (got.asks, d.asks)):
            assert [(lv[0], lv[1]) for lv in mine] == list(theirs)
    else:
        assert got == want
