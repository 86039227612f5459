"""apply_books.lua on real Redis: the fold + script equal TopicBook level by level, and fencing."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptostream.core.depth import TopicBook, decode_depth, encode_diff, encode_snapshot
from cryptostream.core.keys import (
    book_key,
    book_side_key,
    home_partition,
    level_member,
    offsets_key,
)
from cryptostream.core.orderbook import DepthDiff, DepthSnapshot, Level
from cryptostream.processor.batch import RawRecord
from cryptostream.processor.books import BookBatch, BookMirror, parse_book_conflicts
from cryptostream.processor.books_service import BOOKS_SCRIPT, load_mirrors
from cryptostream.redisconn import Client, stored_offsets
from cryptostream_lab.checker import compare_books, expected_books, read_books
from tests.conftest import Env, both_topologies
from tests.unit.test_books_fold import depth_values, split
from tests.unit.test_books_recordings import recorded_values

pytestmark = pytest.mark.integration
TOPIC = "raw.depth"
N = 8  # the layout's partitions
BTC, ETH = home_partition("BTCUSDT", N), home_partition("ETHUSDT", N)


class Applier:
    """What BookProcessor.process does, without Kafka: fold over mirrors, then one fenced apply
    per partition (its hash tag)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.script = client.register_script(BOOKS_SCRIPT)
        self.mirrors: dict[str, BookMirror] = {}
        self.positions: dict[int, int] = {}

    def apply(self, records: list[RawRecord], positions: dict[int, int] | None = None) -> Any:
        batch = BookBatch()
        for record in records:
            batch.add(record)
        missing = [s for s in batch.records_by_symbol if s not in self.mirrors]
        self.mirrors.update(load_mirrors(self.client, missing, N))
        batch.fold(self.mirrors)
        believed = self.positions if positions is None else positions
        replies = [
            self.script(
                *batch.script_call(TOPIC, believed, 1_700_000_000_000, self.mirrors, N, partition)
            )
            for partition in batch.parts
        ]
        refused = [reply for reply in replies if int(reply[0]) == 0]
        if refused:
            self.mirrors.clear()
            return refused[0]
        for symbol, changes in batch.changes.items():
            if changes.changed:
                self.mirrors[symbol].stored = True
        for partition, (_first, last) in batch.parts.items():
            self.positions[partition] = last
        return [1, sum(int(reply[1]) for reply in replies)]


def _stored_levels(client: Client, symbol: str, side: str) -> list[Level]:
    members = client.zrange(book_side_key(symbol, side, N), 0, -1)
    levels = [tuple(m.split(" ")[1:]) for m in members]
    assert all(len(m.split(" ")) == 3 for m in members)
    assert client.zcount(book_side_key(symbol, side, N), 0, 0) == len(members)  # every score 0
    return list(reversed(levels)) if side == "bids" else levels  # type: ignore[arg-type]


def _want_levels(book: TopicBook, side: str) -> list[Level]:
    levels = book.book.bids if side == "bids" else book.book.asks
    return [levels[p] for p in sorted(levels, reverse=side == "bids")]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_lua_apply_equals_topicbook_for_random_sequences(isolated: Env, data: Any) -> None:
    client = isolated.redis
    client.flushall()
    values = data.draw(depth_values(count=80))
    bounds = split(data.draw, len(values))
    applier = Applier(client)
    reference: dict[str, TopicBook] = {}
    offsets = dict.fromkeys(("BTCUSDT", "ETHUSDT"), 0)
    partition_of = {"BTCUSDT": BTC, "ETHUSDT": ETH}
    for lo, hi in itertools.pairwise(bounds):
        records = []
        for symbol, value in values[lo:hi]:
            records.append(RawRecord(partition_of[symbol], offsets[symbol], value))
            offsets[symbol] += 1
            record = decode_depth(value)
            reference.setdefault(record.symbol, TopicBook()).apply(record)
        assert int(applier.apply(records)[0]) == 1
        if data.draw(st.integers(0, 3)) == 0:  # a restarted processor: copies reloaded
            applier.mirrors.clear()
        for symbol, want in reference.items():
            state = client.hgetall(book_key(symbol, N))
            assert state["status"] == ("synced" if want.synced else "unsynced")
            assert int(state["last_update_id"]) == want.book.last_update_id
            for side in ("bids", "asks"):
                expected = _want_levels(want, side)
                assert _stored_levels(client, symbol, side) == expected, side
                name = side[:-1]
                top = expected[0] if expected else (None, None)
                assert (state.get(f"best_{name}"), state.get(f"best_{name}_qty")) == top
    # the checker's comparison agrees (and its reader parses every member)
    report = compare_books(reference, read_books(client, reference), len(values))
    assert report.ok, report.summary()
    stored = stored_offsets(client, TOPIC, range(N), N)
    assert stored == {partition_of[s]: n - 1 for s, n in offsets.items() if n}


