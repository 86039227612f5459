"""One WebSocket connection as an asyncio Protocol (the thin I/O shell around ``wsproto``).

Received bytes are split into frames in one loop and handed to ``on_frames`` as a list together
with one receive timestamp: no future, task or object per frame. The protocol state — handshake
buffering, the pongs echoing pings, the reply to a close frame — lives in
:class:`~cryptostream.ingest.wsproto.ClientProtocol`; this shell writes what it queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from cryptostream.ingest.wsproto import ClientProtocol, HandshakeError, ProtocolError

FramesHandler = Callable[[list[bytes], int, "WsConnection"], None]
_ids = itertools.count(1)


def next_connection_id() -> int:
    """A process-wide unique connection id (what the ingest engine knows a connection by)."""
    return next(_ids)


class WsConnection(asyncio.Protocol):
    def __init__(
        self,
        url: str,
        on_frames: FramesHandler,
        max_size: int,
        name: str,
        conn_id: int | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self.id = next_connection_id() if conn_id is None else conn_id
        self.on_frames = on_frames
        self.proto = ClientProtocol(url, max_size)
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self.opened_at = time.monotonic()
        self.last_rx = self.opened_at
        self.frames = 0
        self.got_frames = asyncio.Event()
        self.paused = False
        self.error: str | None = None
        self.shutdown_notice = False  # for the depth path: the server announced its shutdown

    # ----- asyncio.Protocol -----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.proto.data_to_send())

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        proto = self.proto
        upgraded = proto.upgraded
        try:
            frames = proto.receive_data(data)
        except (HandshakeError, ProtocolError) as exc:
            self._fail(str(exc) if isinstance(exc, HandshakeError) else f"protocol error: {exc}")
            return
        if not upgraded and proto.upgraded and not self.ready.done():
            self.ready.set_result(None)
        if proto.outgoing:
            self._flush()
        if frames:
            if not self.frames:
                self.got_frames.set()
            self.frames += len(frames)
            self.on_frames(frames, time.time_ns() // 1000, self)
        if proto.close_received is not None and self.error is None:
            code, reason = proto.close_received
            self.error = f"server closed the connection: {code} {reason}".strip()
            if self.transport is not None:
                self.transport.close()

    def _flush(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.write(self.proto.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.error or (f"connection lost: {exc!r}" if exc else "connection closed")
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if not self.closed.done():
            self.closed.set_result(reason)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.last_rx = time.monotonic()
            self.transport.resume_reading()

    # ----- actions -----

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.proto.send_text(payload)
            self._flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.proto.send_close(code, reason)
        self._flush()
        transport.close()

    def abort(self, why: str) -> None:
        self.error = self.error or why
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, why: str) -> None:
        self.error = why
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()


async def open_connection(
    url: str,
    on_frames: FramesHandler,
    *,
    max_size: int,
    name: str,
    conn_id: int | None = None,
    open_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> WsConnection:
    """Connect, upgrade, and return the live connection (raises OSError/ConnectionError/
    TimeoutError on failure)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    ctx = (ssl_context or ssl.create_default_context()) if secure else None
    loop = asyncio.get_running_loop()
    conn = WsConnection(url, on_frames, max_size, name, conn_id)
    async with asyncio.timeout(open_timeout):
        transport, _ = await loop.create_connection(
            lambda: conn, host, port, ssl=ctx, server_hostname=host if secure else None
        )
        try:
            await conn.ready
        except BaseException:
            transport.abort()
            raise
    return conn
