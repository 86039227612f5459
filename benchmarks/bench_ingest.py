"""Ingest throughput, latency and CPU profile on this machine (issue 4).

The simulator generates trades as fast as it can (``--fast``) for N symbols on one combined
connection; one ``csp ingest`` process reads them and produces to a real local Kafka broker
(KRaft, from the Maven artifacts). Measured:

* throughput: trades acknowledged by Kafka per second (ingest's ``csp_ingest_acked_total``,
  sampled every 0.25 s; the rate over the middle 80 % of the run),
* latency, frame received -> acknowledged by Kafka: ingest's own histogram
  (``csp_ingest_produce_latency_seconds``, bucket bounds), and frame received -> appended by the
  broker: an HDR histogram of (``LogAppendTime`` - ``ingest_time_us``) over every record of the
  topic (ms resolution: the broker's timestamps are in ms),
* CPU: seconds of ingest CPU per million trades (split into the interpreter's main thread and
  librdkafka's native threads), and (``--profile``) a second run under ``py-spy`` (sampling,
  ``--nonblocking``): the share of samples per function, grouped,
* the engine alone (:meth:`TradeEngine.on_frames` on synthetic combined-stream reads of 1 to 256
  frames, no I/O): CPU µs per frame.

``--baseline DIR`` (an export of an earlier commit, e.g. ``git archive REV | tar -x -C DIR``):
its ingest alternates with this tree's on the same broker (``--rounds`` full-speed runs each),
and its engine with this one's, so a change is measured as a ratio within one run.

    flock /tmp/csp-heavy.lock python benchmarks/bench_ingest.py --json reports/bench-ingest.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from hdrh.histogram import HdrHistogram

from cryptostream.config import Settings
from cryptostream.kafka_connection import KafkaConnection
from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.supervisor import free_port
from profiling import py_spy_argv, summarize_profile

SYMBOLS = "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT,DOGEUSDT,ADAUSDT,ETHBTC,LTCUSDT,TRXUSDT"


def create_topics(kafka: KafkaConnection, suffix: str, partitions: int) -> dict[str, str]:
    names = {
        "CSP_TOPIC": f"bench.trades.{suffix}",
        "CSP_DLQ_TOPIC": f"bench.dlq.{suffix}",
        "CSP_GAP_TOPIC": f"bench.gaps.{suffix}",
    }
    admin = AdminClient(kafka.librdkafka())
    futures = admin.create_topics(
        [
            NewTopic(
                names["CSP_TOPIC"],
                partitions,
                1,
                config={"message.timestamp.type": "LogAppendTime"},
            ),
            NewTopic(names["CSP_DLQ_TOPIC"], 1, 1),
            NewTopic(names["CSP_GAP_TOPIC"], 1, 1),
        ]
    )
    for future in futures.values():
        future.result()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(n in admin.list_topics(timeout=10).topics for n in names.values()):
            break
        time.sleep(0.1)
    return names


def scrape(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith("csp_ingest_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def bucket_quantile(metrics: dict[str, float], q: float) -> float | None:
    """Upper bound (ms) of the histogram bucket holding quantile q."""
    prefix = 'csp_ingest_produce_latency_seconds_bucket{le="'
    buckets = sorted(
        (float(k[len(prefix) : -2]), v) for k, v in metrics.items() if k.startswith(prefix)
    )
    total = buckets[-1][1] if buckets else 0
    for bound, cumulative in buckets:
        if total and cumulative >= q * total:
            return bound * 1000
    return None


def broker_latency(kafka: KafkaConnection, topic: str, expected: int) -> dict[str, Any]:
    """HDR histogram of LogAppendTime - ingest receive time over every record of the topic."""
    consumer = Consumer(
        kafka.librdkafka(
            {"group.id": "bench-latency", "enable.auto.commit": False, "fetch.wait.max.ms": 50}
        )
    )
    meta = consumer.list_topics(topic, timeout=10)
    parts = list(meta.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    hist = HdrHistogram(1, 60_000_000, 3)
    seen = 0
    deadline = time.monotonic() + 120
    while seen < expected and time.monotonic() < deadline:
        for msg in consumer.consume(10000, timeout=1):
            if msg.error() is not None:
                continue
            seen += 1
            value = msg.value() or b""
            i = value.rfind(b'"ingest_time_us":')
            ingest_us = int(value[i + 17 : value.index(b"}", i)])
            _kind, append_ms = msg.timestamp()
            hist.record_value(max(1, append_ms * 1000 - ingest_us))
    consumer.close()
    return {
        "records": seen,
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000,
        "max_ms": hist.get_max_value() / 1000,
        "note": "receive -> broker append; ms resolution (LogAppendTime)",
    }


def tree_env(tree: Path | None) -> dict[str, str]:
    """The environment that runs ``tree``'s code instead of this checkout's."""
    if tree is None:
        return {}
    return {"PYTHONPATH": f"{tree / 'platform'}{os.pathsep}{tree / 'simulator'}"}


def thread_cpu(proc: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def run_once(
    stack: LocalStack,
    workdir: Path,
    trades: int,
    partitions: int,
    profile: Path | None,
    rate: float | None = None,
    tree: Path | None = None,
) -> dict[str, Any]:
    suffix = f"{os.getpid()}-{time.monotonic_ns()}"
    topics = create_topics(stack.kafka_connection, suffix, partitions)
    pipeline = Pipeline(
        workdir,
        stack.kafka_bootstrap,
        stack.redis_url,
        SYMBOLS.split(","),
        extra_env={**topics, "CSP_PARTITIONS": str(partitions), "CSP_LOG_LEVEL": "WARNING"},
    )
    try:
        pace = ["--fast"] if rate is None else ["--rate", str(rate)]
        sim = pipeline.start_simulator(
            [
                "--symbols",
                SYMBOLS,
                *pace,
                "--max-trades",
                str(trades),
                "--wait-for-subscribers",
                "1",
                # Trades only: the synthetic order book (the default) sends 2.3x fewer frames/s at
                # --fast, and this measures ingest's trade path, not the simulator's book.
                "--book-levels",
                "0",
            ]
        )
        port = free_port()
        env = {"CSP_INGEST_METRICS_PORT": str(port), **tree_env(tree)}
        if profile is None:
            ingest = pipeline.start_ingest(sim.ws_url, **env)
        else:
            ingest = pipeline._spawn(
                "ingest-profiled",
                py_spy_argv(profile, "ingest"),
                pipeline.env(CSP_BINANCE_WS_URL=sim.ws_url, **env),
            )
        ingest.wait_until(
            lambda: "csp_ingest_acked_total" in scrape(port), timeout=60, what="metrics"
        )
        assert ingest.proc is not None
        pids = [ingest.proc.pid] + [c.pid for c in psutil.Process(ingest.proc.pid).children(True)]
        procs = [psutil.Process(p) for p in pids]
        samples: list[tuple[float, float]] = []
        t_start = time.monotonic()
        cpu0 = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
        threads0 = thread_cpu(procs[0])
        while True:
            m = scrape(port)
            now = time.monotonic()
            samples.append((now, m.get("csp_ingest_acked_total", 0.0)))
            if samples[-1][1] >= trades or now - t_start > 600:
                break
            time.sleep(0.25)
        cpu = {p.pid: sum(p.cpu_times()[:2]) - cpu0[p.pid] for p in procs}
        threads = thread_cpu(procs[0])
        main_thread = threads.get(procs[0].pid, 0.0) - threads0.get(procs[0].pid, 0.0)
        final = scrape(port)
        sim_stats = sim.stats()
        acked = final.get("csp_ingest_acked_total", 0.0)
        lo = next(t for t, a in samples if a >= 0.1 * trades)
        lo_n = next(a for t, a in samples if t == lo)
        hi, hi_n = next((t, a) for t, a in samples if a >= 0.9 * trades)
        elapsed = hi - lo
        result: dict[str, Any] = {
            "simulator": "--fast (as fast as it can)" if rate is None else f"--rate {rate:g}",
            "trades": trades,
            "acked": acked,
            "throughput_trades_per_s": round((hi_n - lo_n) / elapsed) if elapsed > 0 else None,
            "wall_s_first_to_last_ack": round(samples[-1][0] - samples[0][0], 2),
            "latency_receive_to_ack_ms_bucket_bound": {
                "p50": bucket_quantile(final, 0.5),
                "p99": bucket_quantile(final, 0.99),
            },
            "ingest_cpu_s_per_million": round(sum(cpu.values()) / max(acked, 1) * 1e6, 2),
            "ingest_cpu_s_per_million_main_thread": round(main_thread / max(acked, 1) * 1e6, 2),
            "ingest_cpu_s_per_million_other_threads": round(
                (sum(cpu.values()) - main_thread) / max(acked, 1) * 1e6, 2
            ),
            "code": "this tree" if tree is None else str(tree),
            "duplicates": final.get("csp_ingest_duplicates_total", 0.0),
            "gaps_detected": final.get('csp_ingest_gaps_total{status="detected"}', 0.0),
            "simulator_trades_generated": sim_stats["trades_generated"],
        }
        if profile is not None:  # procs[0] is py-spy: no thread split
            del result["ingest_cpu_s_per_million_main_thread"]
            del result["ingest_cpu_s_per_million_other_threads"]
        if profile is None:
            result["latency_receive_to_broker_append"] = broker_latency(
                stack.kafka_connection, topics["CSP_TOPIC"], trades
            )
        else:  # stop the profiled interpreter only: py-spy writes its file when it exits
            for child in psutil.Process(ingest.proc.pid).children(recursive=True):
                child.send_signal(signal.SIGTERM)
            ingest.wait(60)
        return result
    finally:
        pipeline.stop()


# Functions (py-spy frame names) grouped into parts of the process.
GROUPS = [
    ("websocket framing (wsproto.FrameParser.feed)", ("FrameParser.feed",)),
    (
        "JSON parse + validation + Trade objects (binance.frames, core.trades)",
        (
            "fast_trade",
            "parse_frame",
            "_parse_trade",
            "check_positive_decimal",
            "check_int",
            "fullmatch",
            "__init__ (<string>)",
        ),
    ),
    ("id tracking (ingest.tracker)", ("SymbolTracker.", "Gap.fill")),
    ("record encoding (core.codec.encode_trade*)", ("encode_trade",)),
    (
        "delivery reports, acks, poll()",
        ("on_delivery", "LatencyHistogram.record", "poll", "Publisher.settle"),
    ),
    (
        "hot loop: TradeEngine.on_frames, Publisher.produce_batch (incl. the produce() C call)",
        ("TradeEngine.on_frames", "Ingest.on_frames", "Publisher.produce_batch"),
    ),
    (
        "event loop, socket reads, timers (asyncio)",
        ("asyncio", "selectors", "_run_once", "data_received"),
    ),
]


def engine_micro(tree: Path | None) -> dict[str, float]:
    """µs per frame of the engine alone, per read size (benchmarks/ingest_engine_micro.py)."""
    script = Path(__file__).with_name("ingest_engine_micro.py")
    env = {**os.environ, **tree_env(tree)}
    out = subprocess.run(
        [sys.executable, str(script)], env=env, check=True, capture_output=True, timeout=600
    )
    result: dict[str, float] = orjson.loads(out.stdout)
    return result


def ratios(current: list[float], baseline: list[float]) -> dict[str, float]:
    return {
        "median_current": statistics.median(current),
        "median_baseline": statistics.median(baseline),
        "ratio_current_to_baseline": round(
            statistics.median(current) / statistics.median(baseline), 3
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, default=Path("reports/bench-ingest.json"))
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--rate", type=float, default=50_000, help="trades/s of the paced run")
    parser.add_argument("--baseline", type=Path, help="an earlier tree to alternate with")
    parser.add_argument("--rounds", type=int, default=1, help="full-speed runs per tree")
    parser.add_argument(
        "--paced", action=argparse.BooleanOptionalAction, default=True, help="the paced run"
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="second run under py-spy (needs py-spy on PATH)",
    )
    ns = parser.parse_args(argv)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "command": "flock /tmp/csp-heavy.lock nox -s bench_ingest",
    }
    trees: list[Path | None] = [None] if ns.baseline is None else [None, ns.baseline]
    micro: dict[str, list[dict[str, float]]] = {str(t or "current"): [] for t in trees}
    for round_ in range(max(ns.rounds, 3)):
        for tree in trees if round_ % 2 == 0 else trees[::-1]:
            micro[str(tree or "current")].append(engine_micro(tree))
    report["engine_us_per_frame"] = {
        label: {size: statistics.median(r[size] for r in runs) for size in runs[0]}
        for label, runs in micro.items()
    }
    if ns.baseline is not None:
        cur, base = micro["current"], micro[str(ns.baseline)]
        report["engine_ratio_current_to_baseline"] = {
            size: ratios([r[size] for r in cur], [r[size] for r in base])[
                "ratio_current_to_baseline"
            ]
            for size in cur[0]
        }
    print(orjson.dumps(report["engine_us_per_frame"]).decode(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        stack = LocalStack(Settings(), Path(tmp) / "stack").start()
        try:
            runs: dict[str, list[dict[str, Any]]] = {str(t or "current"): [] for t in trees}
            for round_ in range(ns.rounds):
                # ABBA: the first run after the stack starts is the slowest (a cold broker)
                for tree in trees if round_ % 2 == 0 else trees[::-1]:
                    label = str(tree or "current")
                    print(f"run: {ns.trades} trades, simulator --fast -> ingest ({label})")
                    run = run_once(
                        stack,
                        Path(tmp) / f"run-{round_}-{len(runs[label])}-{tree is None}",
                        ns.trades,
                        ns.partitions,
                        None,
                        tree=tree,
                    )
                    run["load_average_after"] = os.getloadavg()
                    runs[label].append(run)
                    print(orjson.dumps(run, option=orjson.OPT_INDENT_2).decode(), flush=True)
            report["run"] = runs["current"][len(runs["current"]) // 2]
            report["runs"] = runs
            if ns.baseline is not None:
                report["baseline"] = str(ns.baseline)
                report["cpu_s_per_million_ratio_to_baseline"] = ratios(
                    [r["ingest_cpu_s_per_million"] for r in runs["current"]],
                    [r["ingest_cpu_s_per_million"] for r in runs[str(ns.baseline)]],
                )
                report["throughput_ratio_to_baseline"] = ratios(
                    [r["throughput_trades_per_s"] for r in runs["current"]],
                    [r["throughput_trades_per_s"] for r in runs[str(ns.baseline)]],
                )
                print(orjson.dumps(report["cpu_s_per_million_ratio_to_baseline"]).decode())
            if ns.paced:
                print(f"paced run: {ns.rate:g} trades/s (latency at the target rate)", flush=True)
                report["paced_run"] = run_once(
                    stack, Path(tmp) / "paced", ns.trades, ns.partitions, None, rate=ns.rate
                )
                print(
                    orjson.dumps(report["paced_run"], option=orjson.OPT_INDENT_2).decode(),
                    flush=True,
                )
            if ns.profile and shutil.which("py-spy"):
                prof = Path(tmp) / "ingest.prof.txt"
                print("profiled run (py-spy)", flush=True)
                profiled = run_once(stack, Path(tmp) / "prof", ns.trades, ns.partitions, prof)
                wait_for(prof.exists, 30, "the py-spy profile")
                report["profiled_run"] = profiled
                report["profile"] = summarize_profile(prof, GROUPS)
                shutil.copy(prof, ns.json.with_name(ns.json.stem + "-profile.txt"))
                print(orjson.dumps(report["profile"], option=orjson.OPT_INDENT_2).decode())
        finally:
            stack.stop()
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    named = [("full speed", report["run"])]
    if "paced_run" in report:
        named.append((f"paced at {ns.rate:g}/s", report["paced_run"]))
    for name, r in named:
        hdr = r["latency_receive_to_broker_append"]
        print(
            f"{name}: {r['throughput_trades_per_s']} trades/s acked, "
            f"{r['ingest_cpu_s_per_million']} CPU-s per million; receive->ack p50 <= "
            f"{r['latency_receive_to_ack_ms_bucket_bound']['p50']} ms, p99 <= "
            f"{r['latency_receive_to_ack_ms_bucket_bound']['p99']} ms (bucket bounds); "
            f"receive->broker append p50 {hdr['p50_ms']} ms, p99 {hdr['p99_ms']} ms (HDR)"
        )
    print(f"written to {ns.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
