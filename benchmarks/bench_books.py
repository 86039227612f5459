"""Books processor throughput and latency on this machine (issue 16).

1. Drain: pre-fill ``raw.depth`` (default 300,000 diff events of ~20 changed levels each, after
   one 1,000-level snapshot per symbol, 20 symbols, 8 partitions), start one ``csp processor``
   with ``CSP_PROCESSOR_BOOKS=true`` and time it from its first applied batch until every
   partition's offset is stored in Redis: depth events/s (and changed levels/s).
2. ``--profile``: one more drain under py-spy: where the processor's CPU goes.
3. Latency: an open-model producer at a steady rate (default 5,000 events/s) stamps each diff's
   event time with the wall clock; a subscriber to ``updates:book`` records now - event time of
   each update when it arrives (HDR histogram). An update carries the newest diff of its symbol
   in the batch, so this is the latency of the newest event per symbol and batch (as
   bench_processor measures trades).
4. The books are checked against TopicBook after the drain (a fast wrong answer is no answer).
5. ``--before REV``: the processor of that git revision too (``git archive REV platform``, run
   with its ``PYTHONPATH``), on the same topic and machine in the same run: its drains alternate
   with the current one's (before, after, before, after, ...) and it gets a latency run of its
   own, so the after/before ratios hold even where the absolute figures drift with the load.

    nox -s bench_books        (python benchmarks/bench_books.py --json reports/bench-books.json)
    nox -s bench_books -- --before origin/main
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from hdrh.histogram import HdrHistogram
from prometheus_client.parser import text_string_to_metric_families

from cryptostream.config import Settings
from cryptostream.core.depth import encode_diff, encode_snapshot
from cryptostream.core.orderbook import DepthDiff, DepthSnapshot, Level
from cryptostream.kafka_clients import producer_config
from cryptostream.redisconn import stored_offsets
from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.supervisor import free_port
from cryptostream.topics import TopicSpec, create_topics, required_topics
from cryptostream_lab.checker import check_books
from profiling import py_spy_argv, summarize_profile
from resources import RoundResources

STALL_S = 60
DEPTH_TOPIC = "raw.depth"
ROOT = Path(__file__).resolve().parent.parent


def export_tree(rev: str, into: Path) -> tuple[str, Path]:
    """(commit, folder holding its ``platform/``): the source of ``rev``, as git archives it."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "platform"], capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit, into


def tree_env(tree: Path | None) -> dict[str, str]:
    """The environment that runs ``tree``'s processor (its package ahead of the installed one)."""
    return {} if tree is None else {"PYTHONPATH": str(tree / "platform")}


def symbols(count: int) -> list[str]:
    return [f"B{i:03d}USDT" for i in range(count)]


