"""The whole pipeline on real processes: simulator -> ingest -> Kafka -> 2 processors -> Redis -> query."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from cryptostream.core.keys import price_key
from cryptostream.stack.pipeline import Pipeline, wait_for
from tests.conftest import Env

pytestmark = pytest.mark.e2e

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
TOTAL = 800


def _watermarks(env: Env) -> dict[int, tuple[int, int]]:
    consumer = Consumer(env.settings.kafka.librdkafka({"group.id": "probe"}))
    try:
        meta = consumer.list_topics(env.settings.topic, timeout=10)
        return {
            p: consumer.get_watermark_offsets(TopicPartition(env.settings.topic, p), timeout=10)
            for p in meta.topics[env.settings.topic].partitions
        }
    finally:
        consumer.close()


def _committed(env: Env, partitions: list[int]) -> dict[int, int]:
    consumer = Consumer(env.settings.kafka.librdkafka({"group.id": env.settings.group_id}))
    try:
        tps = consumer.committed(
            [TopicPartition(env.settings.topic, p) for p in partitions], timeout=10
        )
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def test_known_sequence_reaches_the_query_api(isolated: Env) -> None:
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        SYMBOLS,
        extra_env=isolated.env,
    )
    try:
        sim = pipeline.start_simulator(
            [
                "--symbols",
                ",".join(SYMBOLS),
                "--rate",
                "400",
                "--seed",
                "7",
                "--max-trades",
                str(TOTAL),
                "--wait-for-subscribers",
                "1",
            ]
        )
        pipeline.start_processor()
        pipeline.start_processor()
        query = pipeline.start_query()
        pipeline.start_ingest(sim.ws_url)

        wait_for(lambda: sim.stats()["done"], timeout=60, what="the simulator to emit its sequence")
        truth: dict[str, Any] = sim.stats()["symbols"]  # type: ignore[assignment]
        assert sorted(truth) == SYMBOLS and sum(s["count"] for s in truth.values()) == TOTAL

        def prices_match() -> bool:
            pipeline.check_alive()
            for symbol, sent in truth.items():
                reply = httpx.get(f"{query.base_url}/price/{symbol}", timeout=5)
                if reply.status_code != 200 or reply.json() != {
                    "symbol": symbol,
                    "price": float(sent["last_price"]),
                }:
                    return False
            return True

        try:
            wait_for(prices_match, timeout=60, what="every symbol's last price in the query API")
        except TimeoutError:
            for symbol, sent in truth.items():
                print(symbol, sent, httpx.get(f"{query.base_url}/price/{symbol}").text)
                print(isolated.redis.hgetall(price_key(symbol, isolated.partitions)))
            raise

        # The exact original contract, and clean 4xx for bad input.
        missing = httpx.get(f"{query.base_url}/price/DOGEUSDT", timeout=5)
        assert (missing.status_code, missing.json()) == (404, {"error": "price not available"})
        lower = httpx.get(f"{query.base_url}/price/btcusdt", timeout=5)
        assert lower.json()["symbol"] == "BTCUSDT"
        bad = httpx.get(f"{query.base_url}/price/BTC-USDT", timeout=5)
        assert 400 <= bad.status_code < 500 and "error" in bad.json()

        # Nothing lost or duplicated on the way into Kafka: the topic holds exactly what was sent.
        marks = _watermarks(isolated)
        assert sum(high - low for low, high in marks.values()) == TOTAL

        # Every partition that received data was consumed, in Redis (exactly-once bookkeeping)
        # and in the group's committed offsets (lag tooling).
        with_data = sorted(p for p, (low, high) in marks.items() if high > low)
        assert len(with_data) >= 2

        def all_consumed() -> bool:
            stored = isolated.applied()
            committed = _committed(isolated, with_data)
            return all(
                stored.get(p, -1) == marks[p][1] - 1 and committed[p] == marks[p][1]
                for p in with_data
            )

        try:
            wait_for(all_consumed, timeout=30, what="every partition with data to be consumed")
        except TimeoutError:
            print("stored", isolated.applied())
            print("committed", _committed(isolated, with_data), "marks", marks)
            raise

        # The two processors share the partitions (once the cooperative rebalance settles).
        admin = AdminClient(
            isolated.settings.kafka.librdkafka(
                {
                    "logger": logging.getLogger("quiet"),
                }
            )
        )

        def assignment_sizes() -> list[int]:
            group_id = isolated.settings.group_id
            group = admin.describe_consumer_groups([group_id])[group_id].result(timeout=10)
            return sorted(len(m.assignment.topic_partitions) for m in group.members)

        wait_for(lambda: assignment_sizes() == [4, 4], 30, "two members with 4 partitions each")
        pipeline.check_alive()
    finally:
        pipeline.stop()
