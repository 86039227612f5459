"""Processors as real processes on the real broker and Redis."""

from __future__ import annotations

import contextlib
import random
import threading

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cryptostream.core.codec import decode_trade
from cryptostream.core.keys import (
    LAYOUT_KEY,
    candles_1m_key,
    home_partition,
    layout_doc,
    outbox_key,
    price_key,
    stats_key,
    symbols_keys,
)
from cryptostream.core.trades import Trade
from cryptostream.processor.service import rebuild
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.supervisor import free_port
from cryptostream_lab.checker import check
from tests.conftest import Env
from tests.kafka_helpers import produce, produce_to, read_all, synthetic_trades, watermarks

pytestmark = pytest.mark.integration

SYMBOLS = [f"SYM{i}USDT" for i in range(40)]
# Each Kafka client backend on one Redis node, and the default one on a Redis Cluster.
CLIENTS_AND_TOPOLOGIES = pytest.mark.parametrize(
    ("client", "redis_topology"),
    [("confluent", "single"), ("aiokafka", "single"), ("confluent", "cluster")],
    indirect=["redis_topology"],
)


@pytest.fixture(params=["confluent", "aiokafka"])
def client(request: pytest.FixtureRequest) -> str:
    """Every test runs with each Kafka client backend of the processor."""
    return str(request.param)


def _pipeline(env: Env, client: str, **extra: str) -> Pipeline:
    return Pipeline(
        env.workdir,
        env.settings.kafka_bootstrap,
        env.settings.redis_url,
        SYMBOLS,
        extra_env={**env.env, "CSP_PROCESSOR_KAFKA_CLIENT": client, **extra},
    )


def _all_applied(env: Env) -> bool:
    stored = env.applied()
    return all(
        stored.get(p, -1) == high - 1
        for p, (low, high) in watermarks(env.settings).items()
        if high > low
    )


def _topic_trades(env: Env) -> list[Trade]:
    trades = []
    for value in read_all(env.settings, env.settings.topic):
        with contextlib.suppress(ValueError):  # poison records are not part of the views
            trades.append(decode_trade(value).trade)
    return trades


def _check(env: Env) -> None:
    client = env.client()
    report = check(client, _topic_trades(env))
    client.close()
    assert report.ok and report.lost == 0 and report.duplicated == 0, report.summary()


def _all_symbols(env: Env) -> set[str]:
    return set().union(*(env.redis.smembers(k) for k in symbols_keys(env.partitions)))


@CLIENTS_AND_TOPOLOGIES
def test_processors_share_partitions_views_exact_and_poison_to_dlq(
    isolated: Env, client: str
) -> None:
    trades = synthetic_trades(SYMBOLS, 20_000, seed=3)
    poison = [
        (b"SYM1USDT", b"not json"),
        (b"SYM2USDT", b'{"v": 99}'),
        (b"SYM3USDT", orjson.dumps({"v": 1, "symbol": "SYM3USDT"})),
    ]
    produce(isolated.settings, trades, poison)
    # Many small batches exercise the Lua merge.
    pipeline = _pipeline(isolated, client, CSP_BATCH_MAX="700")
    ports = [free_port(), free_port()]
    try:
        for port in ports:
            pipeline.start_processor(CSP_PROCESSOR_METRICS_PORT=str(port))
        wait_for(
            lambda: pipeline.check_alive() or _all_applied(isolated), 90, "all offsets applied"
        )
        _check(isolated)

        def scraped() -> dict[str, float]:
            totals: dict[str, float] = {}
            for port in ports:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        totals[sample.name] = totals.get(sample.name, 0) + sample.value
            return totals

        # Counters are exact; the lag gauges drain to zero once everything is applied.
        wait_for(lambda: scraped()["csp_processor_consumer_lag"] == 0, 30, "zero lag in metrics")
        metrics = scraped()
        assert metrics["csp_processor_records_total"] == len(trades) + len(poison)
        assert metrics["csp_processor_poison_total"] == len(poison)
        assert metrics["csp_processor_batch_size_sum"] == len(trades) + len(poison)
        applies = metrics["csp_processor_redis_apply_seconds_count"]
        assert applies == metrics["csp_processor_batches_total"] > 0
        assert _all_symbols(isolated) == set(SYMBOLS)
        dead = [orjson.loads(v) for v in read_all(isolated.settings, isolated.settings.dlq_topic)]
        reasons = sorted(d["reason"].split(" ")[0] for d in dead)
        assert reasons == ["missing", "not", "unsupported"], reasons
        assert all(d["topic"] == isolated.settings.topic and d["offset"] >= 0 for d in dead)
        pipeline.check_alive()
    finally:
        pipeline.stop()


