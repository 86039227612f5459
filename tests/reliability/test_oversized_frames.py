"""Oversized frames through the real ingest: one above CSP_MAX_FRAME_BYTES goes to the DLQ with
its size and the reason; one above the WebSocket message limit drops the connection, ingest
reconnects, and the trades around both arrive exactly once."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import orjson
import pytest
from websockets.asyncio.server import ServerConnection

from cryptostream.core.codec import decode_trade
from cryptostream.stack.pipeline import Pipeline, wait_for
from tests.conftest import Env
from tests.kafka_helpers import read_all, watermarks
from tests.ws_server import ScriptedWsServer, trade_frame

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

OVER_FRAME_LIMIT = 100_000  # > CSP_MAX_FRAME_BYTES (65536), < the 1 MiB message limit
OVER_MESSAGE_LIMIT = 2_000_000


def _padded(trade_id: int, size: int) -> bytes:
    frame = orjson.loads(trade_frame("BTCUSDT", trade_id, "1.5"))
    frame["data"]["pad"] = "x" * size
    return orjson.dumps(frame)


class OversizeServer(ScriptedWsServer):
    serve_options: ClassVar[Mapping[str, Any]] = {"max_size": None}

    async def handler(self, ws: ServerConnection) -> None:
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


@pytest.fixture
def oversize_server() -> Iterator[ScriptedWsServer]:
    with OversizeServer().running() as server:
        yield server


def test_oversized_frames(isolated: Env, oversize_server: ScriptedWsServer) -> None:
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        ["BTCUSDT"],
        extra_env=isolated.env,
    )
    try:
        ingest = pipeline.start_ingest(oversize_server.url, CSP_INGEST_BACKFILL="false")

        def dlq_count() -> int:
            pipeline.check_alive()
            marks = watermarks(isolated.settings, isolated.settings.dlq_topic)
            return sum(h - lo for lo, h in marks.values())

        wait_for(lambda: dlq_count() >= 1, 60, "the oversized frame in the DLQ")
        dead = [orjson.loads(v) for v in read_all(isolated.settings, isolated.settings.dlq_topic)]
        assert len(dead) == 1, dead
        assert "exceeds" in dead[0]["reason"] and dead[0]["raw_bytes"] > OVER_FRAME_LIMIT
        assert len(dead[0]["raw"]) <= 65536  # the DLQ keeps a bounded prefix

        wait_for(
            lambda: pipeline.check_alive() or oversize_server.connections >= 2,
            60,
            "a new connection after the message over the limit",
        )

        def ids() -> list[int]:
            values = read_all(isolated.settings, isolated.settings.topic)
            return sorted(decode_trade(v).trade.trade_id for v in values)

        expected = [i for i in range(1, 31) if i != 11]
        wait_for(lambda: ids() == expected, 60, "every normal trade exactly once")
        assert ingest.alive()
    finally:
        pipeline.stop()
