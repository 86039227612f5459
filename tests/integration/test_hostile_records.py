"""Schema-valid extremes and near-misses, interleaved with ordinary trades, through a real
processor on the real broker and Redis: it stays alive, every valid record is applied exactly once
(the checker recomputes the views), and every refused one is on the DLQ with a reason."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cryptostream.config import Settings
from cryptostream.core.codec import DEFAULT_MAX_FUTURE_MS, DecodeError, decode_trade
from cryptostream.core.deadletter import decode_dead_letter
from cryptostream.core.keys import outbox_key
from cryptostream.core.trades import MAX_ID, MAX_TIME_MS, MAX_TIME_US, Trade
from cryptostream.kafka_clients import make_producer
from cryptostream.processor.service import Processor
from cryptostream.redisconn import stored_offsets
from cryptostream.stack.local import LocalStack
from cryptostream.topics import create_topics, required_topics
from cryptostream_lab.backends import ContainerStack
from cryptostream_lab.checker import check
from tests.kafka_helpers import read_all, watermarks

pytestmark = pytest.mark.integration

BASE_MS = 1_718_000_000_000
WIDEST = "9" * 20 + "." + "9" * 20
SYMBOLS = ["BTCUSDT", "ETHUSDT", "A1"]

_ids = st.one_of(
    st.integers(0, 10**6), st.sampled_from([0, 2**53 - 1, 2**53, 2**53 + 1, MAX_ID - 1, MAX_ID])
)
_decimals = st.one_of(
    st.sampled_from(["1", "0.00000001", "66398.85000000", WIDEST, "1" * 20, "0." + "0" * 19 + "1"]),
    st.builds(
        lambda i, f: f"{i}.{f}", st.integers(1, 10**20 - 1), st.text("0123456789", max_size=20)
    ),
)
_times = st.one_of(st.integers(BASE_MS, BASE_MS + 600_000), st.sampled_from([0, 1, MAX_TIME_MS]))
_odd_text = st.text(st.characters(codec="utf-8"), max_size=30)


@st.composite
def _valid(draw: st.DrawFn) -> dict[str, Any]:
    """A schema-valid record at the edges: widest decimals, 63-bit ids, times at both ends, any
    case of symbol, odd unicode in free text, huge unused fields."""
    trade_time = draw(_times)
    lowest_ingest = max(0, (trade_time - DEFAULT_MAX_FUTURE_MS) * 1000)
    symbol = draw(st.sampled_from(SYMBOLS))
    doc: dict[str, Any] = {
        "v": 1,
        "exchange": draw(_odd_text),
        "symbol": draw(st.sampled_from([symbol, symbol.lower()])),
        "trade_id": draw(_ids),
        "price": draw(_decimals),
        "quantity": draw(_decimals),
        "trade_time": trade_time,
        "event_time": draw(_times),
        "buyer_is_maker": draw(st.booleans()),
        "ingest_time_us": draw(
            st.integers(lowest_ingest, min(MAX_TIME_US, lowest_ingest + 10**13))
        ),
    }
    if draw(st.integers(0, 9)) == 0:
        doc["unused"] = draw(st.sampled_from(["x" * 100_000, "\u2028\u0000" * 1000]))
    return doc


_near_miss = st.sampled_from(
    [
        ("trade_id", MAX_ID + 1),
        ("trade_id", 10**30),
        ("event_time", MAX_TIME_MS + 1),
        ("ingest_time_us", MAX_TIME_US + 1),
        ("v", True),
        ("v", 1.0),
        ("symbol", "BTC-USDT"),
        ("symbol", "\uff22\uff34\uff23"),
        ("price", WIDEST + "9"),
        ("quantity", "0"),
        ("trade_time", 4_102_444_800_000),  # 2100, with an ingest time of today: too far ahead
        ("price", "x" * 800_000),  # its reason must not echo it, its dead letter must fit
    ]
)


@st.composite
def _record(draw: st.DrawFn) -> bytes:
    doc = draw(_valid())
    if draw(st.integers(0, 2)) == 0:
        field, value = draw(_near_miss)
        doc[field] = value
        if field == "trade_time":
            doc["ingest_time_us"] = BASE_MS * 1000
    return json.dumps(doc).encode()  # (orjson refuses integers beyond 64 bits)


def _trade_key(value: bytes) -> tuple[str, str]:
    """Trade ids are unique per symbol (ingest drops duplicates): which of two trades with one
    id is "the latest" would depend on arrival order across partitions."""
    doc = json.loads(value)
    return str(doc["symbol"]).upper(), str(doc["trade_id"])


def _ordinary(i: int) -> bytes:
    doc = {
        "v": 1,
        "exchange": "binance",
        "symbol": SYMBOLS[i % 3],
        "trade_id": 10**7 + i,
        "price": f"{100 + i % 7}.5",
        "quantity": "0.25",
        "trade_time": BASE_MS + i,
        "event_time": BASE_MS + i,
        "buyer_is_maker": False,
        "ingest_time_us": BASE_MS * 1000,
    }
    return json.dumps(doc).encode()


def _settings(stack: LocalStack | ContainerStack, run_dir: Any) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=stack.kafka_bootstrap,
        redis_url=stack.redis_url,
        topic=f"raw.trades.{suffix}",
        dlq_topic=f"raw.trades.dlq.{suffix}",
        gap_topic=f"raw.trades.gaps.{suffix}",
        group_id=f"stream-processor-{suffix}",
        depth_topic=f"raw.depth.{suffix}",  # required_topics creates it with these 2 partitions
        partitions=2,
        run_dir=run_dir,
        batch_max=7,  # small batches: many Lua merges
    )


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(st.lists(_record(), min_size=5, max_size=25, unique_by=_trade_key))
@example(  # the tester's three partition-stoppers, and the far-future trade, one of each
    [
        json.dumps(
            {**json.loads(_ordinary(0)), "trade_id": i, "price": WIDEST, "quantity": WIDEST}
        ).encode()
        for i in (1, 2)
    ]
    + [
        json.dumps({**json.loads(_ordinary(1)), **change}).encode()
        for change in (
            {"trade_id": 10**30},
            {"price": "x" * 800_000},
            {"trade_time": 4_102_444_800_000},
            {"trade_id": MAX_ID, "symbol": "btcusdt"},
        )
    ]
)
def test_no_record_stops_a_partition(
    stack: LocalStack | ContainerStack, tmp_path: Any, hostile: list[bytes]
) -> None:
    cfg = _settings(stack, tmp_path)
    create_topics(cfg.kafka, required_topics(cfg))
    values = [v for i, h in enumerate(hostile) for v in (_ordinary(2 * i), h, _ordinary(2 * i + 1))]
    producer = make_producer(cfg)
    for i, value in enumerate(values):
        producer.produce(cfg.topic, value, SYMBOLS[i % 3].encode())
    assert producer.flush(30) == 0

    client = redis.Redis.from_url(cfg.redis_url)
    client.flushall()
    processor = Processor(cfg, client)
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            processor.run()
        except BaseException as exc:  # the test's verdict, not a crash of the runner
            crashed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        ends = {p: high for p, (_low, high) in watermarks(cfg).items() if high > 0}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and thread.is_alive():
            stored = stored_offsets(client, cfg.topic, ends, cfg.partitions)
            if all(stored.get(p, -1) == end - 1 for p, end in ends.items()):
                break
            time.sleep(0.1)
        assert not crashed, f"the processor died: {crashed[0]!r}"
        assert thread.is_alive(), "the processor stopped"
        stored = stored_offsets(client, cfg.topic, ends, cfg.partitions)
        assert {p: stored.get(p, -1) for p in ends} == {p: end - 1 for p, end in ends.items()}, (
            "a partition stopped"
        )
        # records keyed by another symbol than their own: parked, then applied at their home
        outboxes = [outbox_key(cfg.topic, p, cfg.partitions) for p in range(cfg.partitions)]
        while time.monotonic() < deadline and any(client.llen(k) for k in outboxes):
            time.sleep(0.1)
        assert not any(client.llen(k) for k in outboxes), "misrouted records left parked"
    finally:
        processor.running = False
        thread.join(30)
    assert not crashed, f"the processor died: {crashed[0]!r}"

    accepted: list[Trade] = []
    refused = 0
    for value in read_all(cfg, cfg.topic):
        try:
            accepted.append(decode_trade(value).trade)
        except DecodeError:
            refused += 1
    report = check(client, accepted, partitions=cfg.partitions)
    assert report.ok and report.lost == report.duplicated == 0, report.summary()
    dead = [decode_dead_letter(v) for v in read_all(cfg, cfg.dlq_topic)]
    assert len(dead) == refused == processor.stats["poison"]
    assert all(d.reason and len(d.reason) <= 500 and d.stage == "processor" for d in dead)
    assert processor.stats["dlq_failed"] == 0
    client.close()
