"""The ``raw.depth`` record codec and the consumer-side chain rule (core/depth.py)."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptostream.core.depth import (
    DepthRecordError,
    DiffRecord,
    SnapshotRecord,
    TopicBook,
    decode_depth,
    encode_diff,
    encode_snapshot,
)
from cryptostream.core.keys import level_key, level_member, parse_level_member
from cryptostream.core.orderbook import DepthDiff, DepthSnapshot


def diff(first: int, final: int, bids=(), asks=()) -> DiffRecord:  # type: ignore[no-untyped-def]
    d = DepthDiff("BTCUSDT", first, final, tuple(bids), tuple(asks), 1_700_000_000_000)
    record = decode_depth(encode_diff(d, 1_700_000_000_000_123))
    assert isinstance(record, DiffRecord) and record.diff == d
    return record


def snapshot(last: int, bids=(("10.0", "1"),), asks=(("11.0", "1"),)) -> SnapshotRecord:  # type: ignore[no-untyped-def]
    s = DepthSnapshot(last, tuple(bids), tuple(asks))
    record = decode_depth(encode_snapshot("btcusdt", s, 5))
    assert isinstance(record, SnapshotRecord) and record.snapshot == s
    assert record.symbol == "BTCUSDT" and record.ingest_time_us == 5
    return record


def test_round_trips_keep_every_digit() -> None:
    r = diff(7, 9, bids=[("66398.85000000", "0.00000001")], asks=[("66399.1", "0")])
    assert r.diff.bids == (("66398.85000000", "0.00000001"),)
    assert r.diff.asks == (("66399.1", "0"),) and r.ingest_time_us == 1_700_000_000_000_123


def test_the_chain_rule_snapshot_first_diff_then_contiguous() -> None:
    book = TopicBook()
    assert book.apply(diff(1, 2)) == "unsynced"
    assert book.apply(snapshot(10)) == "snapshot"
    assert book.apply(diff(5, 10)) == "stale"
    assert book.apply(diff(9, 12, bids=[("10.5", "2")])) == "applied"  # U <= 11 <= u
    assert book.apply(diff(13, 13, bids=[("10.0", "0")])) == "applied"
    assert book.book.top(5) == ([("10.5", "2")], [("11.0", "1")])
    assert book.apply(diff(15, 16)) == "break" and book.breaks == 1
    assert book.apply(diff(17, 17)) == "unsynced"  # no book served until the next snapshot
    assert book.apply(snapshot(20)) == "snapshot"
    assert book.apply(diff(22, 23)) == "break"  # the first diff must cover id + 1


def test_a_crossed_book_is_a_break() -> None:
    book = TopicBook()
    book.apply(snapshot(1))
    assert book.apply(diff(2, 2, bids=[("11.5", "1")])) == "break"
    assert not book.synced


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"v": 2}, "schema version"),
        ({"v": True}, "schema version"),
        ({"v": 1, "symbol": "BTC-USDT"}, "invalid symbol"),
        ({"v": 1, "symbol": "BTCUSDT", "ingest_time_us": -1}, "ingest_time_us"),
        (
            {"v": 1, "symbol": "BTCUSDT", "ingest_time_us": 1, "kind": "x", "bids": [], "asks": []},
            "kind",
        ),
        (
            {
                "v": 1,
                "symbol": "BTCUSDT",
                "ingest_time_us": 1,
                "kind": "diff",
                "bids": [["1", "-1"]],
                "asks": [],
            },
            "quantity",
        ),
        (
            {
                "v": 1,
                "symbol": "BTCUSDT",
                "ingest_time_us": 1,
                "kind": "diff",
                "bids": [],
                "asks": [],
                "first_id": 5,
                "final_id": 4,
                "event_time": 1,
            },
            "after final_id",
        ),
        (
            {
                "v": 1,
                "symbol": "BTCUSDT",
                "ingest_time_us": 1,
                "kind": "snapshot",
                "bids": [["1", "0"]],
                "asks": [],
                "last_update_id": 1,
            },
            "quantity 0",
        ),
        (
            {
                "v": 1,
                "symbol": "BTCUSDT",
                "ingest_time_us": 1,
                "kind": "snapshot",
                "bids": [],
                "asks": [],
                "last_update_id": 2**63,
            },
            "last_update_id",
        ),
    ],
)
def test_malformed_records_say_why(doc: dict[str, object], reason: str) -> None:
    with pytest.raises(DepthRecordError, match=reason):
        decode_depth(orjson.dumps(doc))


def test_not_json_and_no_value() -> None:
    for value in (None, b"{", b"[]"):
        with pytest.raises(DepthRecordError):
            decode_depth(value)


_DECIMALS = st.from_regex(r"\A[0-9]{1,20}(\.[0-9]{1,20})?\Z", fullmatch=True)


@given(st.lists(_DECIMALS, min_size=2, max_size=20))
def test_level_keys_sort_as_the_prices_do(prices: list[str]) -> None:
    assert [Decimal(p) for p in sorted(prices, key=level_key)] == sorted(map(Decimal, prices))
    for p in prices:
        assert parse_level_member(level_member(p, "1.5")) == (p, "1.5")
    assert len({level_key(p) for p in prices}) == len({Decimal(p) for p in prices})
