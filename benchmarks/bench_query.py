"""Benchmark ``GET /price/{symbol}`` of the query service against a plain FastAPI baseline.

What it does, in one run on this machine:

1. starts a throw-away ``redis-server`` and fills it with 1,000 symbols exactly as the processor
   writes them (``price:{SYMBOL}`` hashes + the ``symbols`` set);
2. for each server under test -- the query service (``csp query --workers 1``: uvicorn, uvloop,
   httptools) and the baseline (``benchmarks/query_baseline_app.py``: a default FastAPI route with
   one redis-py asyncio read, under uvicorn) -- starts it as a child process, checks it answers
   correctly, warms it up, then runs ``wrk -t1 -c64 -d15s`` with ``query_price.lua`` (a uniformly
   random symbol per request) and records requests/s and p50/p90/p99 latency;
3. reports the ratio of the two, which holds on a noisy shared machine where absolute numbers
   do not, and compares with the issue's target (>= 1.2 x 8,200 req/s, p99 <= 16 ms).

Usage::

    flock /tmp/csp-heavy.lock .venv/bin/python benchmarks/bench_query.py --json reports/query.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from cryptostream.core.keys import SYMBOLS_KEY, price_key
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import ManagedProcess, free_port

HERE = Path(__file__).resolve().parent
LUA = HERE / "query_price.lua"
TARGET_RPS = 1.2 * 8200
TARGET_P99_MS = 16.0


@dataclass
class WrkResult:
    name: str
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    timeouts: int


def symbols(n: int) -> list[str]:
    return [f"SYM{i:04d}USDT" for i in range(n)]


def fill_redis(url: str, n: int) -> None:
    """1,000 latest-trade hashes, as the processor's Lua script writes them."""
    client = redis.Redis.from_url(url)
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for i, symbol in enumerate(symbols(n)):
        pipe.hset(
            price_key(symbol),
            mapping={
                "price": f"{100 + i}.{i % 100:02d}000000",
                "quantity": "0.01000000",
                "trade_id": str(1000 + i),
                "trade_time": str(now),
                "event_time": str(now + 1),
                "ingest_time_us": str(now * 1000 + 1500),
                "update_time": str(now + 3),
            },
        )
        pipe.sadd(SYMBOLS_KEY, symbol)
    pipe.execute()
    client.close()


def server_argv(kind: str, port: int) -> list[str]:
    if kind == "query":
        return [sys.executable, "-m", "cryptostream", "query", "--workers", "1"]
    if kind == "baseline":
        return [
            sys.executable, "-m", "uvicorn", "query_baseline_app:app", "--app-dir", str(HERE),
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    raise ValueError(kind)


def run_wrk(url: str, *, threads: int, connections: int, duration: int, n: int) -> dict[str, Any]:
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
        "-s", str(LUA), url,
    ]  # fmt: skip
    env = {**os.environ, "SYMBOLS_N": str(n)}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            doc: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
            return doc
    raise RuntimeError(f"no summary in wrk output:\n{out}")


def measure(kind: str, redis_url: str, workdir: Path, args: argparse.Namespace) -> WrkResult:
    port = free_port()
    env = {
        **os.environ,
        "CSP_REDIS_URL": redis_url,
        "CSP_QUERY_HOST": "127.0.0.1",
        "CSP_QUERY_PORT": str(port),
        "CSP_LOG_LEVEL": "WARNING",
        "CSP_RUN_DIR": str(workdir),
    }
    process = ManagedProcess(
        kind, server_argv(kind, port), log_path=workdir / f"{kind}.log", env=env
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        process.wait_until(
            lambda: httpx.get(f"{base}/health", timeout=1).status_code == 200,
            timeout=30,
            what="/health",
        )
        first = symbols(args.symbols)[0]
        got = httpx.get(f"{base}/price/{first}", timeout=5).json()
        assert got == {"symbol": first, "price": 100.0}, got
        missing = httpx.get(f"{base}/price/NOSUCHSYMBOL", timeout=5)
        assert missing.status_code == 404 and missing.json() == {"error": "price not available"}
        common = {"threads": args.threads, "connections": args.connections, "n": args.symbols}
        run_wrk(base, duration=args.warmup, **common)
        doc = run_wrk(base, duration=args.duration, **common)
    finally:
        process.stop()
    seconds = doc["duration_us"] / 1e6
    return WrkResult(
        name=kind,
        requests_per_s=round(doc["requests"] / seconds, 1),
        p50_ms=doc["p50_us"] / 1000,
        p90_ms=doc["p90_us"] / 1000,
        p99_ms=doc["p99_us"] / 1000,
        max_ms=doc["max_us"] / 1000,
        mean_ms=round(doc["mean_us"] / 1000, 3),
        requests=doc["requests"],
        non_2xx=doc["non_2xx"],
        socket_errors=doc["socket_errors"],
        timeouts=doc["timeouts"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per server")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the servers N times")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    kinds = ["query"] if args.skip_baseline else ["query", "baseline"]
    runs: dict[str, list[WrkResult]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis").start()
        try:
            fill_redis(server.url, args.symbols)
            for round_no in range(args.rounds):
                for kind in kinds:
                    result = measure(kind, server.url, workdir, args)
                    runs[kind].append(result)
                    print(
                        f"round {round_no + 1} {kind:9s} {result.requests_per_s:10.1f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"non-2xx {result.non_2xx}  errors {result.socket_errors}",
                        flush=True,
                    )
        finally:
            server.stop()

    def best(kind: str) -> WrkResult:
        return max(runs[kind], key=lambda r: r.requests_per_s)

    ours = best("query")
    report: dict[str, Any] = {
        "benchmark": "GET /price/{symbol}",
        "wrk": f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s (random symbol)",
        "symbols_in_redis": args.symbols,
        "workers": 1,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": {kind: [asdict(r) for r in results] for kind, results in runs.items()},
        "query": asdict(ours),
        "target": {"requests_per_s": TARGET_RPS, "p99_ms": TARGET_P99_MS},
        "meets_absolute_target": ours.requests_per_s >= TARGET_RPS and ours.p99_ms <= TARGET_P99_MS,
    }
    if "baseline" in runs:
        base = best("baseline")
        report["baseline"] = asdict(base)
        report["ratio_requests_per_s"] = round(ours.requests_per_s / base.requests_per_s, 3)
        report["ratio_p99"] = round(ours.p99_ms / base.p99_ms, 3) if base.p99_ms else None
        # The baseline ran at ~4,400/s where the target is 9,840/s: a ratio of ~2.24.
        report["issue_ratio_target"] = round(TARGET_RPS / 4400, 3)
        print(
            f"query / baseline = {report['ratio_requests_per_s']:.2f}x requests/s "
            f"(issue's target expressed as a ratio: {report['issue_ratio_target']:.2f}x)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
