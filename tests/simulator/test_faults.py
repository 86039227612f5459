"""Fault injection: pure decisions, then each fault over a real connection."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from marketsim.faults import FaultConfig, FaultInjector, malform
from marketsim.server import Simulator

from .conftest import cfg, connect, drain

P = b'{"e":"trade","E":1,"s":"BTCUSDT","t":5,"p":"1.00000000","q":"2.00000000","T":1,"m":true,"M":true}'


def test_malform_variants() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(malform(P, 0))
    assert "p" not in orjson.loads(malform(P, 1))
    assert orjson.loads(malform(P, 2))["E"] == "1"


def test_injector_drop_after_messages() -> None:
    f = FaultInjector(FaultConfig(drop_after_messages=3), 1)
    out = [f.process(P, True, 0.0) for _ in range(5)]
    assert out[:3] == [[P]] * 3 and out[3] is None and out[4] is None


def test_injector_stall_and_resume() -> None:
    f = FaultInjector(FaultConfig(stall_after_messages=2, stall_seconds=1.0), 1)
    assert f.process(P, True, 0.0) == [P] and f.process(P, True, 0.0) == [P]
    assert f.process(P, True, 0.5) == []
    assert f.process(P, True, 1.6) == [P]


def test_injector_rates_deterministic() -> None:
    cfgf = FaultConfig(duplicate_rate=0.1, reorder_rate=0.1, gap_rate=0.1, malformed_rate=0.1)
    payloads = [P.replace(b'"t":5', f'"t":{i}'.encode()) for i in range(1000)]
    runs = []
    for _ in range(2):
        f = FaultInjector(cfgf, 42)
        out: list[bytes] = []
        for p in payloads:
            r = f.process(p, True, 0.0)
            assert r is not None
            out.extend(r)
        runs.append((out, dict(f.counts)))
    assert runs[0] == runs[1]
    counts = runs[0][1]
    for k in ("malformed", "duplicated", "reordered", "gaps"):
        assert 40 < counts[k] < 160, counts


async def _frames(config: Any, path: str = "/ws/btcusdt@trade", idle: float = 0.4) -> list[str]:
    async with Simulator(config) as sim, connect(sim.ws_url + path) as ws:
        return await drain(ws, idle)


def _ids(frames: list[str]) -> list[int]:
    out = []
    for f in frames:
        try:
            d = json.loads(f)
        except json.JSONDecodeError:
            continue
        if isinstance(d.get("t"), int):
            out.append(d["t"])
    return out


BASE: dict[str, Any] = {
    "fast": True,
    "max_trades": 400,
    "wait_for_subscribers": 1,
    "symbols": ("BTCUSDT",),
}


async def test_drop_after_messages_abort() -> None:
    config = cfg(**BASE, faults=FaultConfig(drop_after_messages=50))
    async with Simulator(config) as sim, connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        got = []
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(3):
                while True:
                    got.append(await ws.recv())
        assert len(got) == 50


async def test_drop_after_seconds_close_mode_and_first_connection_only() -> None:
    config = cfg(
        rate=500.0,
        symbols=("BTCUSDT",),
        faults=FaultConfig(drop_after_seconds=0.3, drop_mode="close", connections=1),
    )
    async with Simulator(config) as sim:
        async with connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
            t0 = time.monotonic()
            with pytest.raises(ConnectionClosed) as exc:
                async with asyncio.timeout(3):
                    while True:
                        await ws.recv()
            assert 0.25 < time.monotonic() - t0 < 1.5
            assert exc.value.rcvd is not None and exc.value.rcvd.code == 1011
        async with connect(sim.ws_url + "/ws/btcusdt@trade") as ws2:  # second connection: healthy
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.6:
                await asyncio.wait_for(ws2.recv(), 2)


async def test_stall_keeps_connection_open() -> None:
    config = cfg(rate=1000.0, symbols=("BTCUSDT",), faults=FaultConfig(stall_after_messages=20))
    async with Simulator(config) as sim, connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        got = await drain(ws, 0.5)
        assert len(got) == 20
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":1}')  # still alive, replies still flow
        assert json.loads(await asyncio.wait_for(ws.recv(), 2)) == {
            "result": ["btcusdt@trade"],
            "id": 1,
        }


async def test_stall_after_seconds_then_resume() -> None:
    config = cfg(
        rate=500.0,
        symbols=("BTCUSDT",),
        faults=FaultConfig(stall_after_seconds=0.2, stall_seconds=0.5),
    )
    async with Simulator(config) as sim, connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        times = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.2:
            await asyncio.wait_for(ws.recv(), 2)
            times.append(time.monotonic() - t0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) > 0.4  # the stall
    assert times[-1] > 0.8  # resumed


async def test_malformed_frames() -> None:
    frames = await _frames(cfg(**BASE, faults=FaultConfig(malformed_rate=0.2, seed=3)))
    bad = 0
    for f in frames:
        try:
            d = json.loads(f)
        except json.JSONDecodeError:
            bad += 1
            continue
        if "p" not in d or not isinstance(d["t"], int) or not isinstance(d["E"], int):
            bad += 1
    assert 40 < bad < 130 and len(frames) == 400


async def test_duplicates() -> None:
    ids = _ids(await _frames(cfg(**BASE, faults=FaultConfig(duplicate_rate=0.1))))
    assert len(ids) > 400 and len(set(ids)) == 400


async def test_out_of_order() -> None:
    ids = _ids(await _frames(cfg(**BASE, faults=FaultConfig(reorder_rate=0.1))))
    assert sorted(ids) == list(range(ids[0] if ids[0] < ids[1] else ids[1], min(ids) + 400))
    assert ids != sorted(ids)


async def test_gaps_are_backfillable() -> None:
    import httpx

    config = cfg(**BASE, faults=FaultConfig(gap_rate=0.05))
    async with Simulator(config) as sim, connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        ids = _ids(await drain(ws, 0.4))
        truth = sim.stats()["symbols"]["BTCUSDT"]
        missing = sorted(set(range(truth["first_trade_id"], truth["last_trade_id"] + 1)) - set(ids))
        assert 5 < len(missing) < 50
        async with httpx.AsyncClient(base_url=sim.rest_url) as http:
            r = await http.get(
                "/api/v3/historicalTrades",
                params={"symbol": "BTCUSDT", "fromId": missing[0], "limit": 1},
            )
            assert r.json()[0]["id"] == missing[0]
        assert sim.stats()["faults"]["0"]["gaps"] == len(missing)


async def test_slow_start() -> None:
    config = cfg(faults=FaultConfig(slow_start_seconds=0.4))
    sim = Simulator(config)
    t0 = time.monotonic()
    await sim.start()
    try:
        assert time.monotonic() - t0 >= 0.4
    finally:
        await sim.stop()


def test_cli_fault_flags(tmp_path: Any) -> None:
    from marketsim.cli import build_parser, config_from_args

    ns = build_parser().parse_args(
        [
            "--fault-drop-after-messages",
            "5",
            "--fault-stall-after-seconds",
            "2",
            "--fault-stall-seconds",
            "1",
            "--fault-malformed-rate",
            "0.1",
            "--fault-duplicate-rate",
            "0.2",
            "--fault-reorder-rate",
            "0.3",
            "--fault-gap-rate",
            "0.4",
            "--fault-slow-start",
            "1.5",
            "--fault-connections",
            "2",
            "--fault-drop-mode",
            "close",
        ]
    )
    f = config_from_args(ns).faults
    assert (f.drop_after_messages, f.stall_after_seconds, f.stall_seconds, f.malformed_rate) == (
        5,
        2.0,
        1.0,
        0.1,
    )
    assert (f.duplicate_rate, f.reorder_rate, f.gap_rate, f.slow_start_seconds) == (
        0.2,
        0.3,
        0.4,
        1.5,
    )
    assert f.connections == 2 and f.drop_mode == "close"
    assert f.applies_to(1) and not f.applies_to(2)
