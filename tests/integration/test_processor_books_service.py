"""The books processor as real processes on the real broker and Redis: raw.depth -> books."""

from __future__ import annotations

import random
import threading
from decimal import Decimal

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from cryptostream.core.codec import decode_trade, encode_key
from cryptostream.core.depth import decode_depth
from cryptostream.core.keys import book_key, book_side_key
from cryptostream.kafka_clients import producer_config
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.supervisor import free_port
from cryptostream.topics import TopicSpec, create_topics
from cryptostream_lab.checker import check, check_books, expected_books
from tests.conftest import Env
from tests.kafka_helpers import produce, read_all, synthetic_trades, watermarks
from tests.unit.test_books_fold import synthetic_depth
from tests.unit.test_books_recordings import as_decimal, independent_book, recorded_values

pytestmark = pytest.mark.integration

SYMBOLS = [f"SYM{i}USDT" for i in range(12)]


def _depth_topic(env: Env) -> str:
    topic = env.settings.topic.replace("raw.trades", "raw.depth")
    create_topics(env.settings.kafka, [TopicSpec(topic, env.settings.partitions, 1)])
    return topic


def _pipeline(env: Env, depth_topic: str, client: str = "confluent", **extra: str) -> Pipeline:
    return Pipeline(
        env.workdir,
        env.settings.kafka_bootstrap,
        env.settings.redis_url,
        SYMBOLS,
        extra_env={
            **env.env,
            "CSP_PROCESSOR_KAFKA_CLIENT": client,
            "CSP_PROCESSOR_BOOKS": "true",
            "CSP_DEPTH_TOPIC": depth_topic,
            **extra,
        },
    )


def _produce_depth(env: Env, topic: str, records: list[tuple[str, bytes]]) -> int:
    producer = Producer(producer_config(env.settings))
    for i, (symbol, value) in enumerate(records):
        producer.produce(topic, value, encode_key(symbol))
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return len(records)


def _all_applied(env: Env, topic: str) -> bool:
    stored = env.applied(topic)
    return all(
        stored.get(p, -1) == high - 1
        for p, (low, high) in watermarks(env.settings, topic).items()
        if high > low
    )


def _check_books(env: Env, topic: str) -> int:
    values = read_all(env.settings, topic)
    report = check_books(env.redis, values)
    assert report.ok, report.summary()
    return report.records


@pytest.mark.parametrize("client", ["confluent", "aiokafka"])
def test_books_and_trades_end_to_end_with_recordings_and_poison(isolated: Env, client: str) -> None:
    depth = _depth_topic(isolated)
    synthetic = synthetic_depth(SYMBOLS, 6_000, seed=7)
    recordings = {name: recorded_values(name) for name in ("btcusdt_20240808", "ethusdt_20240808")}
    poison = [
        ("SYM1USDT", b"not json"),
        ("SYM2USDT", b'{"v": 99}'),
        (
            "SYM3USDT",
            orjson.dumps(
                {
                    "v": 1,
                    "kind": "diff",
                    "symbol": "SYM3USDT",
                    "first_id": 9,
                    "final_id": 3,
                    "bids": [],
                    "asks": [],
                    "event_time": 1,
                    "ingest_time_us": 1,
                }
            ),
        ),
    ]
    # interleave the streams (each symbol keeps its own order)
    streams = [
        list(synthetic),
        *([(n[:7].upper(), v) for v in vals] for n, vals in recordings.items()),
    ]
    rng = random.Random(1)
    mixed: list[tuple[str, bytes]] = []
    while any(streams):
        stream = rng.choice([s for s in streams if s])
        mixed.extend(stream[:50])
        del stream[:50]
    _produce_depth(isolated, depth, [*mixed[:9000], *poison, *mixed[9000:]])
    trades = synthetic_trades(SYMBOLS, 3_000, seed=3)
    produce(isolated.settings, trades)
    pipeline = _pipeline(isolated, depth, client, CSP_BATCH_MAX="400")
    ports = [free_port(), free_port()]
    try:
        for port in ports:
            pipeline.start_processor(CSP_PROCESSOR_METRICS_PORT=str(port))
        wait_for(
            lambda: pipeline.check_alive() or _all_applied(isolated, depth),
            120,
            "all depth offsets applied",
        )
        wait_for(lambda: _all_applied(isolated, isolated.settings.topic), 60, "trades applied")
        records = _check_books(isolated, depth)
        assert records == len(mixed)
        # the genuine recordings: exactly the independently reconstructed book
        for name in recordings:
            last, shadow = independent_book(name)
            symbol, n = name[:7].upper(), isolated.partitions
            state = isolated.redis.hgetall(book_key(symbol, n))
            assert (state["status"], int(state["last_update_id"])) == ("synced", last)
            for side in ("bids", "asks"):
                members = isolated.redis.zrange(book_side_key(symbol, side, n), 0, -1)
                stored = [tuple(m.split(" ")[1:]) for m in members]
                assert as_decimal(stored) == shadow[side]  # type: ignore[arg-type]
            best_bid = max(shadow["bids"])
            assert Decimal(state["best_bid"]) == best_bid
        # trades in the same processes are untouched by the books
        report = check(
            isolated.redis,
            [decode_trade(v).trade for v in read_all(isolated.settings, isolated.settings.topic)],
        )
        assert report.ok, report.summary()

        def scraped() -> dict[str, float]:
            totals: dict[str, float] = {}
            for port in ports:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        totals[sample.name] = totals.get(sample.name, 0) + sample.value
            return totals

        wait_for(lambda: scraped()["csp_processor_books_consumer_lag"] == 0, 30, "zero lag")
        metrics = scraped()
        assert metrics["csp_processor_books_records_total"] == len(mixed) + len(poison)
        assert metrics["csp_processor_books_poison_total"] == len(poison)
        reference = expected_books(decode_depth(v) for _s, v in mixed)
        assert (
            metrics["csp_processor_books_breaks_total"]
            == sum(b.breaks for b in reference.values())
            > 0
        )
        assert metrics["csp_processor_records_total"] == len(trades)
        dead = [orjson.loads(v) for v in read_all(isolated.settings, isolated.settings.dlq_topic)]
        assert sorted(d["reason"].split(" ")[0] for d in dead) == ["first_id", "not", "unsupported"]
        assert all(d["topic"] == depth for d in dead)
        pipeline.check_alive()
    finally:
        pipeline.stop()


