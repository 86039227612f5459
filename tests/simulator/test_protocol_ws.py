"""Protocol rules over real sockets: live methods, errors, keepalive, limits, lifetime."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from marketsim.server import Simulator

from .conftest import cfg, collect, connect, recv_json, recv_reply


async def test_live_methods_over_the_wire() -> None:
    async with (
        Simulator(cfg(rate=3000.0, msg_rate_limit=0)) as sim,
        connect(sim.ws_url + "/ws") as ws,
    ):
        await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@aggTrade"],"id":1}')
        assert await recv_reply(ws) == {"result": None, "id": 1}
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":3}')
        assert await recv_reply(ws) == {"result": ["btcusdt@trade", "ethusdt@aggTrade"], "id": 3}
        await ws.send('{"method":"GET_PROPERTY","params":["combined"],"id":2}')
        assert await recv_reply(ws) == {"result": False, "id": 2}
        await ws.send('{"method":"SET_PROPERTY","params":["combined",true],"id":5}')
        assert await recv_reply(ws) == {"result": None, "id": 5}
        # from now on frames are wrapped
        async with asyncio.timeout(3):
            while True:
                m = json.loads(await ws.recv())
                if "stream" in m:
                    assert m["stream"] in ("btcusdt@trade", "ethusdt@aggTrade")
                    break
        await ws.send(
            '{"method":"UNSUBSCRIBE","params":["btcusdt@trade","ethusdt@aggTrade"],"id":312}'
        )
        assert await recv_reply(ws) == {"result": None, "id": 312}
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":4}')
        assert await recv_reply(ws) == {"result": [], "id": 4}
        await asyncio.sleep(0.05)
        # nothing more arrives once unsubscribed
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "{oops",
            {
                "error": {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 2"},
                "id": None,
            },
        ),
        (
            '{"method":"PING","id":1}',
            {
                "error": {
                    "code": 2,
                    "msg": "Invalid request: unknown variant `PING`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY` at line 1 column 16",
                },
                "id": None,
            },
        ),
        (
            '{"method":"LIST_SUBSCRIPTIONS"}',
            {
                "error": {
                    "code": 2,
                    "msg": "Invalid request: request ID must be an unsigned integer",
                },
                "id": None,
            },
        ),
        (
            '{"method":"GET_PROPERTY","params":["x"],"id":8}',
            {"error": {"code": 0, "msg": "Unknown property"}, "id": 8},
        ),
        (
            '{"method":"SET_PROPERTY","params":["combined",1],"id":8}',
            {"error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": 8},
        ),
    ],
)
async def test_error_responses_keep_connection(message: str, expected: object) -> None:
    async with Simulator(cfg()) as sim, connect(sim.ws_url + "/ws") as ws:
        await ws.send(message)
        assert await recv_json(ws) == expected
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":1}')
        assert await recv_json(ws) == {"result": [], "id": 1}


async def test_message_rate_limit_disconnects() -> None:
    async with Simulator(cfg(msg_rate_limit=5)) as sim, connect(sim.ws_url + "/ws") as ws:
        for i in range(5):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
            assert (await recv_json(ws))["id"] == i
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":99}')
        with pytest.raises(ConnectionClosed) as exc:
            async with asyncio.timeout(3):
                while True:
                    await ws.recv()
        assert exc.value.rcvd is not None and exc.value.rcvd.code == 1008


async def test_ping_frames_count_towards_rate_limit() -> None:
    async with Simulator(cfg(msg_rate_limit=3)) as sim, connect(sim.ws_url + "/ws") as ws:
        for _ in range(4):
            await ws.ping()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 3)


async def test_server_pings_and_client_pong_keeps_alive() -> None:
    config = cfg(ping_interval=0.2, pong_timeout=0.3, rate=200.0)
    async with Simulator(config) as sim, connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.2:  # several ping rounds, answered automatically
            await asyncio.wait_for(ws.recv(), 2)
        assert sim.stats()["connections"] == 1


async def _raw_handshake(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def test_no_pong_disconnects() -> None:
    async with Simulator(cfg(ping_interval=0.2, pong_timeout=0.3)) as sim:
        reader, writer = await _raw_handshake(sim.port, "/ws")
        saw_ping = False
        t0 = time.monotonic()
        async with asyncio.timeout(5):
            while True:
                data = await reader.read(4096)
                if not data:
                    break  # server dropped us
                if data[0] & 0x0F == 0x9:
                    saw_ping = True
        writer.close()
        assert saw_ping
        assert 0.4 < time.monotonic() - t0 < 3


async def test_max_streams() -> None:
    async with Simulator(cfg(max_streams=3)) as sim:
        async with connect(sim.ws_url + "/ws") as ws:
            await ws.send(
                json.dumps(
                    {
                        "method": "SUBSCRIBE",
                        "params": ["a1usdt@trade", "a2usdt@trade", "a3usdt@trade"],
                        "id": 1,
                    }
                )
            )
            assert await recv_reply(ws) == {"result": None, "id": 1}
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["a4usdt@trade"], "id": 2}))
            r = await recv_reply(ws)
            assert r["id"] == 2 and r["error"]["code"] == 2
        url = sim.ws_url + "/stream?streams=" + "/".join(f"b{i}usdt@trade" for i in range(4))
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url):
                pass
        assert exc.value.response.status_code == 400


async def test_lifetime_sends_server_shutdown_then_closes() -> None:
    async with Simulator(cfg(lifetime=0.3)) as sim:
        async with connect(sim.ws_url + "/stream") as ws:
            msg = await recv_json(ws, 3)
            assert msg["stream"] == "!serverShutdown" and msg["data"]["e"] == "serverShutdown"
            assert isinstance(msg["data"]["E"], int)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 3)
        async with connect(sim.ws_url + "/ws") as ws:
            msg = await recv_json(ws, 3)
            assert msg["e"] == "serverShutdown"


async def test_time_unit_microsecond() -> None:
    async with Simulator(cfg(rate=2000.0)) as sim:
        url = sim.ws_url + "/stream?streams=btcusdt@trade/btcusdt@aggTrade&timeUnit=MICROSECOND"
        async with connect(url) as ws:
            for f in await collect(ws, 10):
                d = json.loads(f)["data"]
                assert len(str(d["T"])) == 16 and len(str(d["E"])) == 16


async def test_bad_time_unit_400() -> None:
    async with Simulator(cfg()) as sim:
        with pytest.raises(InvalidStatus) as exc:
            async with connect(sim.ws_url + "/ws?timeUnit=NANO"):
                pass
        assert exc.value.response.status_code == 400


async def test_uppercase_subscription_is_canonicalised() -> None:
    async with Simulator(cfg(rate=3000.0)) as sim, connect(sim.ws_url + "/stream") as ws:
        await ws.send('{"method":"SUBSCRIBE","params":["BTCUSDT@trade"],"id":1}')
        assert await recv_reply(ws) == {"result": None, "id": 1}
        m = await recv_json(ws)
        assert m["stream"] == "btcusdt@trade"


async def test_unknown_symbol_subscription_is_silent() -> None:
    async with Simulator(cfg(rate=3000.0)) as sim, connect(sim.ws_url + "/ws") as ws:
        await ws.send('{"method":"SUBSCRIBE","params":["zzzusdt@trade","btcusdt@depth"],"id":1}')
        assert await recv_reply(ws) == {"result": None, "id": 1}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)


async def test_connection_attempts_per_ip_are_limited() -> None:
    async with Simulator(cfg(max_connection_attempts=2, connection_attempt_window=60.0)) as sim:
        for _ in range(2):
            async with connect(sim.ws_url + "/ws/btcusdt@trade"):
                pass
        with pytest.raises(InvalidStatus) as refused:
            async with connect(sim.ws_url + "/ws/btcusdt@trade"):
                pass
        assert refused.value.response.status_code == 429
        assert json.loads(refused.value.response.body or b"{}")["code"] == -1003
        assert sim.stats()["connections_refused"] == 1
        # REST is not a connection attempt
        assert sim.rest.handle("/api/v3/ping", {}, False)[0] == 200