@both_topologies
def test_fencing_a_stale_expected_offset_applies_nothing(isolated: Env) -> None:
    client = isolated.redis
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("updates:book")
    pubsub.get_message(timeout=1)
    snap = DepthSnapshot(100, (("10.5", "1"), ("10", "2")), (("11", "3"),))
    first = [
        RawRecord(BTC, 0, encode_snapshot("BTCUSDT", snap, 1_700_000_000_000_001)),
        RawRecord(
            BTC,
            1,
            encode_diff(
                DepthDiff(
                    "BTCUSDT", 101, 102, (("10.5", "0"),), (("11.5", "1"),), 1_700_000_000_005
                ),
                7,
            ),
        ),
    ]
    applier = Applier(client)
    assert applier.apply(first) == [1, 1]
    message = pubsub.get_message(timeout=5)
    assert message is not None
    (update,) = orjson.loads(message["data"])
    assert update == {
        "symbol": "BTCUSDT",
        "last_update_id": 102,
        "status": "synced",
        "reason": None,
        "best_bid": "10",
        "best_bid_qty": "2",
        "best_ask": "11",
        "best_ask_qty": "3",
        "event_time": 1_700_000_000_005,
        "ingest_time_us": 7,
        "update_time": 1_700_000_000_000,
    }
    before = {
        k: client.zrange(k, 0, -1)
        for k in (book_side_key("BTCUSDT", "bids", N), book_side_key("BTCUSDT", "asks", N))
    }
    assert before[book_side_key("BTCUSDT", "bids", N)] == [level_member("10", "2")]
    # The next batch from a member that believes nothing was applied yet (a zombie, a retry
    # after a lost reply): refused whole.
    later = [RawRecord(BTC, 2, encode_diff(DepthDiff("BTCUSDT", 103, 103, (("10", "0"),), ()), 8))]
    zombie = Applier(client)
    reply = zombie.apply(later, positions={})
    assert parse_book_conflicts(reply) == {BTC: 1}
    assert client.hget(book_key("BTCUSDT", N), "last_update_id") == "102"
    assert {k: client.zrange(k, 0, -1) for k in before} == before
    assert client.hget(offsets_key(TOPIC, BTC, N), str(BTC)) == "1"
    assert pubsub.get_message(timeout=0.5) is None
    # the owner goes on
    assert applier.apply(later) == [1, 1]
    assert client.zrange(book_side_key("BTCUSDT", "bids", N), 0, -1) == []
    pubsub.close()


def test_recorded_btcusdt_book_through_the_apply(isolated: Env) -> None:
    """A few thousand genuine diffs in batches of 500 end with the book TopicBook builds."""
    values = recorded_values("btcusdt_20240808", diffs=3000)
    applier = Applier(isolated.redis)
    for lo in range(0, len(values), 500):
        records = [RawRecord(BTC, lo + i, v) for i, v in enumerate(values[lo : lo + 500])]
        assert int(applier.apply(records)[0]) == 1
    expected = expected_books(decode_depth(v) for v in values)
    assert expected["BTCUSDT"].synced and len(expected["BTCUSDT"].book.bids) > 100
    report = compare_books(expected, read_books(isolated.redis, expected), len(values))
    assert report.ok, report.summary()
