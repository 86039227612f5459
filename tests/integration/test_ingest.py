"""Ingest as a real process against a scripted WebSocket server and the real broker."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from websockets.asyncio.server import ServerConnection

from cryptostream.core.codec import decode_trade
from cryptostream.stack.pipeline import Pipeline, wait_for
from tests.conftest import Env
from tests.kafka_helpers import read_all, watermarks
from tests.ws_server import ScriptedWsServer, trade_frame

pytestmark = pytest.mark.integration


BAD_FRAMES = [
    b"{not json",
    b'{"e":"trade","s":"BTCUSDT"}',
    orjson.dumps(
        {
            "stream": "btcusdt@trade",
            "data": {
                "e": "trade",
                "E": 1,
                "s": "BTCUSDT",
                "t": 1,
                "p": "NaN",
                "q": "1",
                "T": 1,
                "m": False,
            },
        }
    ),
]


class ScriptedServer(ScriptedWsServer):
    """Sends a fixed script of frames on the first connection, then drops it; the rest later."""

    async def handler(self, ws: ServerConnection) -> None:
        if self.connections == 1:
            for i in range(1, 101):
                await ws.send(trade_frame("BTCUSDT", i, f"{60000 + i}.5"))
            for frame in BAD_FRAMES:
                await ws.send(frame)
            await ws.send(b'{"e":"aggTrade","s":"BTCUSDT"}')
            return  # closing the connection: ingest must reconnect
        for i in range(1, 51):
            await ws.send(trade_frame("ETHUSDT", i, f"{3000 + i}.25"))
        await self.stopped()


@pytest.fixture
def scripted_server() -> Iterator[ScriptedWsServer]:
    with ScriptedServer().running() as server:
        yield server


def test_trades_to_kafka_bad_frames_to_dlq_and_reconnect(
    isolated: Env, scripted_server: ScriptedWsServer
) -> None:
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        ["BTCUSDT", "ETHUSDT"],
        extra_env=isolated.env,
    )
    try:
        pipeline.start_ingest(scripted_server.url)

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
        wait_for(
            lambda: (
                sum(
                    h
                    for _l, h in watermarks(isolated.settings, isolated.settings.dlq_topic).values()
                )
                == 3
            ),
            30,
            "3 DLQ records",
        )
        dead = [orjson.loads(v) for v in read_all(isolated.settings, isolated.settings.dlq_topic)]
        assert sorted(d["raw"] for d in dead) == sorted(f.decode() for f in BAD_FRAMES)
        assert all(d["reason"] and d["source"].startswith("ws://127.0.0.1") for d in dead)
        pipeline.check_alive()
    finally:
        pipeline.stop()
