"""The trade engine on its own: frames in, actions out — no producer, no socket, no fakes."""

from __future__ import annotations

import base64
import hashlib

import orjson

from cryptostream.core.codec import decode_trade
from cryptostream.core.trades import Trade
from cryptostream.ingest.engine import TradeEngine
from cryptostream.ingest.gaps import decode_gap
from cryptostream.ingest.resume import Reopen, Seed
from cryptostream.ingest.wsproto import (
    GUID,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ClientProtocol,
    FrameParser,
    HandshakeError,
)

GAPS, DLQ = "gaps", "dlq"


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


def engine(**kw: float) -> TradeEngine:
    e = TradeEngine(
        ["BTCUSDT"],
        kind="trade",
        grace_s=0,
        bound=int(kw.get("bound", 100)),
        buffer_timeout_s=kw.get("timeout", 5.0),
        max_frame=1 << 16,
        gap_topic=GAPS,
        dlq_topic=DLQ,
        tail_quiet_s=kw.get("tail", 0.0),
    )
    e.connected(1, "ws://a")
    return e


def gaps(e: TradeEngine) -> list[tuple[int, int, str, str]]:
    out = [decode_gap(c.value) for c in e.outbox if c.topic == GAPS]
    return [(g.first_id, g.last_id, g.status, g.cause) for g in out]


def test_one_batch_for_a_read_in_order_without_duplicates() -> None:
    e = engine()
    batch = e.on_frames([frame("BTCUSDT", i) for i in (1, 2, 3, 2, 4)], 7, 1, 0.0)
    assert [tid for _, _, tid in batch] == [1, 2, 3, 4]
    assert e.stats.duplicates == 1 and e.stats.trades == 4
    value, key, _ = batch[0]
    assert key == b"BTCUSDT" and decode_trade(value).ingest_time_us == 7
    assert e.outbox == []


def test_stream_and_reconnect_gaps_and_a_dead_letter() -> None:
    e = engine()
    e.on_frames([frame("BTCUSDT", 1), b"{bad", frame("BTCUSDT", 5)], 1, 1, 0.0)
    e.connected(2, "ws://b", ["BTCUSDT"])  # a replacement: its first gap is the reconnect's
    e.on_frames([frame("BTCUSDT", 9)], 2, 2, 0.0)
    (dead,) = [orjson.loads(c.value) for c in e.outbox if c.topic == DLQ]
    assert dead["raw"] == "{bad" and dead["source"] == "ws://a"
    tick = e.tick(1.0, 123)
    assert [(g.first, g.last) for g in tick.backfill] == [(2, 4), (6, 8)]
    assert gaps(e) == [(2, 4, "detected", "stream"), (6, 8, "detected", "reconnect")]
    e.outbox.clear()
    e.shutdown(tick.backfill, [], 200)
    assert [s for _, _, s, _ in gaps(e)] == ["unrecoverable", "unrecoverable"]


def test_pause_then_overflow_then_recover() -> None:
    e = engine(bound=10, timeout=1.0)
    batch = e.on_frames([frame("BTCUSDT", i) for i in range(1, 13)], 1, 1, 0.0)
    e.stats.produced += len(batch)  # the publisher produced them all
    assert e.should_pause(1, 0.0) and e.paused == {1}
    assert e.tick(0.5, 1).resume == []  # full, within the timeout: stays paused
    assert e.tick(1.0, 1).resume == [1] and e.dropping and not e.has_room
    batch = e.on_frames([frame("BTCUSDT", i) for i in range(13, 16)], 2, 1, 1.0)
    assert batch == [] and e.stats.buffer_dropped == 3
    assert gaps(e) == []
    e.stats.acked += 12
    backfill = e.tick(2.0, 5).backfill
    assert not e.dropping and e.has_room
    assert [(g.first, g.last, g.cause) for g in backfill] == [(13, 15, "buffer_overflow")]


