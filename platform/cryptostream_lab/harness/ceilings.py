"""This machine's ceilings, measured in the same run: Kafka's and Redis's own benchmark tools.

- Kafka produce / consume: ``org.apache.kafka.tools.ProducerPerformance`` and
  ``ConsumerPerformance`` (what ``kafka-producer-perf-test.sh`` / ``kafka-consumer-perf-test.sh``
  run), from the same Maven artifacts as the broker (``kafka-tools``), with records the size of
  our trade values and our producer's settings (acks=all, idempotence, lz4, linger 5 ms).
- Redis: ``redis-benchmark`` (Debian's redis-tools, installed with redis-server): SET, GET, and
  SET pipelined 16 deep (the processors apply one script per batch: closer to pipelined rates).

The parsers are pure functions (tested on captured output); the runners are thin.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from cryptostream.core.codec import encode_trade
from cryptostream.core.trades import Trade
from cryptostream.kafka_connection import KafkaConnection
from cryptostream.stack.kafka import check_java
from cryptostream.topics import TopicSpec, create_topics

PRODUCER_CLASS = "org.apache.kafka.tools.ProducerPerformance"
CONSUMER_CLASS = "org.apache.kafka.tools.ConsumerPerformance"
_PRODUCER_LINE = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency(?:, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th)?"
)


def trade_value_size() -> int:
    sample = Trade(
        "SYM0000USDT",
        123456789,
        "12345.6789",
        "1.23456",
        1_700_000_000_000,
        1_700_000_000_000,
        False,
    )
    return len(encode_trade(sample, 1_700_000_000_000_000))


def parse_producer_perf(output: str) -> dict[str, float]:
    """The summary line of ProducerPerformance (the last matching line)."""
    matches = _PRODUCER_LINE.findall(output)
    if not matches:
        raise ValueError(f"no summary line in ProducerPerformance output:\n{output[-2000:]}")
    m = matches[-1]
    out = {
        "records": float(m[0]),
        "records_per_s": float(m[1]),
        "mb_per_s": float(m[2]),
        "avg_latency_ms": float(m[3]),
        "max_latency_ms": float(m[4]),
    }
    if m[5]:
        out |= {
            "p50_ms": float(m[5]),
            "p95_ms": float(m[6]),
            "p99_ms": float(m[7]),
            "p99.9_ms": float(m[8]),
        }
    return out


def parse_consumer_perf(output: str) -> dict[str, float]:
    """ConsumerPerformance's CSV-like header + values line."""
    lines = [line for line in output.splitlines() if line.count(",") >= 5]
    header_at = next((i for i, line in enumerate(lines) if "nMsg.sec" in line), None)
    if header_at is None or header_at + 1 >= len(lines):
        raise ValueError(f"no result in ConsumerPerformance output:\n{output[-2000:]}")
    keys = [k.strip() for k in lines[header_at].split(",")]
    values = [v.strip() for v in lines[header_at + 1].split(",")]
    row = dict(zip(keys, values, strict=False))
    return {
        "records": float(row["data.consumed.in.nMsg"]),
        "records_per_s": float(row["nMsg.sec"]),
        "mb_per_s": float(row["MB.sec"]),
        "fetch_records_per_s": float(row.get("fetch.nMsg.sec", row["nMsg.sec"])),
    }


def parse_redis_benchmark(output: str) -> dict[str, float]:
    """``redis-benchmark --csv``: test name -> requests/s."""
    out: dict[str, float] = {}
    for row in csv.reader(io.StringIO(output)):
        if len(row) >= 2 and row[0] != "test":
            try:
                out[row[0]] = float(row[1])
            except ValueError:
                continue
    if not out:
        raise ValueError(f"no results in redis-benchmark output:\n{output[-2000:]}")
    return out


def _java(lib: Path, heap: str = "256m") -> list[str]:
    log4j = resources.files("cryptostream.stack").joinpath("kafka-log4j2.properties")
    return [
        check_java(),
        f"-Xmx{heap}",
        "-cp",
        f"{lib}/*",
        f"-Dlog4j2.configurationFile={log4j}",
        "-Dkafka.logs.dir=/tmp",
    ]


def _run(argv: list[str], timeout: float) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:6])}... exited with {done.returncode}:\n{done.stderr[-2000:]}"
        )
    return done.stdout + done.stderr


def kafka_ceilings(
    lib: Path, kafka: KafkaConnection, partitions: int, records: int = 500_000, timeout: float = 180
) -> dict[str, Any]:
    if kafka.security_protocol != "PLAINTEXT":
        # Kafka's Java perf tools get only the address here; a secured cluster's credentials
        # would need a JAAS config they are not given.
        raise ValueError(f"the Kafka ceilings run against a PLAINTEXT cluster, not {kafka}")
    bootstrap = kafka.bootstrap
    topic = "harness.ceiling"
    create_topics(kafka, [TopicSpec(topic, partitions, 1)])
    size = trade_value_size()
    producer_props = [
        f"bootstrap.servers={bootstrap}",
        "acks=all",
        "enable.idempotence=true",
        "linger.ms=5",
        "batch.size=262144",
        "compression.type=lz4",
    ]
    produce = _run(
        [
            *_java(lib),
            PRODUCER_CLASS,
            "--topic",
            topic,
            "--num-records",
            str(records),
            "--record-size",
            str(size),
            "--throughput",
            "-1",
            "--producer-props",
            *producer_props,
        ],
        timeout,
    )
    consume = _run(
        [
            *_java(lib),
            CONSUMER_CLASS,
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--messages",
            str(records),
            "--timeout",
            "60000",
        ],
        timeout,
    )
    return {
        "record_size": size,
        "records": records,
        "produce": parse_producer_perf(produce),
        "consume": parse_consumer_perf(consume),
        "tool": f"{PRODUCER_CLASS} / {CONSUMER_CLASS}",
    }


def redis_ceilings(host: str, port: int, requests: int = 100_000) -> dict[str, Any]:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("redis-benchmark is missing (Debian: apt-get install redis-tools)")
    base = [binary, "-h", host, "-p", str(port), "-n", str(requests), "-c", "16", "--csv"]
    plain = parse_redis_benchmark(_run([*base, "-t", "set,get,hset"], 120))
    piped = parse_redis_benchmark(_run([*base, "-t", "set", "-P", "16"], 120))
    return {
        "requests_per_s": plain,
        "set_pipelined_16_per_s": piped.get("SET", 0.0),
        "tool": "redis-benchmark -c 16 (and -P 16)",
    }
