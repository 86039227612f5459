"""A scripted WebSocket server in a background thread, for ingest tests that need frames no
real exchange (or the simulator) would send. Subclasses write ``handler``; ``running`` serves it
on a free loopback port for the duration of a ``with`` block."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import orjson
from websockets.asyncio.server import ServerConnection, serve


def trade_frame(symbol: str, trade_id: int, price: str) -> bytes:
    """A combined-stream trade frame exactly as Binance sends it."""
    data = {
        "e": "trade",
        "E": 1_718_000_000_000 + trade_id,
        "s": symbol,
        "t": trade_id,
        "p": price,
        "q": "0.5",
        "T": 1_718_000_000_000 + trade_id,
        "m": False,
        "M": True,
    }
    return orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": data})


class ScriptedWsServer:
    serve_options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self) -> None:
        self.connections = 0
        self.paths: list[str] = []
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.stop_event: asyncio.Event | None = None

    async def handler(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    async def stopped(self) -> None:
        """Keep a connection open until the test is over."""
        assert self.stop_event is not None
        await self.stop_event.wait()

    async def _serve(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.paths.append(ws.request.path if ws.request else "")
        await self.handler(ws)

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        async with serve(self._serve, "127.0.0.1", 0, **self.serve_options) as server:
            self.port = server.sockets[0].getsockname()[1]
            self.started.set()
            await self.stop_event.wait()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @contextmanager
    def running(self) -> Iterator[ScriptedWsServer]:
        thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._main(),), daemon=True
        )
        thread.start()
        try:
            assert self.started.wait(10), "the scripted WebSocket server did not start"
            yield self
        finally:
            if self.stop_event is not None:
                self.loop.call_soon_threadsafe(self.stop_event.set)
            thread.join(10)