class Market:
    """Contiguous diffs of ``levels`` changed levels around a fixed mid (never crossed)."""

    def __init__(self, names: list[str], seed: int, book_levels: int = 1000) -> None:
        self.rng = random.Random(seed)
        self.names = names
        self.ids = dict.fromkeys(names, 1_000_000)
        self.book_levels = book_levels
        # a pool of quantity texts: the benchmark measures the processor, not this generator
        self.qtys = [f"{self.rng.uniform(0.001, 50):.8f}" for _ in range(997)]

    def price(self, ticks: int) -> str:
        return f"{ticks // 100}.{ticks % 100:02d}"

    def snapshot(self, symbol: str, ingest_us: int) -> bytes:
        n = self.book_levels
        bids = tuple((self.price(100_000 - 1 - i), self.qtys[i % 997]) for i in range(n))
        asks = tuple((self.price(100_000 + 1 + i), self.qtys[(i * 3) % 997]) for i in range(n))
        return encode_snapshot(symbol, DepthSnapshot(self.ids[symbol], bids, asks), ingest_us)

    def diff(self, symbol: str, levels: int, event_ms: int, ingest_us: int) -> bytes:
        rng, qtys = self.rng, self.qtys
        first = self.ids[symbol] + 1
        self.ids[symbol] = final = first + rng.randrange(3)

        def side(sign: int) -> tuple[Level, ...]:
            out = []
            for _ in range(levels // 2):
                ticks = 100_000 + sign * (1 + int(rng.expovariate(1 / 40)) % (2 * self.book_levels))
                qty = "0.00000000" if rng.random() < 0.2 else qtys[rng.randrange(997)]
                out.append((self.price(ticks), qty))
            return tuple(out)

        diff = DepthDiff(symbol, first, final, side(-1), side(1), event_ms)
        return encode_diff(diff, ingest_us)


def _produce(producer: Producer, topic: str, symbol: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, symbol.encode())
            return
        except BufferError:
            producer.poll(0.05)


def prefill(settings: Settings, events: int, names: list[str], levels: int) -> None:
    market = Market(names, seed=1)
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    base_ms = 1_718_000_000_000
    t0 = time.monotonic()
    for symbol in names:
        _produce(producer, DEPTH_TOPIC, symbol, market.snapshot(symbol, base_ms * 1000))
    weights = [1 / (i + 1) ** 0.5 for i in range(len(names))]
    for i, symbol in enumerate(market.rng.choices(names, weights, k=events)):
        _produce(
            producer,
            DEPTH_TOPIC,
            symbol,
            market.diff(symbol, levels, base_ms + i // 50, (base_ms + i // 50) * 1000),
        )
        if i % 20000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    print(
        f"prefilled {len(names)} snapshots + {events:,} diffs ({levels} levels each) "
        f"in {time.monotonic() - t0:.1f}s",
        flush=True,
    )


def applied(client: redis.Redis, topic: str = DEPTH_TOPIC, partitions: int = 8) -> int:
    stored = stored_offsets(client, topic, range(partitions), partitions)
    return sum(v + 1 for v in stored.values())


def drain(
    pipeline: Pipeline,
    settings: Settings,
    total: int,
    profile: Path | None = None,
    tree: Path | None = None,
) -> dict[str, float]:
    """One drain of the whole topic into an emptied Redis; ``tree``: that source's processor."""
    client = redis.Redis.from_url(settings.redis_url)
    client.flushall()
    env = {"CSP_GROUP_ID": f"bench-books-{time.monotonic_ns()}", **tree_env(tree)}
    if profile is None:
        pipeline.start_processor(**env)
    else:
        pipeline._spawn(
            "processor-profiled", py_spy_argv(profile, "processor"), pipeline.env(**env)
        )
    wait_for(lambda: applied(client) > 0, 120, "the first applied batch")
    t0, n0 = time.monotonic(), applied(client)
    last_progress, last_done = time.monotonic(), n0
    while (done := applied(client)) < total:
        pipeline.check_alive()
        now = time.monotonic()
        if done > last_done:
            last_progress, last_done = now, done
        elif now - last_progress > STALL_S:
            raise RuntimeError(f"books processor stalled: {done:,} of {total:,} applied")
        time.sleep(0.25)
    elapsed = time.monotonic() - t0
    rate = (total - n0) / elapsed
    label = "before" if tree is not None else "after"
    print(
        f"drain ({label}{', profiled' if profile else ''}): {total - n0:,} depth records in "
        f"{elapsed:.1f}s = {rate:,.0f} events/s",
        flush=True,
    )
    if profile is not None:
        (spy,) = [p for p in pipeline.group.processes if p.proc is not None]
        assert spy.proc is not None
        for child in psutil.Process(spy.proc.pid).children(recursive=True):
            child.send_signal(signal.SIGTERM)
        spy.wait(60)
    pipeline.stop()
    pipeline.group.processes.clear()
    client.close()
    return {"records": total - n0, "seconds": elapsed, "events_per_s": rate}


def read_topic(settings: Settings) -> list[bytes | None]:
    consumer = Consumer(
        settings.kafka.librdkafka(
            {
                "group.id": "bench-read",
                "enable.auto.commit": False,
            }
        )
    )
    parts = consumer.list_topics(DEPTH_TOPIC, timeout=10).topics[DEPTH_TOPIC].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(DEPTH_TOPIC, p))[1] for p in parts}
    consumer.assign([TopicPartition(DEPTH_TOPIC, p, 0) for p in parts])
    values: list[bytes | None] = []
    total = sum(ends.values())
    while len(values) < total:
        for msg in consumer.consume(10_000, 1.0):
            if msg.error() is None:
                values.append(msg.value())
    consumer.close()
    return values


