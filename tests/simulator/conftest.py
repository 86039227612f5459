"""Shared helpers for the simulator tests (real sockets on 127.0.0.1, websockets client)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from marketsim.generator import DEFAULT_START_TIME_US
from marketsim.server import SimConfig, Simulator


def cfg(**kw: Any) -> SimConfig:
    """A quiet test config: free port, no keepalive, fixed seed and fixed start time (the tests
    of the default wall clock pass ``start_time_us=None``)."""
    base: dict[str, Any] = {
        "port": 0,
        "ping_interval": None,
        "pong_timeout": None,
        "seed": 7,
        "start_time_us": DEFAULT_START_TIME_US,
    }
    base.update(kw)
    return SimConfig(**base)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(cfg(rate=2000.0)) as s:
        yield s


async def recv_json(ws: ClientConnection, within: float = 3.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), within))


async def recv_reply(ws: ClientConnection, within: float = 3.0) -> Any:
    """The next control reply (anything without an ``e``/``stream``/``u`` market field)."""
    async with asyncio.timeout(within):
        while True:
            msg = json.loads(await ws.recv())
            if isinstance(msg, dict) and ("result" in msg or "error" in msg):
                return msg


async def collect(ws: ClientConnection, n: int, within: float = 5.0) -> list[str]:
    out: list[str] = []
    async with asyncio.timeout(within):
        while len(out) < n:
            m = await ws.recv()
            assert isinstance(m, str)
            out.append(m)
    return out


def connect(url: str, **kw: Any) -> websockets.asyncio.client.connect:
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", None)
    return websockets.connect(url, **kw)


async def drain(ws: ClientConnection, idle: float = 0.3) -> list[str]:
    """Everything that arrives until the connection is quiet for ``idle`` seconds."""
    out: list[str] = []
    while True:
        try:
            m = await asyncio.wait_for(ws.recv(), idle)
        except TimeoutError:
            return out
        assert isinstance(m, str)
        out.append(m)
