"""Ingest as a real process against a scripted WebSocket server and the real broker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from cryptostream.core.codec import decode_trade
from cryptostream.stack.pipeline import Pipeline, wait_for
from tests.conftest import Env
from tests.kafka_helpers import read_all, watermarks

pytestmark = pytest.mark.integration


def trade_frame(symbol: str, trade_id: int, price: str) -> bytes:
    data = {"e": "trade", "E": 1_718_000_000_000 + trade_id, "s": symbol, "t": trade_id, "p": price,
            "q": "0.5", "T": 1_718_000_000_000 + trade_id, "m": False, "M": True}  # fmt: skip
    return orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": data})


BAD_FRAMES = [b"{not json", b'{"e":"trade","s":"BTCUSDT"}', orjson.dumps(
    {"stream": "btcusdt@trade", "data": {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "NaN",
                                         "q": "1", "T": 1, "m": False}})]  # fmt: skip


class ScriptedServer:
    """Sends a fixed script of frames on the first connection, then drops it; the rest later."""

    def __init__(self) -> None:
        self.connections = 0
        self.paths: list[str] = []
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.stop_event: asyncio.Event | None = None

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.paths.append(ws.request.path if ws.request else "")
        if self.connections == 1:
            for i in range(1, 101):
                await ws.send(trade_frame("BTCUSDT", i, f"{60000 + i}.5"))
            for frame in BAD_FRAMES:
                await ws.send(frame)
            await ws.send(b'{"e":"aggTrade","s":"BTCUSDT"}')
            return  # closing the connection: ingest must reconnect
        for i in range(1, 51):
            await ws.send(trade_frame("ETHUSDT", i, f"{3000 + i}.25"))
        assert self.stop_event is not None
        await self.stop_event.wait()  # keep the connection open until the fixture ends

    async def main(self) -> None:
        self.stop_event = asyncio.Event()
        async with serve(self.handler, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self.started.set()
            await self.stop_event.wait()

    def run(self) -> None:
        self.loop.run_until_complete(self.main())


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.started.wait(10)
    yield server
    assert server.stop_event is not None
    server.loop.call_soon_threadsafe(server.stop_event.set)
    thread.join(10)


def test_trades_to_kafka_bad_frames_to_dlq_and_reconnect(
    isolated: Env, scripted_server: ScriptedServer
) -> None:
    pipeline = Pipeline(isolated.workdir, isolated.settings.kafka_bootstrap, isolated.settings.redis_url,
                        ["BTCUSDT", "ETHUSDT"], extra_env=isolated.env)  # fmt: skip
    try:
        pipeline.start_ingest(f"ws://127.0.0.1:{scripted_server.port}")

        def count() -> int:
            pipeline.check_alive()
            return sum(h - lo for lo, h in watermarks(isolated.settings).values())

        wait_for(lambda: count() == 150, 60, "150 trades in raw.trades")
        assert scripted_server.connections >= 2
        assert scripted_server.paths[0] == "/stream?streams=btcusdt@trade/ethusdt@trade"
        records = [decode_trade(v) for v in read_all(isolated.settings, isolated.settings.topic)]
        assert sorted((r.trade.symbol, r.trade.trade_id) for r in records) == sorted(
            [("BTCUSDT", i) for i in range(1, 101)] + [("ETHUSDT", i) for i in range(1, 51)]
        )
        assert all(r.ingest_time_us > 1_600_000_000_000_000 for r in records)
        wait_for(lambda: sum(h for _l, h in watermarks(isolated.settings, isolated.settings.dlq_topic).values()) == 3,
                 30, "3 DLQ records")  # fmt: skip
        dead = [orjson.loads(v) for v in read_all(isolated.settings, isolated.settings.dlq_topic)]
        assert sorted(d["raw"] for d in dead) == sorted(f.decode() for f in BAD_FRAMES)
        assert all(d["reason"] and d["source"].startswith("ws://127.0.0.1") for d in dead)
        pipeline.check_alive()
    finally:
        pipeline.stop()