def latency(
    pipeline: Pipeline,
    settings: Settings,
    names: list[str],
    levels: int,
    rate: int,
    seconds: float,
    tree: Path | None = None,
    parts: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    client = redis.Redis.from_url(settings.redis_url)
    client.flushall()
    port = free_port()
    processor = pipeline.start_processor(
        CSP_GROUP_ID=f"bench-books-latency-{time.monotonic_ns()}",
        CSP_PROCESSOR_METRICS_PORT=str(port),
        **tree_env(tree),
    )
    histogram = HdrHistogram(1, 60_000, 3)  # ms
    stop = threading.Event()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("updates:book")
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
                if update["event_time"] is not None:
                    histogram.record_value(max(1, round(now_ms - update["event_time"])))

    listener = threading.Thread(target=listen)
    listener.start()
    load = multiprocessing.get_context("spawn").Process(
        target=open_model_load, args=(settings, names, levels, rate, seconds)
    )
    load.start()
    resources = RoundResources({**(parts or {}), "processor": processor.pid, "bench": os.getpid()})
    load.join(seconds + 60)
    used = resources.finish()
    time.sleep(1)
    stop.set()
    listener.join()
    pubsub.close()
    breakdown = _scrape(port)
    pipeline.stop()
    pipeline.group.processes.clear()
    client.close()
    result: dict[str, Any] = {
        f"p{q}": histogram.get_value_at_percentile(q) for q in (50, 90, 99, 99.9)
    }
    result["processor"] = breakdown
    result["resources"] = used
    result |= {
        "max": histogram.get_max_value(),
        "updates": histogram.get_total_count(),
        "rate": rate,
        "seconds": seconds,
    }
    label = "before" if tree is not None else "after"
    print(f"latency ({label}) at {rate:,} events/s (event -> visible, ms): {result}", flush=True)
    return result


def _scrape(port: int) -> dict[str, float]:
    """The books processor's own view of the run: batches, their sizes, the Lua apply time."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("csp_processor_books_") and not s.labels.get("le")
    }
    p = "csp_processor_books_"
    batches = samples.get(p + "batch_size_count", 0) or 1
    applies = samples.get(p + "redis_apply_seconds_count", 0) or 1
    return {
        "batches": samples.get(p + "batch_size_count", 0),
        "mean_batch_records": samples.get(p + "batch_size_sum", 0) / batches,
        "mean_redis_apply_ms": 1000 * samples.get(p + "redis_apply_seconds_sum", 0) / applies,
        "mean_event_to_visible_ms": 1000
        * samples.get(p + "event_to_visible_seconds_sum", 0)
        / (samples.get(p + "event_to_visible_seconds_count", 0) or 1),
    }


def open_model_load(
    settings: Settings, names: list[str], levels: int, rate: int, seconds: float
) -> None:
    """Snapshots first, then what the schedule says is due (open model), event time = now."""
    market = Market(names, seed=5)
    # ingest's own producer settings (its linger included): the load stands in for ingest,
    # and a 1 ms linger doubled the broker's CPU (tiny produce requests) on these 2 cores
    producer = Producer(producer_config(settings))
    now_us = time.time_ns() // 1000
    for symbol in names:
        _produce(producer, settings.depth_topic, symbol, market.snapshot(symbol, now_us))
    producer.flush(30)
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            symbol = names[market.rng.randrange(len(names))]
            now_ms = time.time_ns() // 1_000_000
            value = market.diff(symbol, levels, now_ms, now_ms * 1000)
            _produce(producer, settings.depth_topic, symbol, value)
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)


GROUPS = [
    ("Kafka fetch (GroupConsumer.poll)", ("ConfluentConsumer.poll",)),
    (
        "record decode (books.decode_record)",
        ("decode_record", "_level_keys", "_valid_qtys", "_all_match", "decode_depth"),
    ),
    (
        "fold: chain rule + levels (BookBatch._apply, _SymbolFold, _settle)",
        ("BookBatch._apply", "BookBatch.fold", "_SymbolFold.", "_settle", "_best_"),
    ),
    (
        "Lua payload (BookBatch.script_call)",
        ("script_call", "BookBatch._symbol_args", "BookBatch.state", "book_update"),
    ),
    (
        "Redis apply: Lua script round trip (redis-py)",
        ("Script.__call__", "evalsha", "execute_command"),
    ),
    ("copies loaded from Redis (load_mirrors)", ("load_mirrors",)),
    (
        "batch loop (BookProcessor.process, BookBatch.add)",
        ("BookProcessor.process", "BookBatch.add"),
    ),
]


def ratios(after: list[float], before: list[float], higher_is_better: bool) -> dict[str, Any]:
    """after/before per pair of runs (adjacent in time) and of the medians."""
    pairs = [round(a / b, 3) for a, b in zip(after, before, strict=True)]
    median = statistics.median(after) / statistics.median(before)
    return {
        "per_round": pairs,
        "of_medians": round(median, 3),
        "better": median > 1 if higher_is_better else median < 1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--levels", type=int, default=20, help="changed levels per diff event")
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument(
        "--latency-warmup",
        type=float,
        default=60,
        help="seconds of the latency load on a throw-away topic before the latency runs (0: "
        "none), reported apart: the broker's JIT compiles the small requests' paths meanwhile",
    )
    parser.add_argument("--rounds", type=int, default=2, help="drains (of each variant)")
    parser.add_argument("--batch-max", default=os.environ.get("CSP_BATCH_MAX", "5000"))
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also measure the processor of this git revision (e.g. origin/main), alternating",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = symbols(args.symbols)
    workdir = Path(tempfile.mkdtemp(prefix="bench-books-"))
    base = Settings(run_dir=workdir)
    results: dict[str, Any] = {
        "events": args.events,
        "symbols": args.symbols,
        "levels_per_event": args.levels,
        "batch_max": int(args.batch_max),
        "command": "flock /tmp/csp-heavy.lock nox -s bench_books"
        + (f" -- --before {args.before}" if args.before else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
    }
    before: Path | None = None
    if args.before:
        commit, before = export_tree(args.before, workdir / "before")
        results["before"] = {"rev": args.before, "commit": commit}
    variants: list[tuple[str, Path | None]] = [("after", None)]
    if before is not None:
        variants.insert(0, ("before", before))  # so each round ends with the current code
    with LocalStack(base, workdir / "stack") as stack:
        settings = base.model_copy(
            update={
                "kafka_bootstrap": stack.kafka_bootstrap,
                "redis_url": stack.redis_url,
                "depth_topic": DEPTH_TOPIC,
            }
        )
        create_topics(settings.kafka, required_topics(settings))  # raw.depth among them
        env = {
            "CSP_PROCESSOR_BOOKS": "true",
            "CSP_DEPTH_TOPIC": DEPTH_TOPIC,
            "CSP_BATCH_MAX": str(args.batch_max),
        }
        prefill(settings, args.events, names, args.levels)
        total = args.events + len(names)
        pipeline = Pipeline(
            workdir, stack.kafka_bootstrap, stack.redis_url, names[:3], extra_env=env
        )
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
        for _ in range(args.rounds):
            for label, tree in variants:
                runs[label].append(drain(pipeline, settings, total, tree=tree))
        for label, _tree in variants:
            median = statistics.median(r["events_per_s"] for r in runs[label])
            results["drain" if label == "after" else "drain_before"] = {
                "median_events_per_s": median,
                "runs": runs[label],
                "median_levels_per_s": median * args.levels,
            }
        if before is not None:
            results["drain_ratio_after_to_before"] = ratios(
                [r["events_per_s"] for r in runs["after"]],
                [r["events_per_s"] for r in runs["before"]],
                higher_is_better=True,
            )
        if args.check:  # the books of the last drain: the current code's
            client = redis.Redis.from_url(settings.redis_url)
            report = check_books(client, read_topic(settings))
            client.close()
            results["check"] = report.summary()
            print(f"check after the drain: {report.summary()}", flush=True)
            if not report.ok:
                raise SystemExit("the books differ from TopicBook's: the figures do not count")
        if args.profile:
            spy = workdir / "processor.spy.txt"
            results["profiled_drain"] = drain(pipeline, settings, total, spy)
            results["profile"] = summarize_profile(spy, GROUPS)
            print(orjson.dumps(results["profile"], option=orjson.OPT_INDENT_2).decode(), flush=True)
        parts = {
            "broker": stack.kafka.process.pid if stack.kafka and stack.kafka.process else None,
            "redis": stack.redis.process.pid if stack.redis and stack.redis.process else None,
        }
        schedule: list[tuple[str, Path | None]] = list(variants)
        if args.latency_warmup > 0:
            schedule.insert(0, ("warmup", None))
        for label, tree in schedule:
            # a topic of its own per latency run, so it starts with nothing to catch up on
            topic = f"{DEPTH_TOPIC}.latency.{label}"
            lat_settings = settings.model_copy(update={"depth_topic": topic})
            create_topics(lat_settings.kafka, [TopicSpec(topic, settings.partitions, 1)])
            pipeline = Pipeline(
                workdir,
                stack.kafka_bootstrap,
                stack.redis_url,
                names[:3],
                extra_env={**env, "CSP_DEPTH_TOPIC": topic},
            )
            seconds = args.latency_warmup if label == "warmup" else args.latency_seconds
            key = {"after": "latency_ms", "before": "latency_ms_before"}.get(
                label, "latency_warmup"
            )
            results[key] = latency(
                pipeline, lat_settings, names, args.levels, args.rate, seconds, tree, parts
            )
        if before is not None:
            results["latency_p99_ratio_after_to_before"] = round(
                results["latency_ms"]["p99"] / results["latency_ms_before"]["p99"], 3
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