@pytest.mark.parametrize(
    "redis_topology",
    # on the cluster (slow: CI time; its per-partition apply is also tested fast, fenced,
    # in test_processor_books_apply.py)
    ["single", pytest.param("cluster", marks=pytest.mark.slow)],
    indirect=True,
)
def test_sigkill_and_rebalance_mid_stream_zero_divergence(isolated: Env) -> None:
    """One books processor SIGKILLed mid-stream, two more join and share the partitions while
    records keep coming: every book equals TopicBook's over the whole topic."""
    depth = _depth_topic(isolated)
    records = synthetic_depth(SYMBOLS, 24_000, seed=11)
    pipeline = _pipeline(isolated, depth, CSP_BATCH_MAX="300")
    produced: list[int] = []
    stop = threading.Event()

    def keep_producing() -> None:
        for lo in range(0, len(records), 1_000):
            if stop.is_set():
                return
            produced.append(_produce_depth(isolated, depth, records[lo : lo + 1_000]))
            stop.wait(0.1)

    producer = threading.Thread(target=keep_producing)
    try:
        victim = pipeline.start_processor()
        producer.start()
        wait_for(
            lambda: len(produced) >= 6 and bool(isolated.applied(depth)),
            60,
            "books applied under load",
        )
        victim.kill()  # SIGKILL: nothing flushed, Kafka's commits lag behind Redis
        survivors = [pipeline.start_processor(), pipeline.start_processor()]
        wait_for(lambda: len(produced) >= 16, 60, "more load")
        survivors.append(pipeline.start_processor())  # another rebalance
        producer.join(120)
        assert sum(produced) == len(records)
        wait_for(lambda: _all_applied(isolated, depth), 120, "everything applied after faults")
        assert _check_books(isolated, depth) == len(records)
        for survivor in survivors:
            assert survivor.alive(), survivor.log_tail()
    finally:
        stop.set()
        if producer.is_alive():
            producer.join(60)
        pipeline.stop()


def test_books_on_without_the_depth_topic_exits_2_with_the_reason(isolated: Env) -> None:
    missing = isolated.settings.topic.replace("raw.trades", "raw.depth.missing")
    pipeline = _pipeline(isolated, missing)
    try:
        proc = pipeline.start_processor()
        assert proc.wait(60) == 2, proc.log_tail()
        assert missing in proc.log_tail()
    finally:
        pipeline.stop()
