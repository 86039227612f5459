"""Benchmark ``GET /price/{symbol}`` of the query service against the same server's ceiling.

What it does, in one run on this machine:

1. starts a throw-away ``redis-server`` and fills it with 1,000 symbols exactly as the processor
   writes them (``price:{SYMBOL}`` hashes + the ``symbols`` set);
2. starts the servers under test as child processes, checks they answer correctly and warms
   them up: the query service (``csp query --workers 1``: uvicorn, uvloop, httptools), and
   optionally the query service of another source tree (``--before DIR``, e.g. the code before a
   change, exported with ``git archive``) and the plain FastAPI baseline
   (``benchmarks/query_baseline_app.py``, ``--baseline``);
3. per round, one after the other (so every server sees the same machine load, alternating,
   each round in a rotated order):
   ``wrk -t1 -c64 -d15s`` with ``query_price.lua`` -- ``GET /price/{symbol}`` over 1,000
   Zipf-distributed symbols (s = 1) -- on each server, and the query service's empty route
   (``GET /health``: answered on the same fast path, a constant without touching Redis; that is
   the ceiling of this server stack);
4. reports req/s, p50/p90/p99 of each, the price/empty ratio per round (it holds on a noisy
   shared machine where absolute numbers do not) and verdicts against issue 19's targets:
   >= 35,000 req/s, p99 <= 5 ms, price >= 90 % of the empty route;
5. ``--view``: also the query service with its in-process price view
   (``CSP_QUERY_PRICE_VIEW=true``), its own price/empty ratio and verdicts;
6. ``--profile``: one more price measurement of the query service under py-spy, summarised.

Usage::

    flock /tmp/csp-heavy.lock .venv/bin/python benchmarks/bench_query.py --json reports/query.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from cryptostream.core.keys import home_partition, price_key, symbols_key
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import ManagedProcess, free_port
from profiling import py_spy_argv, summarize_profile

HERE = Path(__file__).resolve().parent
LUA = HERE / "query_price.lua"
EMPTY_PATH = "/health"
# Issue 19, point 3.
TARGET_RPS = 35_000.0
TARGET_P99_MS = 5.0
TARGET_RATIO = 0.9

# Where the query worker's time goes (py-spy frame names, innermost match wins).
GROUPS = [
    (
        "redis reply parsing (fastredis data_received)",
        ("data_received (cryptostream/query/fastredis",),
    ),
    ("redis command write (fastredis)", ("cryptostream/query/fastredis",)),
    ("price view / store", ("cryptostream/query/store", "cryptostream/query/view")),
    ("response body (responses.py)", ("cryptostream/query/responses",)),
    ("fast path (app.py)", ("cryptostream/query/app",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("http parsing + response (uvicorn httptools_impl)", ("httptools_impl", "protocol.py")),
    ("event loop (uvloop)", ("uvloop",)),
]


@dataclass
class WrkResult:
    name: str
    round: int
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


PARTITIONS = 8  # the services' CSP_PARTITIONS (the default): the key layout


def symbols(n: int) -> list[str]:
    return [f"SYM{i:04d}USDT" for i in range(n)]


def fill_redis(url: str, n: int) -> None:
    """1,000 latest-trade hashes, as the processor's Lua script writes them."""
    client = redis.Redis.from_url(url)
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for i, symbol in enumerate(symbols(n)):
        pipe.hset(
            price_key(symbol, PARTITIONS),
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
        pipe.sadd(symbols_key(home_partition(symbol, PARTITIONS), PARTITIONS), symbol)
    pipe.execute()
    client.close()


def server_argv(kind: str, port: int, profile: Path | None = None) -> list[str]:
    if kind in ("query", "view", "before"):
        if profile is not None:
            return [*py_spy_argv(profile, "query"), "--workers", "1"]
        return [sys.executable, "-m", "cryptostream", "query", "--workers", "1"]
    if kind == "baseline":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "query_baseline_app:app",
            "--app-dir",
            str(HERE),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    raise ValueError(kind)


def run_wrk(
    url: str, *, threads: int, connections: int, duration: int, n: int, path: str | None = None
) -> dict[str, Any]:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url,
    ]
    env = {**os.environ, "SYMBOLS_N": str(n)}
    if path is not None:
        env["WRK_PATH"] = path
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            doc: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
            return doc
    raise RuntimeError(f"no summary in wrk output:\n{out}")


