"""Processor throughput and latency on this machine (issue 5), with each Kafka client backend.

1. Drain: pre-fill a topic (default 2,000,000 trades, 8 partitions, 600 symbols), start one
   ``csp processor`` and time it from its first applied batch until every partition's offset is
   stored in Redis; once per backend (``CSP_PROCESSOR_KAFKA_CLIENT``: confluent, aiokafka), on the
   same topic into an emptied Redis, alternating twice, so both see the same machine state.
2. Consume-loop ceiling of each backend through the processor's consumer interface on the same
   topic (fetch + decode, no Redis).
3. Latency: an open-model producer at a steady rate (default 10,000 trades/s) stamps each record's
   event time; a pub/sub subscriber to ``updates:price`` records now - event time when each update
   becomes visible (HDR histogram), split at the processor's batch (``update_time``) into
   event -> batch (Kafka, fetch, fold) and batch -> visible (the Redis apply, pub/sub); after
   warm-up rounds (``--latency-warmup`` seconds, then more rounds until the broker's JIT is
   quiet: ``latency_warmups``), per backend, alternating, ``--rounds`` times
   (``--only-latency``: nothing else).
4. ``--profile``: one more confluent drain under py-spy: where the processor's CPU goes.
5. Kafka's own consumer (ConsumerPerformance) reading the same prefilled topic in the same run:
   the drain is reported as a fraction of it.
6. ``--baseline DIR`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/base HEAD~3``):
   confluent drains and latency rounds of that tree's processor alternate with the current
   one's (ABBA), so a code change is measured as a ratio within one run (``--backends
   confluent`` skips aiokafka to keep that run short).
7. Redis topologies (``--redis single|cluster|both``, default both): confluent drains of the
   same topic into one Redis node with each apply style (``CSP_PROCESSOR_APPLY``: ``batch``, one
   script call per fetched batch; ``partition``, one per partition, pipelined) and into a local
   Redis Cluster (3 masters with a replica each; always ``partition``), alternating
   ``--rounds`` times: the throughput of each, as ratios within one run.

    nox -s bench_processor        (python benchmarks/bench_processor.py --json ...)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from hdrh.histogram import HdrHistogram

from cryptostream.config import Settings
from cryptostream.core.codec import decode_trade, encode_trade, encode_trade_fields
from cryptostream.core.trades import Trade
from cryptostream.kafka_clients import producer_config
from cryptostream.processor.consumers import make_group_consumer
from cryptostream.redisconn import make_client, stored_offsets
from cryptostream.runtime import tune_gc
from cryptostream.stack.kafka import resolve_kafka_jars
from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.redis_cluster import RedisCluster
from cryptostream.topics import create_topics, required_topics
from cryptostream_lab.harness import ceilings
from profiling import py_spy_argv, summarize_profile
from recorded import TextWalk
from resources import RoundResources

STALL_S = 60  # a drain with no progress for this long has failed (never hang the session)


def symbols(count: int) -> list[str]:
    return [f"S{i:04d}USDT" for i in range(count)]


def prefill(settings: Settings, total: int, names: list[str], seed: int) -> str:
    """Fill the topic; returns where the price and quantity texts came from (recorded.py)."""
    rng = random.Random(seed)
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    ids = dict.fromkeys(names, 0)
    base = 1_718_000_000_000
    texts = TextWalk(names, rng)
    weights = [1 / (i + 1) for i in range(len(names))]  # Zipf-like: a few symbols dominate
    chosen = rng.choices(names, weights, k=total)
    t0 = time.monotonic()
    for i, symbol in enumerate(chosen):
        ids[symbol] += 1
        price, qty = texts.next(symbol)
        trade = Trade(
            symbol,
            ids[symbol],
            price,
            qty,
            base + i // 50,
            base + i // 50,
            bool(i & 1),
        )
        while True:
            try:
                producer.produce(
                    settings.topic, encode_trade(trade, trade.trade_time * 1000), symbol.encode()
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    print(
        f"prefilled {total:,} trades ({texts.source}) in {time.monotonic() - t0:.1f}s", flush=True
    )
    return texts.source


def end_offsets(settings: Settings) -> dict[int, int]:
    consumer = Consumer(settings.kafka.librdkafka({"group.id": "bench-probe"}))
    try:
        parts = consumer.list_topics(settings.topic, timeout=10).topics[settings.topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(settings.topic, p), timeout=10)[1]
            for p in parts
        }
    finally:
        consumer.close()


def applied(client: Any, topic: str, partitions: int) -> int:
    stored = stored_offsets(client, topic, range(partitions), partitions)
    return sum(v + 1 for v in stored.values())


@dataclass(frozen=True)
class Target:
    """Where a drain applies: one Redis node or a cluster, and the apply style."""

    label: str
    redis_url: str
    cluster: bool
    style: str  # CSP_PROCESSOR_APPLY


def drain(
    pipeline: Pipeline,
    settings: Settings,
    total: int,
    backend: str,
    profile: Path | None = None,
    tree: Path | None = None,
    target: Target | None = None,
) -> dict[str, float]:
    """One drain; ``tree``: run the processor of that checkout instead of this one; ``target``:
    into that Redis with that apply style (default: the stack's one node, the default style)."""
    url = target.redis_url if target else settings.redis_url
    client = make_client(url, target.cluster if target else False)
    client.flushall()
    env = {"CSP_PROCESSOR_KAFKA_CLIENT": backend, "CSP_GROUP_ID": f"bench-{backend}"}
    if target is not None:
        env |= {
            "CSP_REDIS_URL": url,
            "CSP_REDIS_CLUSTER": str(target.cluster).lower(),
            "CSP_PROCESSOR_APPLY": target.style,
            "CSP_GROUP_ID": f"bench-{backend}-{target.label}",
        }
    if tree is not None:
        env["PYTHONPATH"] = f"{tree / 'platform'}{os.pathsep}{tree / 'simulator'}"
    if profile is None:
        pipeline.start_processor(**env)
    else:
        pipeline._spawn(
            "processor-profiled", py_spy_argv(profile, "processor"), pipeline.env(**env)
        )
    n = settings.partitions
    wait_for(lambda: applied(client, settings.topic, n) > 0, 120, "the first applied batch")
    t0, n0 = time.monotonic(), applied(client, settings.topic, n)
    last_progress, last_done = time.monotonic(), n0
    while (done := applied(client, settings.topic, n)) < total:
        pipeline.check_alive()
        now = time.monotonic()
        if done > last_done:
            last_progress, last_done = now, done
        elif now - last_progress > STALL_S:
            stored = stored_offsets(client, settings.topic, range(n), n)
            raise RuntimeError(
                f"{backend} processor stalled: {done:,} of {total:,} applied, no progress for "
                f"{STALL_S} s; offsets stored in Redis: {stored}"
            )
        time.sleep(0.25)
    elapsed = time.monotonic() - t0
    rate = (total - n0) / elapsed
    label = (
        f"{backend}{', profiled' if profile else ''}{f', baseline {tree}' if tree else ''}"
        f"{f', {target.label}' if target else ''}"
    )
    print(
        f"drain ({label}): {total - n0:,} records in {elapsed:.1f}s = {rate:,.0f} trades/s",
        flush=True,
    )
    if profile is not None:  # stop the profiled interpreter only: py-spy writes when it exits
        (spy,) = [p for p in pipeline.group.processes if p.proc is not None]
        assert spy.proc is not None
        for child in psutil.Process(spy.proc.pid).children(recursive=True):
            child.send_signal(signal.SIGTERM)
        spy.wait(60)
    pipeline.stop()
    pipeline.group.processes.clear()
    client.close()
    return {"records": total - n0, "seconds": elapsed, "trades_per_s": rate}


def consumer_performance(lib: Path, bootstrap: str, topic: str, records: int) -> float:
    """Kafka's own consumer (the ConsumerPerformance tool) reading the whole topic: records/s."""
    argv = [
        *ceilings._java(lib),
        ceilings.CONSUMER_CLASS,
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--messages",
        str(records),
        "--timeout",
        "60000",
    ]
    return ceilings.parse_consumer_perf(ceilings._run(argv, 300))["records_per_s"]


def consume_loop(settings: Settings, total: int, backend: str) -> float:
    """Fetch + decode through the processor's consumer interface, no Redis."""
    consumer = make_group_consumer(
        settings.model_copy(
            update={"processor_kafka_client": backend, "group_id": f"bench-loop-{backend}"}
        )
    )
    consumer.assign_from_beginning()
    count = 0
    t0 = last_record = time.monotonic()
    while count < total:
        records = consumer.poll(5000, 1.0)
        for record in records:
            decode_trade(record.value)
        count += len(records)
        if records:
            last_record = time.monotonic()
        elif time.monotonic() - last_record > STALL_S:
            raise RuntimeError(f"{backend} consume loop stalled after {count:,} of {total:,}")
    elapsed = time.monotonic() - t0
    consumer.close()
    return count / elapsed


def latency(
    pipeline: Pipeline,
    settings: Settings,
    names: list[str],
    rate: int,
    seconds: float,
    backend: str,
    parts: dict[str, int | None] | None = None,
    tree: Path | None = None,
) -> dict[str, Any]:
    """Event -> visible at a steady rate, measured once the processor is consuming: a probe
    record is produced every 100 ms until its update is visible (the processor's start-up and
    group join are not latency), then the load starts. Also the worst latency per second of the
    run (``per_second_max``), which tells a start-up transient from a slow round."""
    tune_gc()  # (a full collection of this process would delay the listener: not latency)
    client = redis.Redis.from_url(settings.redis_url)
    client.flushall()
    env = {"CSP_PROCESSOR_KAFKA_CLIENT": backend, "CSP_GROUP_ID": f"lat-{backend}"}
    if tree is not None:  # that checkout's processor instead of this one's
        env["PYTHONPATH"] = f"{tree / 'platform'}{os.pathsep}{tree / 'simulator'}"
    processor = pipeline.start_processor(**env)
    histogram = HdrHistogram(1, 60_000, 3)  # ms
    # where the time goes: event -> the processor's batch (update_time: Kafka, fetch, fold)
    # and from there -> visible (the Redis apply, pub/sub, this listener)
    to_batch = HdrHistogram(1, 60_000, 3)
    to_visible = HdrHistogram(1, 60_000, 3)
    sampled = [0]
    per_second: dict[int, int] = {}
    stop = threading.Event()
    visible = threading.Event()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("updates:price")
    measure_from = [float("inf")]  # set when the load starts (+ a short warm-up)

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            visible.set()
            now_ms = time.time() * 1000
            if now_ms / 1000 < measure_from[0]:
                continue
            second = int(now_ms / 1000 - measure_from[0])
            for update in orjson.loads(message["data"]):
                value = max(1, round(now_ms - update["event_time"]))
                histogram.record_value(value)
                sampled[0] += 1
                if sampled[0] % 8 == 0:  # (the split is a diagnostic: one update in 8)
                    to_batch.record_value(max(1, update["update_time"] - update["event_time"]))
                    to_visible.record_value(max(1, round(now_ms - update["update_time"])))
                per_second[second] = max(per_second.get(second, 0), value)

    listener = threading.Thread(target=listen)
    listener.start()
    t_start = time.monotonic()
    probe = Producer(producer_config(settings, **{"linger.ms": 0}))
    probe_id = 1
    while not visible.wait(0.1):
        if time.monotonic() - t_start > 120:
            raise RuntimeError(f"{backend} processor applied nothing within 120 s")
        now_ms = int(time.time() * 1000)
        trade = Trade(names[0], probe_id, "1", "1", now_ms, now_ms, False)
        probe.produce(settings.topic, encode_trade(trade, now_ms * 1000), names[0].encode())
        probe.poll(0)
        probe_id += 1
    probe.flush(10)
    ready_s = time.monotonic() - t_start
    # The load runs in its own process, so it never holds this process's GIL against the listener.
    context = multiprocessing.get_context("spawn")
    load_ready = context.Event()
    load_cpu = context.Queue()
    load = context.Process(
        target=open_model_load, args=(settings, names, rate, seconds, load_ready, load_cpu)
    )
    # Sampled before the load starts: its jstat calls start JVMs, which must not compete with
    # the measured seconds (they did, and the first seconds of each round paid for them).
    resources = RoundResources({**(parts or {}), "processor": processor.pid, "bench": os.getpid()})
    load.start()
    if not load_ready.wait(60):
        raise RuntimeError("the load generator did not start within 60 s")
    measure_from[0] = time.time() + 1  # one second for the load to reach its rate
    load.join(seconds + 60)
    used = resources.finish()
    if not load_cpu.empty():
        used["load_cpu_pct"] = round(100 * load_cpu.get() / seconds, 1)
    time.sleep(1)
    stop.set()
    listener.join()
    pubsub.close()
    pipeline.stop()
    client.close()
    result: dict[str, Any] = {
        f"p{q}": histogram.get_value_at_percentile(q) for q in (50, 90, 99, 99.9)
    }
    for name, part in (("event_to_batch", to_batch), ("batch_to_visible", to_visible)):
        result[name] = {f"p{q}": part.get_value_at_percentile(q) for q in (50, 99)}
    result |= {
        "max": histogram.get_max_value(),
        "updates": histogram.get_total_count(),
        "rate": rate,
        "seconds": seconds,
        "processor_ready_s": round(ready_s, 2),
        "resources": used,
        "per_second_max": [per_second.get(i, 0) for i in range(max(per_second, default=-1) + 1)],
    }
    label = backend if tree is None else f"{backend}, baseline {tree}"
    print(f"latency at {rate:,}/s ({label}; event -> visible, ms): {result}", flush=True)
    return result


def open_model_load(
    settings: Settings, names: list[str], rate: int, seconds: float, ready: Any, cpu: Any
) -> None:
    """Send what the schedule says is due (open model), stamping each record's event time. The
    topic's metadata is fetched first: a record stamped before its producer knows the partition
    leaders would wait for them, and that wait is not the pipeline's latency."""
    texts = TextWalk(names, random.Random(5))  # genuine price and quantity texts (recorded.py)
    # ingest's own producer settings (its linger included): the load stands in for ingest,
    # and a 1 ms linger doubled the broker's CPU (tiny produce requests) on these 2 cores
    producer = Producer(producer_config(settings))
    producer.list_topics(settings.topic, timeout=30)
    ready.set()
    ids = dict.fromkeys(names, 10_000_000)
    rng = random.Random(5)
    keys = {name: name.encode() for name in names}
    start = time.monotonic()
    cpu_start = time.process_time()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            symbol = names[rng.randrange(len(names))]
            ids[symbol] += 1
            now_ms = int(time.time() * 1000)
            price, qty = texts.next(symbol)
            value = encode_trade_fields(
                symbol,
                ids[symbol],
                price,
                qty,
                now_ms,
                now_ms,
                False,
                now_ms * 1000,
            )  # (ingest's encoder: the load costs the machine what ingest would)
            producer.produce(settings.topic, value, keys[symbol])
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)
    cpu.put(time.process_time() - cpu_start)


