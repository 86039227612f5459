"""The depth shell's bookkeeping with a stand-in producer (no sockets, no Kafka): a record the
producer refuses or Kafka does not take breaks the chain on the topic, so it is a recorded break
and a resync, and nothing after it is published before the new snapshot; bad frames go to the
DLQ with the reason."""

from __future__ import annotations

from typing import Any

import orjson

from cryptostream.config import Settings
from cryptostream.core.depth import SnapshotRecord, TopicBook, decode_depth
from cryptostream.core.orderbook import DepthSnapshot
from cryptostream.ingest.depth import FetchSnapshot
from cryptostream.ingest.depthservice import DepthIngest
from cryptostream.ingest.gaps import decode_depth_break
from tests.unit.test_ingest_flow import FakeConnection, FakeMessage, FakeProducer


def depth_frame(first: int, final: int, bid: str = "10") -> bytes:
    data = {
        "e": "depthUpdate",
        "E": 1,
        "s": "BTCUSDT",
        "U": first,
        "u": final,
        "b": [[bid, "1"]],
        "a": [["20", "1"]],
    }
    return orjson.dumps({"stream": "btcusdt@depth@100ms", "data": data})


class RefusingProducer(FakeProducer):
    """Has room for ``room`` more depth records, then raises BufferError like librdkafka."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None
    ) -> None:
        if topic.startswith("raw.depth"):
            if self.room <= 0:
                raise BufferError("queue full")
            self.room -= 1
        super().produce(topic, value, key, on_delivery)


def make(producer: FakeProducer) -> DepthIngest:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", depth_symbols=["BTCUSDT"])
    depth = DepthIngest(settings, ["BTCUSDT"], "http://127.0.0.1:1")
    depth.producer = producer  # type: ignore[assignment]
    return depth


def on(depth: DepthIngest, topic: str, fake: FakeProducer) -> list[FakeMessage]:
    return [m for m, _ in fake.pending if m.topic() == topic] + [
        m for m in fake.delivered if m.topic() == topic
    ]


def answer_fetch(depth: DepthIngest, last_id: int) -> None:
    """What the snapshot worker does with a REST answer (the HTTP part is the integration test's)."""
    want = depth.fetches.get_nowait()
    assert want == FetchSnapshot("BTCUSDT")
    depth._act(
        depth.engine.on_snapshot(
            "BTCUSDT", DepthSnapshot(last_id, (("10", "1"),), (("20", "1"),)), 7
        )
    )


async def test_a_record_kafka_did_not_take_is_a_break_and_a_resync() -> None:
    fake = FakeProducer()
    depth = make(fake)
    conn = FakeConnection()
    depth.on_frames([depth_frame(1, 3), depth_frame(4, 5)], 1, conn)  # type: ignore[arg-type]
    answer_fetch(depth, 3)
    assert depth.stats.snapshots == 1 and depth.stats.diffs_published == 1
    fake.deliver(1)  # the snapshot
    fake.deliver(error="timed out")  # the diff 4..5 never reached the topic
    (brk,) = [decode_depth_break(m.value()) for m in on(depth, depth.settings.gap_topic, fake)]
    assert (brk.cause, brk.expected_id, brk.got_id) == ("depth_produce", 6, None)
    assert depth.stats.breaks == {"depth_produce": 1} and depth.stats.delivery_failed == 1
    depth.on_frames([depth_frame(6, 6), depth_frame(7, 8)], 2, conn)  # type: ignore[arg-type]
    assert depth.stats.diffs_published == 1  # nothing until the new snapshot
    answer_fetch(depth, 6)
    book = TopicBook()
    outcomes = [
        book.apply(decode_depth(m.value()))
        for m in fake.delivered + [m for m, _ in fake.pending]
        if m.topic() == depth.topic
    ]
    # what reached the topic: snapshot 3; (4..5 lost); snapshot 6, then 7..8 continues it
    assert outcomes == ["snapshot", "snapshot", "applied"] and book.book.last_update_id == 8


async def test_no_room_in_the_producer_breaks_and_stops_that_batch() -> None:
    fake = RefusingProducer(room=2)  # the snapshot and one diff
    depth = make(fake)
    conn = FakeConnection()
    frames = [depth_frame(1, 3), depth_frame(4, 5), depth_frame(6, 7), depth_frame(8, 9)]
    depth.on_frames(frames, 1, conn)  # type: ignore[arg-type]
    answer_fetch(depth, 3)
    values = [m.value() for m in on(depth, depth.topic, fake)]
    assert len(values) == 2 and isinstance(decode_depth(values[0]), SnapshotRecord)
    (brk,) = [decode_depth_break(m.value()) for m in on(depth, depth.settings.gap_topic, fake)]
    assert brk.cause == "depth_produce" and "no room" in brk.reason
    assert depth.stats.errors["buffer_full"] == 1 and depth.stats.diffs_published == 1
    assert not depth.engine.books["BTCUSDT"].live


async def test_a_malformed_depth_frame_goes_to_the_dlq_with_its_reason() -> None:
    fake = FakeProducer()
    depth = make(fake)
    conn = FakeConnection()
    bad = depth_frame(1, 2, bid="-1")
    depth.on_frames([bad, b"not json", b'{"e":"serverShutdown","E":1}'], 1, conn)  # type: ignore[arg-type]
    dead = [orjson.loads(m.value()) for m in on(depth, depth.settings.dlq_topic, fake)]
    assert [d["stage"] for d in dead] == ["ingest", "ingest"] and depth.stats.malformed == 2
    assert "invalid depthUpdate: bids price" in dead[0]["reason"] and dead[0]["source"] == conn.url
    assert dead[0]["raw"] == bad.decode() and "not JSON" in dead[1]["reason"]
    assert conn.shutdown_notice and depth.fetches.empty()