def test_restart_resumes_from_redis_offsets_and_old_trades_never_win(
    isolated: Env, client: str
) -> None:
    first = synthetic_trades(SYMBOLS, 5_000, seed=4)
    produce(isolated.settings, first)
    # the one-call-per-batch apply style (one node only) runs here, with the aiokafka backend
    pipeline = _pipeline(
        isolated, client, CSP_PROCESSOR_APPLY="batch" if client == "aiokafka" else "partition"
    )
    try:
        proc = pipeline.start_processor()
        wait_for(lambda: _all_applied(isolated), 60, "first round applied")
        proc.kill()  # SIGKILL: no clean shutdown, Kafka commits may lag behind Redis
        stale = Trade("SYM0USDT", 1, "0.00000001", "1", 1, 1, False)
        second = [
            Trade(
                t.symbol,
                t.trade_id + 10_000,
                t.price,
                t.quantity,
                t.trade_time,
                t.event_time,
                t.buyer_is_maker,
            )
            for t in synthetic_trades(SYMBOLS, 5_000, seed=5)
        ]
        produce(isolated.settings, [stale, *second])
        pipeline.start_processor()
        wait_for(lambda: _all_applied(isolated), 60, "second round applied")
        stored = isolated.redis.hget(price_key("SYM0USDT", isolated.partitions), "price")
        assert stored != "0.00000001"
        _check(isolated)
    finally:
        pipeline.stop()


@pytest.mark.parametrize(
    ("client", "redis_topology"),
    [
        ("confluent", "single"),
        # (slow: ~30 s, and aiokafka's kill-and-rejoin paths also run in the restart test)
        pytest.param("aiokafka", "single", marks=pytest.mark.slow),
        ("confluent", "cluster"),
    ],
    indirect=["redis_topology"],
)
def test_sigkill_and_join_under_load_then_rebuild_gives_identical_views(
    isolated: Env, client: str
) -> None:
    """Three processors; one is SIGKILLed mid-stream and another joins; nothing lost or doubled."""
    pipeline = _pipeline(isolated, client, CSP_BATCH_MAX="500")
    stop_producing = threading.Event()
    produced: list[int] = []

    def keep_producing() -> None:
        rng = random.Random(9)
        round_no = 0
        while not stop_producing.is_set() and round_no < 40:
            batch = synthetic_trades(SYMBOLS, 1_000, seed=100 + round_no)
            batch = [
                Trade(
                    t.symbol,
                    t.trade_id + 2_000 * round_no,
                    t.price,
                    t.quantity,
                    t.trade_time + 1_000 * round_no,
                    t.event_time,
                    t.buyer_is_maker,
                )
                for t in batch
            ]
            produced.append(produce(isolated.settings, batch))
            round_no += 1
            stop_producing.wait(rng.uniform(0.05, 0.15))

    producer = threading.Thread(target=keep_producing)
    try:
        victims = [pipeline.start_processor() for _ in range(3)]
        producer.start()
        wait_for(lambda: len(produced) >= 8, 60, "load flowing")
        victims[1].kill()
        wait_for(lambda: len(produced) >= 16, 60, "more load")
        pipeline.start_processor()
        producer.join(120)
        wait_for(lambda: _all_applied(isolated), 120, "everything applied after the faults")
        assert sum(produced) == sum(h - lo for lo, h in watermarks(isolated.settings).values())
        _check(isolated)
        for survivor in (victims[0], victims[2]):
            assert survivor.alive(), survivor.log_tail()
    finally:
        stop_producing.set()
        if producer.is_alive():
            producer.join(60)
        pipeline.stop()

    before = _snapshot(isolated)
    settings = isolated.settings.model_copy(update={"processor_kafka_client": client})
    assert rebuild(settings) == sum(produced)
    assert _snapshot(isolated) == before


