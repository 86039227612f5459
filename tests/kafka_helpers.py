"""Test helpers that talk to the real broker."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, Producer, TopicPartition

from cryptostream.config import Settings
from cryptostream.core.codec import encode_key, encode_trade
from cryptostream.core.trades import Trade
from cryptostream.kafka_clients import producer_config


def synthetic_trades(symbols: list[str], count: int, seed: int = 1) -> list[Trade]:
    rng = random.Random(seed)
    next_id = dict.fromkeys(symbols, 1000)
    trades = []
    for i in range(count):
        symbol = rng.choice(symbols)
        next_id[symbol] += 1
        price = f"{rng.uniform(1, 70000):.8f}"
        trades.append(
            Trade(
                symbol,
                next_id[symbol],
                price,
                f"{rng.uniform(0.001, 5):.8f}",
                1_718_000_000_000 + i,
                1_718_000_000_001 + i,
                rng.random() < 0.5,
            )
        )
    return trades


def produce(
    settings: Settings, trades: Iterable[Trade], raw: Iterable[tuple[bytes, bytes]] = ()
) -> int:
    producer = Producer(producer_config(settings))
    count = 0
    for trade in trades:
        # the ingest receive time: when the trade happened (a trade may not lie after it)
        value = encode_trade(trade, trade.trade_time * 1000)
        producer.produce(settings.topic, value, encode_key(trade.symbol))
        count += 1
        if count % 10000 == 0:
            producer.poll(0)
    for key, value in raw:
        producer.produce(settings.topic, value, key)
        count += 1
    assert producer.flush(30) == 0
    return count


def produce_to(settings: Settings, placed: Iterable[tuple[int, Trade]]) -> int:
    """Trades to the partitions given, whatever their keys hash to (a foreign producer)."""
    producer = Producer(producer_config(settings))
    count = 0
    for partition, trade in placed:
        value = encode_trade(trade, trade.trade_time * 1000)
        producer.produce(settings.topic, value, encode_key(trade.symbol), partition=partition)
        count += 1
    assert producer.flush(30) == 0
    return count


def watermarks(settings: Settings, topic: str | None = None) -> dict[int, tuple[int, int]]:
    topic = topic or settings.topic
    consumer = Consumer(settings.kafka.librdkafka({"group.id": "probe"}))
    try:
        meta = consumer.list_topics(topic, timeout=10)
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in meta.topics[topic].partitions
        }
    finally:
        consumer.close()


def read_all(settings: Settings, topic: str) -> list[bytes]:
    marks = watermarks(settings, topic)
    total = sum(high - low for low, high in marks.values())
    consumer = Consumer(
        settings.kafka.librdkafka(
            {
                "group.id": "reader",
                "enable.auto.commit": False,
            }
        )
    )
    consumer.assign([TopicPartition(topic, p, low) for p, (low, _h) in marks.items()])
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(values) < total:
            # a short timeout: consume() waits for all 1000 messages or the timeout
            for msg in consumer.consume(1000, timeout=0.1):
                if msg.error() is None:
                    values.append(msg.value())
            assert time.monotonic() < deadline, f"read {len(values)} of {total} records of {topic}"
    finally:
        consumer.close()
    return values
