"""The contract the pipeline relies on: CLI, child process, paths, payload shape, stats."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from marketsim.cli import main
from marketsim.server import Simulator
from marketsim.testing import SimulatorProcess

from .conftest import cfg, collect, connect, recv_json, recv_reply

TRADE_RE = re.compile(
    r'^\{"e":"trade","E":\d{13},"s":"[A-Z0-9]+","t":\d+,"p":"\d+\.\d{8}","q":"\d+\.\d{8}",'
    r'"T":\d{13},"m":(true|false),"M":true\}$'
)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--host",
        "--port",
        "--symbols",
        "--rate",
        "--seed",
        "--max-trades",
        "--wait-for-subscribers",
        "--ready-file",
    ):
        assert flag in out


async def test_raw_stream_payload_exact_shape() -> None:
    async with Simulator(cfg(rate=5000.0)) as sim, connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        frames = await collect(ws, 20)
    ids = []
    for f in frames:
        assert TRADE_RE.match(f), f
        d = json.loads(f)
        assert d["s"] == "BTCUSDT"
        assert isinstance(d["t"], int) and isinstance(d["E"], int) and isinstance(d["m"], bool)
        ids.append(d["t"])
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive


async def test_combined_stream_wrapper() -> None:
    config = cfg(rate=5000.0, symbols=("BTCUSDT", "ETHUSDT"))
    async with (
        Simulator(config) as sim,
        connect(sim.ws_url + "/stream?streams=btcusdt@trade/ethusdt@trade") as ws,
    ):
        frames = [json.loads(f) for f in await collect(ws, 40)]
    seen = set()
    for f in frames:
        assert set(f) == {"stream", "data"}
        assert f["stream"] == f["data"]["s"].lower() + "@trade"
        seen.add(f["stream"])
    assert seen == {"btcusdt@trade", "ethusdt@trade"}


@pytest.mark.parametrize("path", ["/ws", "/ws/", "/ws/0", "/stream", "/stream/"])
async def test_bare_paths_then_subscribe(path: str) -> None:
    async with Simulator(cfg(rate=5000.0)) as sim, connect(sim.ws_url + path) as ws:
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}))
        assert await recv_reply(ws) == {"result": None, "id": 1}
        msg = await recv_json(ws)
        data = msg["data"] if path.startswith("/stream") else msg
        if path.startswith("/stream"):
            assert msg["stream"] == "btcusdt@trade"
        assert data["e"] == "trade" and data["s"] == "BTCUSDT"


async def test_unknown_path_404_and_rest_on_same_port() -> None:
    import httpx

    async with Simulator(cfg()) as sim, httpx.AsyncClient(base_url=sim.rest_url) as http:
        r = await http.get("/nope")
        assert r.status_code == 404
        r = await http.get("/api/v3/ping")
        assert r.status_code == 200 and r.json() == {}


async def test_wait_for_subscribers_gives_complete_sequence_and_stats() -> None:
    config = cfg(rate=0.0, fast=True, max_trades=500, wait_for_subscribers=1, symbols=("BTCUSDT",))
    async with Simulator(config) as sim:
        await asyncio.sleep(0.1)
        assert sim.stats()["trades_generated"] == 0  # clock waits for the subscriber
        async with connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
            frames = [json.loads(f) for f in await collect(ws, 500)]
            await sim.wait_done(5)
            stats = sim.stats()
    assert stats["done"] is True and stats["trades_generated"] == 500
    s = stats["symbols"]["BTCUSDT"]
    assert s["count"] == 500
    assert s["first_trade_id"] == frames[0]["t"] and s["last_trade_id"] == frames[-1]["t"]
    assert s["last_price"] == frames[-1]["p"] and s["last_quantity"] == frames[-1]["q"]
    assert [f["t"] for f in frames] == list(range(frames[0]["t"], frames[0]["t"] + 500))


def _run_and_capture(tmp: Path, seed: int) -> list[str]:
    args = [
        "--seed",
        str(seed),
        "--start-time",
        "2025-01-01T00:00:00Z",  # reproducible bytes need a fixed clock
        "--rate",
        "0",
        "--max-trades",
        "300",
        "--wait-for-subscribers",
        "1",
        "--symbols",
        "BTCUSDT,ETHUSDT,SOLUSDT",
    ]
    with SimulatorProcess(args, tmp) as sim:

        async def grab() -> list[str]:
            url = sim.ws_url + "/stream?streams=btcusdt@trade/ethusdt@trade/solusdt@trade"
            async with connect(url) as ws:
                return await collect(ws, 300)

        frames = asyncio.run(grab())
        stats = sim.stats()
        assert stats["trades_generated"] == 300
    return frames


def test_child_process_determinism_and_clean_stop(tmp_path: Path) -> None:
    a = _run_and_capture(tmp_path / "a", 11)
    b = _run_and_capture(tmp_path / "b", 11)
    c = _run_and_capture(tmp_path / "c", 12)
    assert a == b  # byte-identical
    assert a != c


def test_ready_file_and_sigterm_exit_zero(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketsim", "--port", "0", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(500):
            if ready.exists():
                break
            import time

            time.sleep(0.02)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid
        assert info["ws_url"].startswith("ws://127.0.0.1:")
        assert info["rest_url"] == info["ws_url"].replace("ws://", "http://")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_simulator_process_stats_and_stop(tmp_path: Path) -> None:
    sim = SimulatorProcess(["--rate", "500"], tmp_path)
    with sim:
        st = sim.stats()
        assert {"trades_generated", "done", "symbols", "connections"} <= set(st)
    assert sim.proc is not None and sim.proc.returncode == 0
    # Its log is ECS JSON like the pipeline's services (one Filebeat config for all).
    lines = [json.loads(line) for line in sim.log_path.read_text().splitlines() if line]
    assert lines, "the simulator logged nothing"
    for doc in lines:
        assert {"@timestamp", "message", "ecs.version"} <= set(doc)
        assert doc["log.level"] and doc["service"]["name"] == "marketsim"
    assert any("listening" in doc["message"] for doc in lines)


def test_simulator_process_failure_shows_log(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="log tail"):
        SimulatorProcess(["--symbols", "bad symbol!"], tmp_path, start_timeout=10).start()