BACKENDS = ("confluent", "aiokafka")

# Functions (py-spy frame names) grouped into parts of the processor.
GROUPS = [
    ("Kafka fetch (GroupConsumer.poll)", ("ConfluentConsumer.poll", "AiokafkaConsumer.poll")),
    ("record decode (core.codec.decode_scaled)", ("decode_scaled", "scaled")),
    ("view aggregation (Batch._fold, integers)", ("Batch._fold", "SymbolBatch.")),
    ("Lua payload encoding (Batch.script_payload)", ("script_payload",)),
    (
        "Redis apply: Lua script round trip (redis-py)",
        ("Script.__call__", "evalsha", "execute_command", "_with_redis_retry"),
    ),
    ("metrics (Processor._observe)", ("_observe",)),
    ("batch loop (Processor.process, Batch.add)", ("Processor.process", "Batch.add")),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=2_000_000)
    parser.add_argument("--symbols", type=int, default=600)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="drains per backend, alternating")
    parser.add_argument(
        "--latency-rounds", type=int, help="latency rounds per backend (default: --rounds)"
    )
    parser.add_argument(
        "--latency-warmup",
        type=float,
        default=60,
        help="seconds of the latency load on a throw-away topic before the rounds (0: none), "
        "then up to 4 more rounds while the broker's JIT compiles; reported apart, not in the "
        "verdicts",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one more confluent drain under py-spy",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--baseline", type=Path, help="an earlier checkout to drain against")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated: confluent,aiokafka"
    )
    parser.add_argument(
        "--redis",
        choices=("single", "cluster", "both"),
        default="both",
        help="Redis topologies of the topology drains (7.); single: one node only",
    )
    parser.add_argument(
        "--apply-styles",
        default="batch,partition",
        help="apply styles on one Redis node in the topology drains (comma-separated)",
    )
    parser.add_argument(
        "--only-topologies",
        action="store_true",
        help="only the topology drains (7.): no backend drains, consume loops, profile, latency",
    )
    parser.add_argument(
        "--only-latency",
        action="store_true",
        help="only the latency rounds (3.): no prefill, drains, consume loops or profile",
    )
    args = parser.parse_args()
    names = symbols(args.symbols)
    workdir = Path(tempfile.mkdtemp(prefix="bench-processor-"))
    base = Settings(run_dir=workdir)
    results: dict[str, Any] = {
        "trades": args.trades,
        "symbols": args.symbols,
        "command": "flock /tmp/csp-heavy.lock nox -s bench_processor",
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
    }
    cluster: RedisCluster | None = None
    with LocalStack(base, workdir / "stack") as stack:
        settings = base.model_copy(
            update={"kafka_bootstrap": stack.kafka_bootstrap, "redis_url": stack.redis_url}
        )
        if args.redis != "single":
            cluster = RedisCluster(workdir / "redis-cluster").start()
        try:
            run_all(args, stack, settings, names, results, cluster, workdir)
        finally:
            if cluster is not None:
                cluster.stop()
    # the broker's and Redis's data (~0.1-0.2 GB a run); the services' logs stay
    for data in ("stack", "redis-cluster"):
        shutil.rmtree(workdir / data, ignore_errors=True)
    print(f"logs: {workdir / 'logs'}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


def topology_drains(
    args: argparse.Namespace,
    pipeline: Pipeline,
    settings: Settings,
    cluster: RedisCluster | None,
) -> dict[str, Any]:
    """7.: the same topic drained into each Redis topology and apply style, alternating."""
    targets = []
    if args.redis != "cluster":
        for style in (s for s in args.apply_styles.split(",") if s):
            targets.append(Target(f"single-{style}", settings.redis_url, False, style))
    if cluster is not None:
        targets.append(Target("cluster-partition", cluster.url, True, "partition"))
    runs: dict[str, list[dict[str, float]]] = {t.label: [] for t in targets}
    for _round in range(args.rounds):
        for target in targets:
            runs[target.label].append(
                drain(pipeline, settings, args.trades, "confluent", target=target)
            )
    rates = {label: statistics.median(r["trades_per_s"] for r in rs) for label, rs in runs.items()}
    out: dict[str, Any] = {
        label: {"median_trades_per_s": rates[label], "runs": rs} for label, rs in runs.items()
    }
    if "single-batch" in rates and "single-partition" in rates:
        out["ratio_single_partition_to_batch"] = round(
            rates["single-partition"] / rates["single-batch"], 3
        )
    single = [rates[k] for k in rates if k.startswith("single-")]
    if single and "cluster-partition" in rates:
        out["ratio_cluster_to_best_single"] = round(rates["cluster-partition"] / max(single), 3)
    print(f"topology drains: {orjson.dumps(out).decode()}", flush=True)
    return out


def run_all(
    args: argparse.Namespace,
    stack: LocalStack,
    settings: Settings,
    names: list[str],
    results: dict[str, Any],
    cluster: RedisCluster | None,
    workdir: Path,
) -> None:
    backends = tuple(b for b in args.backends.split(",") if b)
    if args.only_latency:
        latency_rounds(args, stack, settings, names, results, backends, workdir)
        return
    create_topics(settings.kafka, required_topics(settings))
    results["prefill_texts"] = prefill(settings, args.trades, names, seed=1)
    pipeline = Pipeline(
        workdir,
        stack.kafka_bootstrap,
        stack.redis_url,
        names[:3],
        extra_env={"CSP_BATCH_MAX": os.environ.get("CSP_BATCH_MAX", "20000")},
    )
    results["topologies"] = topology_drains(args, pipeline, settings, cluster)
    if args.only_topologies:
        return
    lib = resolve_kafka_jars(settings.cache_dir, settings.kafka_version)
    kafka_consumer = consumer_performance(lib, stack.kafka_bootstrap, settings.topic, args.trades)
    print(
        f"Kafka ConsumerPerformance on the same topic: {kafka_consumer:,.0f} records/s",
        flush=True,
    )
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    if args.baseline:
        runs["confluent@baseline"] = []
    for round_ in range(args.rounds):
        for backend in backends:
            # ABBA with a baseline: the first drain after the prefill is the slowest (a
            # cold broker), and must not always be this tree's
            trees = [None, args.baseline] if args.baseline and backend == "confluent" else [None]
            for tree in trees if round_ % 2 == 0 else trees[::-1]:
                label = backend if tree is None else "confluent@baseline"
                runs[label].append(drain(pipeline, settings, args.trades, backend, tree=tree))
    results["drain"] = {
        b: {
            "median_trades_per_s": statistics.median(r["trades_per_s"] for r in runs_),
            "runs": runs_,
        }
        for b, runs_ in runs.items()
    }
    rates = {b: results["drain"][b]["median_trades_per_s"] for b in runs}
    results["kafka_consumer_performance_records_per_s"] = kafka_consumer
    results["drain_fraction_of_kafka_consumer"] = {
        b: round(rate / kafka_consumer, 3) for b, rate in rates.items()
    }
    if "aiokafka" in rates and "confluent" in rates:
        results["drain_ratio_confluent_to_aiokafka"] = round(
            rates["confluent"] / rates["aiokafka"], 3
        )
    if args.baseline:
        results["baseline"] = str(args.baseline)
        results["drain_ratio_to_baseline"] = round(
            rates["confluent"] / rates["confluent@baseline"], 3
        )
    results["consume_loop_trades_per_s"] = {
        b: consume_loop(settings, args.trades, b) for b in backends
    }
    print(f"consume loop (fetch + decode): {results['consume_loop_trades_per_s']}", flush=True)
    if args.profile:
        spy = workdir / "processor.spy.txt"
        results["profiled_drain"] = drain(pipeline, settings, args.trades, "confluent", spy)
        results["profile"] = summarize_profile(spy, GROUPS)
        print(orjson.dumps(results["profile"], option=orjson.OPT_INDENT_2).decode(), flush=True)
    latency_rounds(args, stack, settings, names, results, backends, workdir)


MAX_EXTRA_WARMUPS = 4  # more warm-up rounds (of --latency-seconds) while the broker compiles
JIT_QUIET = 0.05  # compile time per wall second under which the broker's JIT counts as settled


def jit_quiet(result: dict[str, Any]) -> bool:
    """Whether the broker's JIT compiler was quiet during a round: under JIT_QUIET of its wall
    time in compiling (the measured rounds after a quiet warm-up compiled 0.1-0.45 s in 20 s;
    the first round after a busy one ~3 s). Without jstat figures: quiet (nothing to wait for)."""
    jit_s = result.get("resources", {}).get("broker_jit_s")
    return jit_s is None or jit_s <= JIT_QUIET * result["seconds"]


def latency_rounds(
    args: argparse.Namespace,
    stack: LocalStack,
    settings: Settings,
    names: list[str],
    results: dict[str, Any],
    backends: tuple[str, ...],
    workdir: Path,
) -> None:
    """3.: event -> visible latency, a warm-up round then alternating rounds per backend."""
    # Alternating rounds here too: whichever backend runs first after the drains inherits
    # their after-effects (broker page cache, JVM), which an earlier version mistook for a
    # difference between the clients.
    latency_runs: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    parts: dict[str, int | None] = {"broker": None, "redis": None}
    if stack.kafka is not None and stack.kafka.process is not None:
        parts["broker"] = stack.kafka.process.pid
    if stack.redis is not None and stack.redis.process is not None:
        parts["redis"] = stack.redis.process.pid
    # The first latency round after the drains ran at about twice its successors' p99, and
    # the broker then used more CPU and compiled more methods (see each round's "resources"):
    # the JVM compiling the paths of small, frequent requests that the drains' large batches
    # never took. A running broker has compiled them long before; so warm-up rounds first,
    # until the broker's JIT is quiet (after one 60-s warm-up it still compiled ~300 methods,
    # ~3 s of compile time, in the first measured round: that round's p99 was the worst of the
    # run in each of three runs, 25-40 ms against 15-27 for the others).
    schedule: list[tuple[str, str, Path | None]] = []
    if args.latency_warmup > 0:
        schedule.append(("warmup", backends[0], None))
        schedule += [("warmup+", backends[0], None)] * MAX_EXTRA_WARMUPS
    for round_ in range(args.latency_rounds or args.rounds):
        for backend in backends:
            # with a baseline, its confluent rounds alternate with this tree's (ABBA)
            trees = [None, args.baseline] if args.baseline and backend == "confluent" else [None]
            for tree in trees if round_ % 2 == 0 else trees[::-1]:
                schedule.append((str(round_), backend, tree))
    if args.baseline:
        latency_runs["confluent@baseline"] = []
    warmups: list[dict[str, Any]] = []
    for round_, backend, tree in schedule:
        if round_ == "warmup+" and jit_quiet(warmups[-1]):
            continue
        label = backend if tree is None else f"{backend}@baseline"
        name = f"warmup{len(warmups)}" if round_ == "warmup+" else round_
        topic = f"latency.{label.replace('@', '.')}.{name}"
        latency_settings = settings.model_copy(update={"topic": topic, "dlq_topic": f"{topic}.dlq"})
        create_topics(latency_settings.kafka, required_topics(latency_settings))
        pipeline = Pipeline(
            workdir,
            stack.kafka_bootstrap,
            stack.redis_url,
            names[:3],
            extra_env={"CSP_TOPIC": topic, "CSP_DLQ_TOPIC": f"{topic}.dlq"},
        )
        seconds = args.latency_warmup if round_ == "warmup" else args.latency_seconds
        result = latency(
            pipeline, latency_settings, names, args.rate, seconds, backend, parts, tree
        )
        if round_.startswith("warmup"):
            warmups.append(result)
            results["latency_warmup"] = {"backend": backend, **warmups[0]}
            results["latency_warmups"] = [
                {k: w[k] for k in ("p99", "seconds")}
                | {"jit_quiet": jit_quiet(w), **w["resources"]}
                for w in warmups
            ]
        else:
            latency_runs[label].append(result)
    results["latency_ms"] = {
        b: {
            "median_p50": statistics.median(r["p50"] for r in runs_),
            "median_p99": statistics.median(r["p99"] for r in runs_),
            "worst_p99": max(r["p99"] for r in runs_),
            "runs": runs_,
        }
        for b, runs_ in latency_runs.items()
    }


if __name__ == "__main__":
    raise SystemExit(main())
