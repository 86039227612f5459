"""Processor throughput and latency on this machine (issue 5).

1. Drain: pre-fill a topic (default 2,000,000 trades, 8 partitions, 600 symbols), start one
   ``csp processor`` and time it from its first applied batch until every partition's offset is
   stored in Redis.
2. Consume-loop ceiling of each Kafka client library on the same topic (fetch + decode, no Redis):
   confluent-kafka (librdkafka) and aiokafka.
3. Latency: an open-model producer at a steady rate (default 10,000 trades/s) stamps each record's
   event time; a pub/sub subscriber to ``updates:price`` records now - event time when each update
   becomes visible (HDR histogram).

    python benchmarks/bench_processor.py --json reports/bench-processor.json
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from hdrh.histogram import HdrHistogram

from cryptostream.config import Settings
from cryptostream.core.codec import decode_trade, encode_trade
from cryptostream.core.trades import Trade
from cryptostream.kafka_clients import make_consumer, producer_config
from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.topics import create_topics, required_topics


def symbols(count: int) -> list[str]:
    return [f"S{i:04d}USDT" for i in range(count)]


def prefill(settings: Settings, total: int, names: list[str], seed: int) -> None:
    rng = random.Random(seed)
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    ids = dict.fromkeys(names, 0)
    base = 1_718_000_000_000
    # Pre-encode a small pool of price/qty strings: the benchmark measures the processor, not us.
    prices = [f"{rng.uniform(1, 70000):.8f}" for _ in range(1000)]
    qtys = [f"{rng.uniform(0.001, 5):.8f}" for _ in range(1000)]
    weights = [1 / (i + 1) for i in range(len(names))]  # Zipf-like: a few symbols dominate
    chosen = rng.choices(names, weights, k=total)
    t0 = time.monotonic()
    for i, symbol in enumerate(chosen):
        ids[symbol] += 1
        trade = Trade(symbol, ids[symbol], prices[i % 1000], qtys[(i * 7) % 1000], base + i // 50,
                      base + i // 50, bool(i & 1))  # fmt: skip
        while True:
            try:
                producer.produce(settings.topic, encode_trade(trade, 1), symbol.encode())
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    print(f"prefilled {total:,} trades in {time.monotonic() - t0:.1f}s", flush=True)


def end_offsets(settings: Settings) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-probe"})
    try:
        parts = consumer.list_topics(settings.topic, timeout=10).topics[settings.topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(settings.topic, p), timeout=10)[1]
            for p in parts
        }
    finally:
        consumer.close()


def applied(client: redis.Redis, topic: str) -> int:
    stored = client.hgetall(f"offsets:{topic}")
    return sum(int(v) + 1 for v in stored.values())


def drain(pipeline: Pipeline, settings: Settings, total: int) -> dict[str, float]:
    client = redis.Redis.from_url(settings.redis_url)
    pipeline.start_processor()
    wait_for(lambda: applied(client, settings.topic) > 0, 120, "the first applied batch")
    t0, n0 = time.monotonic(), applied(client, settings.topic)
    samples = []
    while (done := applied(client, settings.topic)) < total:
        pipeline.check_alive()
        samples.append((time.monotonic() - t0, done))
        time.sleep(0.25)
    elapsed = time.monotonic() - t0
    rate = (total - n0) / elapsed
    print(f"drain: {total - n0:,} records in {elapsed:.1f}s = {rate:,.0f} trades/s", flush=True)
    pipeline.stop()
    pipeline.group.processes.clear()
    client.close()
    return {"records": total - n0, "seconds": elapsed, "trades_per_s": rate}


def consume_confluent(settings: Settings, total: int) -> float:
    # The processor's own consumer configuration (fetch sizes matter: see kafka_clients.py).
    consumer = make_consumer(settings.model_copy(update={"group_id": "bench-ck"}))
    parts = end_offsets(settings)
    consumer.assign([TopicPartition(settings.topic, p, 0) for p in parts])
    count = 0
    t0 = time.monotonic()
    while count < total:
        for msg in consumer.consume(5000, timeout=1.0):
            if msg.error() is None:
                decode_trade(msg.value())
                count += 1
    elapsed = time.monotonic() - t0
    consumer.close()
    return count / elapsed


def consume_aiokafka(settings: Settings, total: int) -> float:
    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as AioTP

    async def run() -> float:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20)  # fmt: skip
        await consumer.start()
        parts = [AioTP(settings.topic, p) for p in end_offsets(settings)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        count = 0
        t0 = time.monotonic()
        while count < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                for record in records:
                    decode_trade(record.value)
                    count += 1
        elapsed = time.monotonic() - t0
        await consumer.stop()
        return count / elapsed

    return asyncio.run(run())


def latency(
    pipeline: Pipeline, settings: Settings, names: list[str], rate: int, seconds: float
) -> dict[str, Any]:
    client = redis.Redis.from_url(settings.redis_url)
    pipeline.start_processor()
    histogram = HdrHistogram(1, 60_000, 3)  # ms
    stop = threading.Event()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("updates:price")
    warmup_until = time.time() + 3

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            now_ms = time.time() * 1000
            if now_ms / 1000 < warmup_until:
                continue
            for update in orjson.loads(message["data"]):
                histogram.record_value(max(1, round(now_ms - update["event_time"])))

    listener = threading.Thread(target=listen)
    listener.start()
    # The load runs in its own process, so it never holds this process's GIL against the listener.
    load = multiprocessing.get_context("spawn").Process(
        target=open_model_load, args=(settings, names, rate, seconds)
    )
    load.start()
    load.join(seconds + 60)
    time.sleep(1)
    stop.set()
    listener.join()
    pubsub.close()
    pipeline.stop()
    client.close()
    result = {f"p{q}": histogram.get_value_at_percentile(q) for q in (50, 90, 99, 99.9)}
    result |= {"max": histogram.get_max_value(), "updates": histogram.get_total_count(),
               "rate": rate, "seconds": seconds}  # fmt: skip
    print(f"latency at {rate:,}/s (event -> visible, ms): {result}", flush=True)
    return result


def open_model_load(settings: Settings, names: list[str], rate: int, seconds: float) -> None:
    """Send what the schedule says is due (open model), stamping each record's event time."""
    producer = Producer(producer_config(settings, **{"linger.ms": 1}))
    ids = dict.fromkeys(names, 10_000_000)
    rng = random.Random(5)
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            symbol = names[rng.randrange(len(names))]
            ids[symbol] += 1
            now_ms = int(time.time() * 1000)
            trade = Trade(
                symbol, ids[symbol], f"{rng.uniform(1, 100):.8f}", "1", now_ms, now_ms, False
            )
            producer.produce(settings.topic, encode_trade(trade, now_ms * 1000), symbol.encode())
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=2_000_000)
    parser.add_argument("--symbols", type=int, default=600)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = symbols(args.symbols)
    workdir = Path(tempfile.mkdtemp(prefix="bench-processor-"))
    base = Settings(run_dir=workdir)
    results: dict[str, Any] = {"trades": args.trades, "symbols": args.symbols,
                               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "platform": platform.platform()}}  # fmt: skip
    with LocalStack(base, workdir / "stack") as stack:
        settings = base.model_copy(update={"kafka_bootstrap": stack.kafka_bootstrap,
                                           "redis_url": stack.redis_url})  # fmt: skip
        create_topics(stack.kafka_bootstrap, required_topics(settings))
        prefill(settings, args.trades, names, seed=1)
        pipeline = Pipeline(workdir, stack.kafka_bootstrap, stack.redis_url, names[:3],
                            extra_env={"CSP_BATCH_MAX": os.environ.get("CSP_BATCH_MAX", "20000")})  # fmt: skip
        results["drain"] = drain(pipeline, settings, args.trades)
        results["consume_loop_trades_per_s"] = {
            "confluent_kafka": consume_confluent(settings, args.trades),
            "aiokafka": consume_aiokafka(settings, args.trades),
        }
        print(f"consume loop (fetch + decode): {results['consume_loop_trades_per_s']}", flush=True)
        redis.Redis.from_url(stack.redis_url).flushall()
        latency_settings = settings.model_copy(
            update={"topic": "latency.trades", "dlq_topic": "latency.dlq"}
        )
        create_topics(stack.kafka_bootstrap, required_topics(latency_settings))
        pipeline = Pipeline(workdir, stack.kafka_bootstrap, stack.redis_url, names[:3],
                            extra_env={"CSP_TOPIC": "latency.trades", "CSP_DLQ_TOPIC": "latency.dlq"})  # fmt: skip
        results["latency_ms"] = latency(
            pipeline, latency_settings, names, args.rate, args.latency_seconds
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
