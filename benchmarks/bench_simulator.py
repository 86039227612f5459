"""Simulator throughput and memory benchmark.

    python benchmarks/bench_simulator.py --json out.json [--trades 500000] [--replay-trades 1000000]

Runs the simulator as a child process (``python -m marketsim``) in as-fast-as-possible mode and
counts the trade frames one plain client receives — the ``websockets`` client (on uvloop), and a
minimal frame-header-parsing client that shows the server's own ceiling — on ``/ws/btcusdt@trade`` (synthetic
single symbol, and combined all symbols) and for a replay of a generated archive CSV. It also
replays two archive files of different sizes and reports the server's peak RSS for each: memory
must not grow with the file size. Wrap in ``flock /tmp/csp-heavy.lock`` on shared machines.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "simulator"))

from marketsim.testing import SimulatorProcess  # noqa: E402


def write_archive(path: Path, n: int, seed: int = 1) -> None:
    """A Binance spot trades archive CSV (no header, µs timestamps) with n trades."""
    rng = random.Random(seed)
    t = 1_735_689_600_000_000
    price = 9_400_000
    with open(path, "w") as f:
        for i in range(n):
            t += rng.randrange(0, 3000)
            price += rng.randrange(-3, 4)
            qty = rng.randrange(1, 100_000)
            f.write(
                f"{1_000_000 + i},{price // 100}.{price % 100:02d}000000,0.{qty:08d},"
                f"1.00000000,{t},{rng.random() < 0.5},True\n"
            )


async def _count_raw(url: str, expected: int, idle: float = 3.0) -> tuple[int, float]:
    """A minimal RFC 6455 client that only parses frame headers: the server's own ceiling."""
    hostport, _, path = url.removeprefix("ws://").partition("/")
    host, _, port = hostport.partition(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 22)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    buf = b""
    n = 0
    t0 = t_last = time.perf_counter()
    while n < expected:
        try:
            data = await asyncio.wait_for(reader.read(1 << 20), idle)
        except TimeoutError:
            break
        if not data:
            break
        t_last = time.perf_counter()
        buf += data
        i, size = 0, len(buf)
        while size - i >= 2:
            b1 = buf[i + 1] & 0x7F
            if b1 < 126:
                h, ln = 2, b1
            elif b1 == 126:
                if size - i < 4:
                    break
                h, ln = 4, int.from_bytes(buf[i + 2 : i + 4], "big")
            else:
                if size - i < 10:
                    break
                h, ln = 10, int.from_bytes(buf[i + 2 : i + 10], "big")
            if size - i < h + ln:
                break
            if buf[i] & 0x0F == 1:
                n += 1
            i += h + ln
        buf = buf[i:]
    writer.close()
    return n, t_last - t0


async def _count(url: str, expected: int, idle: float = 3.0) -> tuple[int, float]:
    n = 0
    t0 = t_last = time.perf_counter()
    async with websockets.connect(url, max_size=None, ping_interval=None, compression=None) as ws:
        t0 = time.perf_counter()
        while n < expected:
            try:
                await asyncio.wait_for(ws.recv(decode=False), idle)
            except TimeoutError:
                break
            n += 1
            t_last = time.perf_counter()
    return n, t_last - t0


class _RssSampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = False

    async def run(self) -> None:
        while not self._stop:
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop = True


def _run(coro: Any) -> Any:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            return r.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def run_case(
    name: str, args: list[str], path: str, expected: int, work: Path, client: str = "websockets"
) -> dict[str, Any]:
    with SimulatorProcess(args, work / name, name=name) as sim:

        async def go() -> tuple[int, float, int]:
            sampler = _RssSampler(sim.pid)
            task = asyncio.create_task(sampler.run())
            counter = _count_raw if client == "raw" else _count
            n, dt = await counter(sim.ws_url + path, expected)
            sampler.stop()
            await task
            return n, dt, sampler.peak

        n, dt, peak = _run(go())
    rate = n / dt if dt > 0 else 0.0
    print(
        f"{name:28s} {n:>9d} frames in {dt:6.2f} s = {rate:>10,.0f} frames/s, peak RSS {peak / 2**20:6.1f} MiB"
    )
    return {
        "name": name,
        "client": client,
        "frames": n,
        "seconds": round(dt, 3),
        "frames_per_s": round(rate),
        "peak_rss_bytes": peak,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", type=Path, help="write results here")
    ap.add_argument("--trades", type=int, default=500_000)
    ap.add_argument("--replay-trades", type=int, default=500_000)
    ap.add_argument(
        "--memory-trades",
        type=int,
        nargs=2,
        default=(200_000, 2_000_000),
        help="sizes of the two replayed files compared for memory",
    )
    ns = ap.parse_args(argv)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        work = Path(tmp)
        common = ["--rate", "0", "--wait-for-subscribers", "1", "--ping-interval", "off"]
        n = ns.trades
        results["cases"].append(
            run_case(
                "synthetic_raw_1_symbol",
                [*common, "--symbols", "BTCUSDT", "--max-trades", str(n)],
                "/ws/btcusdt@trade",
                n,
                work,
            )
        )
        syms = "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT"
        streams = "/".join(f"{s.lower()}@trade" for s in syms.split(","))
        results["cases"].append(
            run_case(
                "synthetic_combined_5_symbols",
                [*common, "--symbols", syms, "--max-trades", str(n)],
                f"/stream?streams={streams}",
                n,
                work,
            )
        )
        results["cases"].append(
            run_case(
                "synthetic_raw_1_symbol_rawclient",
                [*common, "--symbols", "BTCUSDT", "--max-trades", str(n)],
                "/ws/btcusdt@trade",
                n,
                work,
                client="raw",
            )
        )
        files = []
        for size in (ns.replay_trades, *ns.memory_trades):
            f = work / f"BTCUSDT-trades-{size}.csv"
            if not f.exists():
                write_archive(f, size)
            files.append(f)
        results["cases"].append(
            run_case(
                "replay_archive_csv",
                [*common, "--replay", str(files[0])],
                "/ws/btcusdt@trade",
                ns.replay_trades,
                work,
            )
        )
        results["cases"].append(
            run_case(
                "replay_archive_csv_rawclient",
                [*common, "--replay", str(files[0])],
                "/ws/btcusdt@trade",
                ns.replay_trades,
                work,
                client="raw",
            )
        )
        mem = []
        for f, size in zip(files[1:], ns.memory_trades, strict=True):
            r = run_case(
                f"replay_memory_{size}",
                [*common, "--replay", str(f)],
                "/ws/btcusdt@trade",
                size,
                work,
            )
            r["file_bytes"] = f.stat().st_size
            mem.append(r)
            results["cases"].append(r)
        small, big = mem
        growth = big["peak_rss_bytes"] / max(1, small["peak_rss_bytes"])
        results["memory"] = {
            "file_bytes": [small["file_bytes"], big["file_bytes"]],
            "peak_rss_bytes": [small["peak_rss_bytes"], big["peak_rss_bytes"]],
            "rss_ratio": round(growth, 3),
            "flat": growth < 1.25,
        }
        print(
            f"memory: file x{big['file_bytes'] / small['file_bytes']:.1f} -> peak RSS x{growth:.2f}"
        )
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