def test_refused_and_failed_deliveries_are_lost_ranges() -> None:
    e = engine()
    batch = e.on_frames([frame("BTCUSDT", i) for i in range(1, 6)], 1, 1, 0.0)
    e.stats.produced += 3
    e.refused(*batch[3][1:])
    e.refused(*batch[4][1:])
    e.delivery_failed(*batch[2][1:])
    assert e.stats.buffer_dropped == 2 and e.stats.delivery_failed == 1
    e.gap_step(0.0, 1)
    assert gaps(e) == [(4, 5, "detected", "buffer_overflow"), (3, 3, "detected", "buffer_overflow")]


def trade(tid: int) -> Trade:
    return Trade("BTCUSDT", tid, "1.5", "2", 1, 1, True)


def test_backfill_publishes_only_what_is_missing_then_closes() -> None:
    e = engine()
    e.on_frames([frame("BTCUSDT", 1), frame("BTCUSDT", 5)], 1, 1, 0.0)
    (gap,) = e.gap_step(0.0, 1)
    batch = e.backfilled(gap, [trade(t) for t in (2, 3, 3, 6)], 2)
    assert [tid for _, _, tid in batch] == [2, 3] and decode_trade(batch[0][0]).ingest_time_us == 2
    e.lose(*batch[1][1:])  # the producer did not take 3: missing again, reported
    e.outbox.clear()
    e.finish_gap(gap, 3)
    assert gaps(e) == [(2, 3, "backfilled", "stream"), (4, 4, "unrecoverable", "stream")]
    e.outbox.clear()
    e.gap_step(0.0, 4)
    assert gaps(e) == [(3, 3, "detected", "buffer_overflow")]


def test_resume_and_tail_checks() -> None:
    e = engine(tail=10.0)
    again = e.resume_from(
        {
            "BTCUSDT": Seed(
                70, holes=[(40, 41)], reopen=[Reopen(60, 70, "reconnect", 9, ((61, 62),))]
            )
        },
        0.0,
    )
    assert [(g.first, g.missing) for g in again] == [(60, [[61, 62]])]
    assert e.tick(0.0, 1).tail == []  # the quiet period starts
    assert e.tick(20.0, 2).tail == ["BTCUSDT"]
    e.tail_result("BTCUSDT", 80, 20.0)
    backfill = e.tick(21.0, 3).backfill
    assert (71, 80, "tail") in [(g.first, g.last, g.cause) for g in backfill]
    batch = e.on_frames([frame("BTCUSDT", 75)], 1, 1, 21.0)  # late, within a detected gap
    assert len(batch) == 1


def test_server_shutdown_notice_is_per_connection() -> None:
    e = engine()
    e.connected(2, "ws://b")
    e.on_frames([b'{"e":"serverShutdown","E":1}'], 1, 2, 0.0)
    assert e.shutdown_notice(2) and not e.shutdown_notice(1)


def server_frame(opcode: int, payload: bytes) -> bytes:
    return bytes([0x80 | opcode, len(payload)]) + payload


def test_client_protocol_buffers_the_handshake_and_queues_answers() -> None:
    proto = ClientProtocol("ws://h:1/stream", key="a2V5a2V5a2V5a2V5a2V5aw==")
    assert proto.data_to_send().startswith(b"GET /stream HTTP/1.1\r\n")
    accept = base64.b64encode(hashlib.sha1(proto.key.encode() + GUID).digest())
    head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    assert proto.receive_data(head[:20]) == [] and not proto.upgraded
    data = head[20:] + server_frame(OP_TEXT, b"hi") + server_frame(OP_PING, b"p")
    assert proto.receive_data(data) == [b"hi"] and proto.upgraded
    pong = FrameParser()
    sent = proto.data_to_send()
    assert sent[0] & 0x0F == OP_PONG and pong.feed(sent) == [] and proto.data_to_send() == b""
    proto.receive_data(server_frame(OP_CLOSE, (1001).to_bytes(2, "big") + b"bye"))
    assert proto.close_received == (1001, "bye")
    assert proto.data_to_send()[0] & 0x0F == OP_CLOSE


def test_client_protocol_refused_upgrade() -> None:
    proto = ClientProtocol("ws://h/")
    try:
        proto.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    except HandshakeError as exc:
        assert "400" in str(exc)
    else:
        raise AssertionError("a refused upgrade must raise")