def _snapshot(env: Env) -> dict[str, object]:
    """All view keys except update times, which record when a write happened."""
    client, n = env.redis, env.partitions
    out: dict[str, object] = {}
    for symbol in _all_symbols(env):
        price = client.hgetall(price_key(symbol, n))
        price.pop("update_time")
        out[f"price:{symbol}"] = price
        out[f"stats:{symbol}"] = client.hgetall(stats_key(symbol, n))
        out[f"candles:{symbol}"] = [
            orjson.loads(m) for m in client.zrange(candles_1m_key(symbol, n), 0, -1)
        ]
    out["offsets"] = env.applied()
    return out


@pytest.mark.parametrize(
    "redis_topology",
    # one node: the same outbox through the one-call-per-batch apply (slow: CI time)
    [pytest.param("single", marks=pytest.mark.slow), "cluster"],
    indirect=True,
)
def test_misrouted_records_are_applied_at_their_home_exactly_once(isolated: Env) -> None:
    """Records produced to other partitions than their symbols' (a foreign producer): parked in
    the outbox with their partition's fence, applied under their symbols' home tag (one slot per
    script call on the cluster), counted; a SIGKILL and a second processor apply nothing twice."""
    n = isolated.partitions
    trades = synthetic_trades(SYMBOLS, 6_000, seed=21)
    produce(isolated.settings, trades[:3_000])
    wrong = [
        ((home_partition(t.symbol, n) + 1 + i % (n - 1)) % n, t)
        for i, t in enumerate(trades[3_000:4_000])
    ]
    assert all(p != home_partition(t.symbol, n) for p, t in wrong)
    produce_to(isolated.settings, wrong)
    produce(isolated.settings, trades[4_000:])
    style = "partition" if isolated.cluster is not None else "batch"  # one node: the other style
    pipeline = _pipeline(isolated, "confluent", CSP_BATCH_MAX="300", CSP_PROCESSOR_APPLY=style)
    port = free_port()
    try:
        first = pipeline.start_processor()
        wait_for(lambda: sum(isolated.applied().values()) > 1_500, 60, "some records applied")
        first.kill()  # mid-stream: parked entries may be left for the next owner
        survivors = [
            pipeline.start_processor(CSP_PROCESSOR_METRICS_PORT=str(port)),
            pipeline.start_processor(),
        ]

        def alive() -> None:
            for survivor in survivors:
                assert survivor.alive(), survivor.log_tail()

        def outboxes_empty() -> bool:
            return all(
                isolated.redis.llen(outbox_key(isolated.settings.topic, p, n)) == 0
                for p in range(n)
            )

        wait_for(
            lambda: alive() or (_all_applied(isolated) and outboxes_empty()),
            90,
            "all offsets applied and the outboxes drained",
        )
        _check(isolated)
        alive()
        wait_for(  # the survivor's metrics server may still be starting on a loaded machine
            lambda: (
                "csp_processor_misrouted_total"
                in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            ),
            30,
            "the misrouted counter on the survivor's /metrics",
        )
    finally:
        pipeline.stop()


def test_a_redis_holding_another_layout_is_refused_with_exit_2(isolated: Env) -> None:
    """Views written with another CSP_PARTITIONS are not where this processor would look."""
    isolated.redis.set(LAYOUT_KEY, layout_doc(4))
    pipeline = _pipeline(isolated, "confluent")
    try:
        proc = pipeline.start_processor()
        assert proc.wait(60) == 2, proc.log_tail()
        assert "csp rebuild" in proc.log_tail() and "CSP_PARTITIONS=8" in proc.log_tail()
    finally:
        pipeline.stop()
