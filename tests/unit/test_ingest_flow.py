"""Ingest's flow control and gap bookkeeping with a stand-in producer (no sockets, no Kafka)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from cryptostream.config import Settings
from cryptostream.ingest.gaps import decode_gap
from cryptostream.ingest.resume import Reopen, Seed
from cryptostream.ingest.service import Ingest


class FakeMessage:
    def __init__(self, topic: str, value: bytes, key: bytes | None) -> None:
        self._topic, self._value, self._key = topic, value, key

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic


class FakeProducer:
    """Queues what is produced; ``deliver`` acknowledges (or fails) the oldest ``n``; ``len()``
    is what is still queued. ``on_delivery``: the producer-level callback (config
    ``on_delivery``) for records produced without one; ``only_errors``: like librdkafka with
    ``delivery.report.only.error``, only failures call back."""

    def __init__(
        self, on_delivery: Callable[[Any, Any], None] | None = None, only_errors: bool = False
    ) -> None:
        self.on_delivery = on_delivery
        self.only_errors = only_errors
        self.pending: list[tuple[FakeMessage, Callable[[Any, Any], None]]] = []
        self.delivered: list[FakeMessage] = []

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        callback = on_delivery or self.on_delivery
        assert callback is not None
        self.pending.append((FakeMessage(topic, value, key), callback))

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.pending)

    def deliver(self, n: int | None = None, error: object = None) -> None:
        batch, self.pending = self.pending[:n], self.pending[len(self.pending[:n]) :]
        for msg, callback in batch:
            if error is None:
                self.delivered.append(msg)
            if error is not None or not self.only_errors:
                callback(error, msg)


class FakeConnection:
    url = "ws://test"
    ids = iter(range(1, 1000))

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def frame(symbol: str, tid: int) -> bytes:
    return orjson.dumps(
        {
            "stream": f"{symbol.lower()}@trade",
            "data": {
                "e": "trade",
                "E": 1,
                "s": symbol,
                "t": tid,
                "p": "1.5",
                "q": "2",
                "T": 1,
                "m": True,
            },
        }
    )


def make(**overrides: Any) -> tuple[Ingest, FakeProducer]:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", ingest_gap_grace_s=0, **overrides)
    ingest = Ingest(settings, ["BTCUSDT"], "http://127.0.0.1:1")
    fake = FakeProducer(ingest.publisher.on_delivery, only_errors=True)
    ingest.producer = fake  # type: ignore[assignment]
    return ingest, fake


def gap_records(fake: FakeProducer, ingest: Ingest) -> list[tuple[int, int, str, str]]:
    msgs = [m for m, _ in fake.pending] + fake.delivered
    return [
        (g.first_id, g.last_id, g.status, g.cause)
        for g in (decode_gap(m.value()) for m in msgs if m.topic() == ingest.settings.gap_topic)
    ]


async def test_full_buffer_pauses_then_overflow_becomes_gaps_and_recovers() -> None:
    ingest, fake = make(ingest_buffer_max=100, ingest_buffer_timeout_s=0)
    conn = FakeConnection()
    ingest.on_frames([frame("BTCUSDT", i) for i in range(1, 121)], 1, conn)  # type: ignore[arg-type]
    assert conn.paused and ingest.in_flight == 120  # the read that crossed the bound is kept
    ingest.connections[conn.id] = conn  # type: ignore[assignment]
    ingest.flow_step()  # still full after the timeout: overflow mode
    assert ingest.dropping and not conn.paused
    ingest.on_frames([frame("BTCUSDT", i) for i in range(121, 151)], 2, conn)  # type: ignore[arg-type]
    assert ingest.stats.buffer_dropped == 30 and ingest.in_flight == 120
    ingest.gap_step()
    assert gap_records(fake, ingest) == [(121, 150, "detected", "buffer_overflow")]
    assert ingest.backfill_queue.qsize() == 1
    fake.deliver(100)
    ingest.flow_step()  # drained below half the bound: publishing again
    assert not ingest.dropping and ingest.has_room.is_set()
    ingest.on_frames([frame("BTCUSDT", 151)], 3, conn)  # type: ignore[arg-type]
    assert ingest.stats.produced == 121
    gap = ingest.backfill_queue.get_nowait()
    for tid in range(121, 141):  # as if backfilled
        assert gap.fill(tid)
    ingest.finish_gap(gap)
    assert gap_records(fake, ingest)[1:] == [
        (121, 140, "backfilled", "buffer_overflow"),
        (141, 150, "unrecoverable", "buffer_overflow"),
    ]
    assert ingest.stats.gap_trades == {"detected": 30, "backfilled": 20, "unrecoverable": 10}


async def test_delivery_failures_become_gaps_and_duplicates_are_dropped() -> None:
    ingest, fake = make()
    conn = FakeConnection()
    frames = [frame("BTCUSDT", i) for i in (1, 2, 3, 2, 4, 5)]
    ingest.on_frames(frames, 1, conn)  # type: ignore[arg-type]
    assert ingest.stats.duplicates == 1 and ingest.stats.produced == 5
    fake.deliver(2)
    fake.deliver(error="timed out")
    ingest.flow_step()
    assert ingest.stats.acked == 2 and ingest.stats.delivery_failed == 3
    assert ingest.stats.latency.count == 2
    ingest.gap_step()
    assert gap_records(fake, ingest) == [(3, 5, "detected", "buffer_overflow")]


async def test_acks_are_counted_from_the_queue_and_never_run_ahead() -> None:
    """Only failures are reported: acknowledged = produced - failed - still queued; a DLQ record
    in the queue makes the count lag, never go beyond what Kafka took, nor back."""
    ingest, fake = make()
    conn = FakeConnection()
    ingest.on_frames([frame("BTCUSDT", i) for i in (1, 2, 3)], 1, conn)  # type: ignore[arg-type]
    ingest.on_frames([b"{bad", frame("BTCUSDT", 4), frame("BTCUSDT", 5)], 2, conn)  # type: ignore[arg-type]
    assert [m.topic() for m, _ in fake.pending].count(ingest.settings.dlq_topic) == 1
    seen = []
    for n in (2, 2, 1, 1):  # the oldest first; the DLQ record was queued last
        fake.deliver(n)
        ingest.publisher.poll()
        seen.append((ingest.stats.acked, ingest.stats.latency.count))
    # (acked, latency samples): one behind while the DLQ record is queued; a read's latency once
    # all trades produced up to it have left the queue
    assert seen == [(1, 0), (3, 3), (4, 3), (5, 5)]
    assert ingest.in_flight == 0


async def test_stream_gap_and_malformed_frame() -> None:
    ingest, fake = make()
    conn = FakeConnection()
    ingest.on_frames([frame("BTCUSDT", 1), b"{bad", frame("BTCUSDT", 5)], 1, conn)  # type: ignore[arg-type]
    again = FakeConnection()  # a new connection after a reconnect
    ingest.engine.connected(again.id, again.url, ["BTCUSDT"])
    ingest.on_frames([frame("BTCUSDT", 9)], 2, again)  # type: ignore[arg-type]
    ingest.gap_step()
    assert gap_records(fake, ingest) == [
        (2, 4, "detected", "stream"),
        (6, 8, "detected", "reconnect"),
    ]
    dead = [
        orjson.loads(m.value()) for m, _ in fake.pending if m.topic() == ingest.settings.dlq_topic
    ]
    assert dead[0]["raw"] == "{bad" and "not JSON" in dead[0]["reason"]
    ingest.shutdown_gaps()  # at exit, every detected gap gets its final record
    assert [r[2] for r in gap_records(fake, ingest)][2:] == ["unrecoverable", "unrecoverable"]


async def test_a_resume_plan_reopens_holes_and_continues_unfinished_detections() -> None:
    ingest, fake = make()
    reopen = Reopen(60, 70, "reconnect", 123, ((61, 62),))
    ingest.resume_from({"BTCUSDT": Seed(70, holes=[(40, 41)], reopen=[reopen])})
    continued = ingest.backfill_queue.get_nowait()  # queued at once, no new detected record
    assert (continued.first, continued.last, continued.missing) == (60, 70, [[61, 62]])
    ingest.gap_step()  # the grace (0 here) is over: the hole is a detected restart gap
    assert gap_records(fake, ingest) == [(40, 41, "detected", "restart")]
    conn = FakeConnection()
    ingest.on_frames([frame("BTCUSDT", 70), frame("BTCUSDT", 75)], 1, conn)  # type: ignore[arg-type]
    assert ingest.stats.duplicates == 1  # 70 was published before the restart
    assert continued.fill(61)
    ingest.finish_gap(continued)
    records = [
        decode_gap(m.value()) for m, _ in fake.pending if m.topic() == ingest.settings.gap_topic
    ]
    finals = [
        (g.first_id, g.last_id, g.status, g.detected_at_us)
        for g in records
        if g.cause == "reconnect" and g.status != "detected"
    ]
    assert finals == [
        (60, 61, "backfilled", 123),
        (62, 62, "unrecoverable", 123),
        (63, 70, "backfilled", 123),
    ]


async def test_a_gap_evicted_while_queued_for_backfill_is_closed_once() -> None:
    ingest, fake = make()
    tracker = ingest.trackers["BTCUSDT"]
    tracker.max_open = 1
    conn = FakeConnection()
    ingest.on_frames([frame("BTCUSDT", i) for i in (1, 3)], 1, conn)  # type: ignore[arg-type]
    ingest.gap_step()
    queued = ingest.backfill_queue.get_nowait()
    ingest.on_frames([frame("BTCUSDT", 5)], 2, conn)  # type: ignore[arg-type]
    ingest.gap_step()  # the second gap evicts the first, which is closed as unrecoverable
    ingest.finish_gap(queued)  # the backfill worker reaching it later writes nothing more
    statuses = [(a, b, s) for a, b, s, _ in gap_records(fake, ingest) if a == 2]
    assert statuses == [(2, 2, "detected"), (2, 2, "unrecoverable")]
