"""Oversized frames through the real ingest: one above CSP_MAX_FRAME_BYTES goes to the DLQ with
its size and the reason; one above the WebSocket message limit drops the connection, ingest
reconnects, and the trades around both arrive exactly once."""

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
from tests.integration.test_ingest import trade_frame
from tests.kafka_helpers import read_all, watermarks

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

OVER_FRAME_LIMIT = 100_000  # > CSP_MAX_FRAME_BYTES (65536), < the 1 MiB message limit
OVER_MESSAGE_LIMIT = 2_000_000


def _padded(trade_id: int, size: int) -> bytes:
    frame = orjson.loads(trade_frame("BTCUSDT", trade_id, "1.5"))
    frame["data"]["pad"] = "x" * size
    return orjson.dumps(frame)


class OversizeServer:
    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self.started = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        if self.connections == 1:
            for i in range(1, 11):
                await ws.send(trade_frame("BTCUSDT", i, f"{100 + i}.5"))
            await ws.send(_padded(11, OVER_FRAME_LIMIT).decode())  # the trade itself is valid
            for i in range(12, 21):
                await ws.send(trade_frame("BTCUSDT", i, f"{100 + i}.5"))
            await ws.send(_padded(21, OVER_MESSAGE_LIMIT).decode())
            await self.stopped()  # the client must be the one to give up on this connection
        for i in range(21, 31):
            await ws.send(trade_frame("BTCUSDT", i, f"{100 + i}.5"))
        await self.stopped()

    async def stopped(self) -> None:
        assert self.stop_event is not None
        await self.stop_event.wait()

    async def main(self) -> None:
        self.stop_event = asyncio.Event()
        async with serve(self.handler, "127.0.0.1", 0, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self.started.set()
            await self.stop_event.wait()


@pytest.fixture
def oversize_server() -> Iterator[OversizeServer]:
    server = OversizeServer()
    thread = threading.Thread(target=server.loop.run_until_complete, args=(server.main(),),
                              daemon=True)  # fmt: skip
    thread.start()
    assert server.started.wait(10)
    yield server
    assert server.stop_event is not None
    server.loop.call_soon_threadsafe(server.stop_event.set)
    thread.join(10)


def test_oversized_frames(isolated: Env, oversize_server: OversizeServer) -> None:
    pipeline = Pipeline(isolated.workdir, isolated.settings.kafka_bootstrap,
                        isolated.settings.redis_url, ["BTCUSDT"], extra_env=isolated.env)  # fmt: skip
    try:
        ingest = pipeline.start_ingest(f"ws://127.0.0.1:{oversize_server.port}",
                                       CSP_INGEST_BACKFILL="false")  # fmt: skip

        def dlq_count() -> int:
            pipeline.check_alive()
            marks = watermarks(isolated.settings, isolated.settings.dlq_topic)
            return sum(h - lo for lo, h in marks.values())

        wait_for(lambda: dlq_count() >= 1, 60, "the oversized frame in the DLQ")
        dead = [orjson.loads(v) for v in read_all(isolated.settings, isolated.settings.dlq_topic)]
        assert len(dead) == 1, dead
        assert "exceeds" in dead[0]["reason"] and dead[0]["raw_bytes"] > OVER_FRAME_LIMIT
        assert len(dead[0]["raw"]) <= 65536  # the DLQ keeps a bounded prefix

        wait_for(lambda: pipeline.check_alive() or oversize_server.connections >= 2, 60,
                 "a new connection after the message over the limit")  # fmt: skip

        def ids() -> list[int]:
            values = read_all(isolated.settings, isolated.settings.topic)
            return sorted(decode_trade(v).trade.trade_id for v in values)

        expected = [i for i in range(1, 31) if i != 11]
        wait_for(lambda: ids() == expected, 60, "every normal trade exactly once")
        assert ingest.alive()
    finally:
        pipeline.stop()