def to_result(name: str, round_no: int, doc: dict[str, Any]) -> WrkResult:
    seconds = doc["duration_us"] / 1e6
    return WrkResult(
        name=name,
        round=round_no,
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


class Server:
    """One server under test, started as a child process, checked and warmed up."""

    def __init__(
        self,
        kind: str,
        redis_url: str,
        workdir: Path,
        args: argparse.Namespace,
        *,
        source: Path | None = None,
        profile: Path | None = None,
    ) -> None:
        self.kind = kind
        self.args = args
        self.profile = profile
        port = free_port()
        env = {
            **os.environ,
            "CSP_REDIS_URL": redis_url,
            "CSP_QUERY_HOST": "127.0.0.1",
            "CSP_QUERY_PORT": str(port),
            "CSP_LOG_LEVEL": "WARNING",
            "CSP_RUN_DIR": str(workdir),
        }
        if kind == "view":  # the query service with its in-process price view (query/view.py)
            env["CSP_QUERY_PRICE_VIEW"] = "true"
        if source is not None:  # another tree's cryptostream package comes first on the path
            env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
        name = kind if profile is None else f"{kind}-profiled"
        self.process = ManagedProcess(
            name, server_argv(kind, port, profile), log_path=workdir / f"{name}.log", env=env
        ).start()
        self.base = f"http://127.0.0.1:{port}"

    def check_and_warm(self) -> None:
        base = self.base
        self.process.wait_until(
            lambda: httpx.get(f"{base}/health", timeout=1).status_code == 200,
            timeout=60,
            what="/health",
        )
        first = symbols(self.args.symbols)[0]
        got = httpx.get(f"{base}/price/{first}", timeout=5).json()
        assert got == {"symbol": first, "price": 100.0}, got
        missing = httpx.get(f"{base}/price/NOSUCHSYMBOL", timeout=5)
        assert missing.status_code == 404 and missing.json() == {"error": "price not available"}
        assert httpx.get(f"{base}{EMPTY_PATH}", timeout=5).json() == {"status": "ok"}
        self.wrk(self.args.warmup)

    def wrk(self, duration: int, path: str | None = None) -> dict[str, Any]:
        a = self.args
        return run_wrk(
            self.base,
            threads=a.threads,
            connections=a.connections,
            duration=duration,
            n=a.symbols,
            path=path,
        )

    def stop(self) -> None:
        if self.profile is not None and self.process.proc is not None:
            # Stop the profiled interpreter only: py-spy writes its file when it exits.
            for child in psutil.Process(self.process.proc.pid).children(recursive=True):
                child.send_signal(signal.SIGTERM)
            self.process.wait(60)
        self.process.stop()


def summary(results: list[WrkResult]) -> dict[str, Any]:
    """Median over the rounds (and the best, for reference)."""
    return {
        "requests_per_s_median": round(statistics.median(r.requests_per_s for r in results), 1),
        "requests_per_s_best": max(r.requests_per_s for r in results),
        "p50_ms_median": round(statistics.median(r.p50_ms for r in results), 3),
        "p99_ms_median": round(statistics.median(r.p99_ms for r in results), 3),
        "rounds": len(results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per server")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the measurements N times")
    parser.add_argument(
        "--before",
        type=Path,
        help="also measure the query service of this source folder (holding the cryptostream "
        "package, e.g. `git archive <commit> platform | tar -x -C DIR` -> DIR/platform)",
    )
    parser.add_argument("--baseline", action="store_true", help="also measure plain FastAPI")
    parser.add_argument(
        "--view", action="store_true", help="also measure with CSP_QUERY_PRICE_VIEW=true"
    )
    parser.add_argument("--profile", action="store_true", help="one more run under py-spy")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    # py-spy installed into this interpreter's environment (`uv pip install py-spy`) counts too.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    if args.profile and shutil.which("py-spy") is None:
        print("py-spy is not installed (uv pip install py-spy): no profile", file=sys.stderr)

    # (label, server kind, path or None for the Zipf price requests)
    plan: list[tuple[str, str, str | None]] = [("price", "query", None)]
    plan.append(("empty", "query", EMPTY_PATH))
    if args.view:
        plan.append(("view_price", "view", None))
    if args.before is not None:
        plan.append(("before_price", "before", None))
    if args.baseline:
        plan.append(("baseline_price", "baseline", None))
    runs: dict[str, list[WrkResult]] = {label: [] for label, _, _ in plan}
    profile_summary: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir / "redis").start()
        servers: dict[str, Server] = {}
        try:
            fill_redis(redis_server.url, args.symbols)
            for _, kind, _ in plan:
                if kind not in servers:
                    source = args.before.resolve() if kind == "before" else None
                    servers[kind] = Server(kind, redis_server.url, workdir, args, source=source)
            for server in servers.values():
                server.check_and_warm()
            for round_no in range(1, args.rounds + 1):
                # Each round starts one step further into the plan: no measurement always
                # follows the same other one (the machine's load drifts within a round too).
                shift = (round_no - 1) % len(plan)
                for label, kind, path in plan[shift:] + plan[:shift]:
                    result = to_result(label, round_no, servers[kind].wrk(args.duration, path))
                    runs[label].append(result)
                    print(
                        f"round {round_no} {label:15s} {result.requests_per_s:10.1f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"non-2xx {result.non_2xx}  errors {result.socket_errors}",
                        flush=True,
                    )
            for server in servers.values():
                server.stop()
            servers.clear()
            if args.profile and shutil.which("py-spy"):
                prof = workdir / "query-profile.txt"
                server = Server("query", redis_server.url, workdir, args, profile=prof)
                servers["profiled"] = server
                server.check_and_warm()
                doc = server.wrk(args.duration)
                print(f"profiled run: {to_result('profiled', 0, doc).requests_per_s} req/s")
                server.stop()
                servers.clear()
                deadline = time.monotonic() + 30
                while not prof.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                profile_summary = summarize_profile(prof, GROUPS)
                if args.json:
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(prof, args.json.with_name(args.json.stem + "-profile.txt"))
        finally:
            for server in servers.values():
                server.stop()
            redis_server.stop()

    ratios = [
        round(p.requests_per_s / e.requests_per_s, 3)
        for p, e in zip(runs["price"], runs["empty"], strict=True)
    ]
    price = summary(runs["price"])
    ratio = round(statistics.median(ratios), 3)
    rps_ok = price["requests_per_s_median"] >= TARGET_RPS
    p99_ok = price["p99_ms_median"] <= TARGET_P99_MS
    ratio_ok = ratio >= TARGET_RATIO
    report: dict[str, Any] = {
        "benchmark": "GET /price/{symbol} vs the same server's empty route (GET /health)",
        "wrk": f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s",
        "distribution": "Zipf s=1.0 over the symbols (query_price.lua)",
        "symbols_in_redis": args.symbols,
        "workers": 1,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "shared machine: absolute figures are noisy; ratios within a round are steadier "
            "but not immune (compare the rounds)",
        },
        "runs": {label: [asdict(r) for r in results] for label, results in runs.items()},
        "summary": {label: summary(results) for label, results in runs.items()},
        "ratio_price_to_empty_per_round": ratios,
        "ratio_price_to_empty_median": ratio,
        "target": {
            "requests_per_s": TARGET_RPS,
            "p99_ms": TARGET_P99_MS,
            "ratio_price_to_empty": TARGET_RATIO,
        },
        "verdict": {
            "requests_per_s": rps_ok,
            "p99_ms": p99_ok,
            "ratio_price_to_empty": ratio_ok,
            "all": rps_ok and p99_ok and ratio_ok,
        },
    }
    if "view_price" in runs:
        view_ratios = [
            round(v.requests_per_s / e.requests_per_s, 3)
            for v, e in zip(runs["view_price"], runs["empty"], strict=True)
        ]
        view = summary(runs["view_price"])
        view_ratio = round(statistics.median(view_ratios), 3)
        v_rps = view["requests_per_s_median"] >= TARGET_RPS
        v_p99 = view["p99_ms_median"] <= TARGET_P99_MS
        v_ratio = view_ratio >= TARGET_RATIO
        report["with_price_view"] = {
            "setting": "CSP_QUERY_PRICE_VIEW=true (max lag 100 ms)",
            "ratio_price_to_empty_per_round": view_ratios,
            "ratio_price_to_empty_median": view_ratio,
            "verdict": {
                "requests_per_s": v_rps,
                "p99_ms": v_p99,
                "ratio_price_to_empty": v_ratio,
                "all": v_rps and v_p99 and v_ratio,
            },
        }
        print(
            f"with the price view: {view['requests_per_s_median']:.0f} req/s, p99 "
            f"{view['p99_ms_median']:.2f} ms, view/empty {view_ratio:.3f}"
        )
    if "before_price" in runs:
        report["ratio_after_to_before_per_round"] = [
            round(a.requests_per_s / b.requests_per_s, 3)
            for a, b in zip(runs["price"], runs["before_price"], strict=True)
        ]
    if profile_summary is not None:
        report["profile"] = profile_summary
    print(
        f"price {price['requests_per_s_median']:.0f} req/s (target {TARGET_RPS:.0f}: "
        f"{'met' if rps_ok else 'NOT met'}), p99 {price['p99_ms_median']:.2f} ms (target "
        f"{TARGET_P99_MS:g}: {'met' if p99_ok else 'NOT met'}), price/empty {ratio:.3f} "
        f"(target {TARGET_RATIO}: {'met' if ratio_ok else 'NOT met'})"
    )
    if "ratio_after_to_before_per_round" in report:
        print(f"after/before per round: {report['ratio_after_to_before_per_round']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
