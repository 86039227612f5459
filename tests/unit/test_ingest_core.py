"""Ingest's sans-I/O cores: id tracker, gap codec, backfill planner, connection planner, backoff,
WebSocket framing."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.ingest.backfill import (
    BackfillPlan,
    RowError,
    rest_base_url,
    row_to_trade,
    trading_symbols,
)
from cryptostream.ingest.gaps import (
    GapDecodeError,
    GapRecord,
    decode_gap,
    decode_gap_lenient,
    detected_record,
    final_records,
)
from cryptostream.ingest.metrics import LatencyHistogram
from cryptostream.ingest.recorder import Recorder
from cryptostream.ingest.streams import (
    AttemptLimiter,
    Backoff,
    plan_connections,
    subscribe_message,
)
from cryptostream.ingest.tail import TailWatch, newest_id, newest_request
from cryptostream.ingest.tracker import Gap, SymbolTracker
from cryptostream.ingest.wsproto import (
    OP_PING,
    OP_TEXT,
    FrameParser,
    HandshakeError,
    ProtocolError,
    check_handshake,
    client_frame,
    handshake_request,
)

# ---------- tracker ----------


def test_tracker_in_order_duplicates_and_gap() -> None:
    t = SymbolTracker("BTCUSDT", grace_s=1.0)
    assert [t.observe(i, 0.0) for i in (1, 2, 3, 3, 2)] == [True, True, True, False, False]
    assert t.observe(7, 0.0)  # 4..6 pending
    assert t.observe(5, 0.5) and not t.observe(5, 0.5)  # late arrival fills, then duplicate
    assert t.due(0.9, 1) == []  # still in grace
    detected = t.due(1.0, 99)
    assert [(g.first, g.last, g.cause, g.detected_at_us) for g in detected] == [
        (4, 4, "stream", 99),
        (6, 6, "stream", 99),
    ]
    assert t.observe(6, 2.0)  # arrives during backfill
    assert t.finish(detected[1]) == [(6, 6, "backfilled")]
    assert t.finish(detected[0]) == [(4, 4, "unrecoverable")]
    assert not t.observe(4, 3.0)  # closed ranges are forgotten: late copies are duplicates
    assert t.gaps == []


def test_gap_filled_in_grace_is_never_reported() -> None:
    t = SymbolTracker("X1", grace_s=1.0)
    t.observe(10, 0.0)
    t.observe(12, 0.0)
    t.observe(11, 0.1)
    assert t.due(5.0, 1) == [] and t.gaps == []


def test_reconnect_cause_and_buffer_loss() -> None:
    t = SymbolTracker("X1", grace_s=0.0)
    t.observe(1, 0.0)
    t.after_reconnect = True
    t.observe(5, 0.0)
    (gap,) = t.due(0.0, 1)
    assert gap.cause == "reconnect" and t.finish(gap) == [(2, 4, "unrecoverable")]
    lost = t.mark_lost(2, 4, "buffer_overflow", 0.0, 7)
    assert lost.detected and t.observe(3, 0.0)
    assert t.finish(lost) == [
        (2, 2, "unrecoverable"),
        (3, 3, "backfilled"),
        (4, 4, "unrecoverable"),
    ]


def test_open_gaps_are_bounded() -> None:
    t = SymbolTracker("X1", grace_s=10.0, max_open=3)
    t.observe(0, 0.0)
    for i in range(1, 6):
        t.observe(i * 2, 0.0)  # a gap of one id before each even id
    assert len(t.gaps) == 3 and [(g.first, g.last) for g in t.evicted] == [(1, 1), (3, 3)]


@settings(max_examples=300)
@given(
    n=st.integers(1, 300),
    drop=st.sets(st.integers(0, 299)),
    dup=st.sets(st.integers(0, 299)),
    seed=st.integers(0, 1000),
)
def test_tracker_property(n: int, drop: set[int], dup: set[int], seed: int) -> None:
    """Whatever the order, loss and repetition: each id is accepted at most once, and after the
    grace period the detected gaps are exactly the ids never seen between the first and last."""
    ids = [i for i in range(n) if i not in drop] + [i for i in dup if i < n and i not in drop]
    rng = random.Random(seed)
    # local reordering only (a window of 5), as a stream would reorder
    for i in range(len(ids) - 1):
        j = min(len(ids) - 1, i + rng.randrange(5))
        ids[i], ids[j] = ids[j], ids[i]
    t = SymbolTracker("X1", grace_s=1.0)
    accepted = [i for i in ids if t.observe(i, 0.0)]
    assert len(accepted) == len(set(accepted)) == len(set(ids))
    detected = t.due(2.0, 1)
    if not ids:
        return
    lo, hi = min(accepted[0], min(ids)), max(ids)
    missing = set(range(lo, hi + 1)) - set(ids)
    # ids below the first one seen are not known to be missing
    missing = {i for i in missing if i > accepted[0]}
    got = {i for g in detected for i in range(g.first, g.last + 1)}
    assert got == missing
    for g in detected:
        assert t.finish(g) == [(g.first, g.last, "unrecoverable")]


# ---------- gap records ----------


def test_gap_records_round_trip_and_cover_the_detected_range() -> None:
    gap = Gap("BTCUSDT", 101, 120, "reconnect", 0.0, detected_at_us=5)
    det = detected_record(gap, 6)
    assert orjson.loads(det.encode()) == {
        "v": 1,
        "symbol": "BTCUSDT",
        "first_id": 101,
        "last_id": 120,
        "count": 20,
        "status": "detected",
        "cause": "reconnect",
        "detected_at_us": 5,
        "reported_at_us": 6,
    }
    for i in range(101, 111):
        gap.fill(i)
    finals = final_records(gap, gap.outcome(), 9)
    assert [(r.first_id, r.last_id, r.status) for r in finals] == [
        (101, 110, "backfilled"),
        (111, 120, "unrecoverable"),
    ]
    assert all(decode_gap(r.encode()) == r for r in [det, *finals])
    assert all(decode_gap_lenient(r.encode()) == r for r in [det, *finals])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"x", "not JSON"),
        (b'{"v":2}', "version"),
        (GapRecord("A1", 3, 2, "detected", "stream", 1, 1).encode(), "last_id < first_id"),
        (
            orjson.dumps(
                {
                    **orjson.loads(GapRecord("A1", 1, 2, "detected", "stream", 1, 1).encode()),
                    "status": "lost",
                }
            ),
            "unknown status",
        ),
    ],
)
def test_gap_decode_errors(value: bytes, reason: str) -> None:
    with pytest.raises(GapDecodeError, match=reason):
        decode_gap(value)
    # the lenient decode (the checker's) refuses the same records for the same reason
    error = decode_gap_lenient(value)
    assert isinstance(error, GapDecodeError) and reason in str(error)


# ---------- backfill ----------


def test_rest_base_url() -> None:
    assert rest_base_url("wss://stream.binance.com:9443") == "https://api.binance.com"
    assert rest_base_url("wss://data-stream.binance.vision") == "https://data-api.binance.vision"
    assert rest_base_url("ws://127.0.0.1:8765/") == "http://127.0.0.1:8765"
    assert rest_base_url("wss://127.0.0.1:1") == "https://127.0.0.1:1"


def _rows(ids: range) -> list[dict[str, object]]:
    return [
        {
            "id": i,
            "price": "1.5",
            "qty": "2",
            "quoteQty": "3",
            "time": 1000 + i,
            "isBuyerMaker": True,
            "isBestMatch": True,
        }
        for i in ids
    ]


def test_backfill_pages_and_evicted_history() -> None:
    plan = BackfillPlan("BTCUSDT", "trade", 100, 2600)
    req = plan.next_request()
    assert req is not None and req.path == "/api/v3/historicalTrades"
    assert req.params == {"symbol": "BTCUSDT", "fromId": "100", "limit": "1000"}
    assert (
        req.url("http://h:1")
        == "http://h:1/api/v3/historicalTrades?symbol=BTCUSDT&fromId=100&limit=1000"
    )
    # the server's history starts at 500: 100..499 are gone, the page starts later
    trades, bad = plan.feed(_rows(range(500, 1500)))
    assert bad == 0 and [t.trade_id for t in trades] == list(range(500, 1500))
    req = plan.next_request()
    assert req is not None and req.params["fromId"] == "1500"
    trades, _ = plan.feed([*_rows(range(1500, 2500)), {"id": "bad"}])
    req = plan.next_request()
    assert req is not None and req.params["limit"] == "101"
    trades, _ = plan.feed(_rows(range(2500, 2700)))  # rows past the gap are not returned
    assert trades[-1].trade_id == 2600 and plan.done and plan.next_request() is None


def test_backfill_empty_page_ends_and_agg_mode() -> None:
    plan = BackfillPlan("ETHUSDT", "aggTrade", 5, 6)
    req = plan.next_request()
    assert req is not None and req.path == "/api/v3/aggTrades"
    trades, _ = plan.feed(
        [{"a": 5, "p": "2.0", "q": "1.0", "f": 10, "l": 12, "T": 9, "m": False, "M": True}]
    )
    assert trades[0].trade_id == 5 and trades[0].quantity == "1.0" and not plan.done
    assert plan.feed([]) == ([], 0) and plan.done
    with pytest.raises(RowError):
        row_to_trade(
            "ETHUSDT",
            "trade",
            {"id": 1, "price": "NaN", "qty": "1", "time": 1, "isBuyerMaker": True},
        )


def test_trading_symbols_from_exchange_info() -> None:
    info = {
        "symbols": [
            {"symbol": "BTCUSDT", "status": "TRADING", "quoteAsset": "USDT"},
            {"symbol": "ETHBTC", "status": "TRADING", "quoteAsset": "BTC"},
            {"symbol": "OLDUSDT", "status": "BREAK", "quoteAsset": "USDT"},
            {"symbol": "ADAUSDT", "status": "TRADING", "quoteAsset": "USDT"},
        ]
    }
    assert trading_symbols(info, "usdt") == ["ADAUSDT", "BTCUSDT"]
    with pytest.raises(ValueError):
        trading_symbols({"nope": 1}, "USDT")


# ---------- quiet-symbol (tail) checks ----------


def test_tail_watch_checks_quiet_symbols_with_backoff_and_budget() -> None:
    watch = TailWatch(quiet_s=10, max_interval_s=40, max_per_step=2)
    lasts: dict[str, int | None] = {"A": 5, "B": 7, "C": None}
    assert watch.due(lasts, 0) == []  # quiet periods start
    assert watch.due(lasts, 9.9) == []
    assert watch.due(lasts, 10) == ["A", "B"]  # C has no id yet: nothing to compare with
    assert watch.due(lasts, 15) == []
    assert watch.due(lasts, 30) == ["A", "B"]  # interval doubled to 20
    assert watch.due(lasts, 69) == []
    assert watch.due(lasts, 70) == ["A", "B"]  # doubled again, capped at 40
    assert watch.due(lasts, 110) == ["A", "B"]
    lasts["A"] = 6  # A traded: a fresh quiet period, no check until it is quiet again
    assert watch.due(lasts, 111) == []
    assert watch.due(lasts, 121) == ["A"]
    budget = TailWatch(quiet_s=1, max_per_step=1)
    many: dict[str, int | None] = {"A": 1, "B": 1}
    budget.due(many, 0)
    assert budget.due(many, 1) == ["A"]
    assert budget.due(many, 1.5) == ["B"]  # over budget last step: still due, not skipped


def test_newest_id_from_agg_trades() -> None:
    req = newest_request("BTCUSDT")
    assert req.path == "/api/v3/aggTrades" and req.params == {"symbol": "BTCUSDT", "limit": "1"}
    row = {"a": 26, "p": "1.0", "q": "1.0", "f": 100, "l": 104, "T": 1, "m": True, "M": True}
    assert newest_id("trade", [row]) == 104 and newest_id("aggTrade", [row]) == 26
    assert newest_id("trade", []) is None
    for bad in ({"x": 1}, [1], [{"a": 1}], [{"l": "104"}], [{"l": True}]):
        with pytest.raises(RowError):
            newest_id("trade", bad)


# ---------- connections ----------


def test_plan_connections_respects_limits() -> None:
    symbols = [f"S{i:04d}" for i in range(2500)]
    plans = plan_connections("ws://h:1/", symbols, "aggTrade", url_streams=100, per_subscribe=300)
    assert [len(p.streams) for p in plans] == [1024, 1024, 452]
    assert plans[0].url.startswith("ws://h:1/stream?streams=s0000@aggTrade/s0001@aggTrade")
    assert plans[0].url.count("@aggTrade") == 100
    assert [len(b) for b in plans[0].subscribe_batches] == [300, 300, 300, 24]
    covered = [s for p in plans for s in p.url.split("=", 1)[1].split("/")] + [
        s for p in plans for b in p.subscribe_batches for s in b
    ]
    assert sorted(covered) == sorted(f"{s.lower()}@aggTrade" for s in symbols)
    assert plans[2].symbols[0] == "S2048"
    assert orjson.loads(subscribe_message(3, ("a@trade",))) == {
        "method": "SUBSCRIBE",
        "params": ["a@trade"],
        "id": 3,
    }


def test_backoff_and_attempt_limiter() -> None:
    b = Backoff(0.5, 8.0, random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    assert all(0.25 <= d <= 8.0 for d in delays) and delays[-1] >= 4.0
    assert delays[0] <= 0.5
    b.reset()
    assert b.next_delay() <= 0.5
    lim = AttemptLimiter(3, 10.0)
    assert [lim.wait_s(t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert lim.wait_s(3.0) == pytest.approx(7.0)
    assert lim.wait_s(10.5) == 0.0


# ---------- WebSocket framing ----------


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes([b0, n]) + payload
    if n < 65536:
        return bytes([b0, 126]) + n.to_bytes(2, "big") + payload
    return bytes([b0, 127]) + n.to_bytes(8, "big") + payload


@given(st.lists(st.binary(max_size=70000), max_size=5), st.integers(1, 50))
@settings(max_examples=50)
def test_frame_parser_any_split(payloads: list[bytes], chunk: int) -> None:
    data = b"".join(server_frame(OP_TEXT, p) for p in payloads)
    parser = FrameParser(max_size=1 << 20)
    out: list[bytes] = []
    step = max(1, len(data) // chunk)
    for i in range(0, len(data), step):
        out += parser.feed(data[i : i + step])
    assert out == payloads


def test_frame_parser_control_fragments_and_limits() -> None:
    p = FrameParser(max_size=100)
    data = (
        server_frame(OP_PING, b"hi")
        + server_frame(OP_TEXT, b"ab", fin=False)
        + server_frame(0, b"cd")
        + server_frame(0x8, (1001).to_bytes(2, "big") + b"bye")
    )
    assert p.feed(data) == [b"abcd"]
    assert p.pings == [b"hi"] and p.close == (1001, "bye")
    with pytest.raises(ProtocolError):
        FrameParser(max_size=10).feed(server_frame(OP_TEXT, b"x" * 11))
    masked = client_frame(OP_TEXT, b"hello world", mask=b"\x01\x02\x03\x04")
    assert masked[2:6] == b"\x01\x02\x03\x04" and FrameParser().feed(masked) == [b"hello world"]


def test_handshake() -> None:
    request, key = handshake_request(
        "ws://127.0.0.1:9/stream?streams=a@trade", "dGhlIHNhbXBsZSBub25jZQ=="
    )
    assert request.startswith(b"GET /stream?streams=a@trade HTTP/1.1\r\nHost: 127.0.0.1:9\r\n")
    ok = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    check_handshake(ok, key)
    with pytest.raises(HandshakeError, match="400"):
        check_handshake(b"HTTP/1.1 400 Bad Request\r\n", key)
    with pytest.raises(HandshakeError, match="Accept"):
        check_handshake(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: x\r\n", key)


# ---------- record mode, latency histogram ----------


def test_recording_is_what_the_simulator_replays(tmp_path: Path) -> None:
    from marketsim.replay import ReplayStats, read_recorded

    rec = Recorder(tmp_path, rotate_bytes=400, rotate_s=3600)
    trade = b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":%d,"p":"1.5","q":"2","T":1,"m":true,"M":true}}'
    for i in range(6):
        rec.write([trade % i, b'{"result":null,"id":1}'], 1_735_689_600_000_000 + i)
    rec.close()
    assert len(rec.files) >= 2 and not list(tmp_path.glob("*.part"))
    stats = ReplayStats()
    frames = [f for path in rec.files for f in read_recorded(path, stats)]
    assert [f.trade.trade_id for f in frames if f.trade] == list(range(6))
    assert frames[0].stream == "btcusdt@trade" and frames[0].time_us == 1_735_689_600_000_000
    assert stats.skipped_reasons == {"not a market frame": 6}


def test_latency_histogram_quantiles() -> None:
    h = LatencyHistogram()
    for us in [100] * 50 + [4000] * 49 + [20_000_000]:
        h.record(us)
    assert h.quantile(0.5) == 250 and h.quantile(0.99) == 5000 and h.quantile(1.0) == 30_000_000
    assert LatencyHistogram().quantile(0.5) is None
