"""One WebSocket connection as an asyncio Protocol (the thin I/O shell around ``wsproto``).

Received bytes are split into frames in one loop and handed to ``on_frames`` as a list together
with one receive timestamp: no future, task or object per frame. Pings are answered with pongs
echoing their payload; a close frame is answered and the connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from cryptostream.ingest.wsproto import (
    OP_CLOSE,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    HandshakeError,
    ProtocolError,
    check_handshake,
    client_frame,
    close_payload,
    handshake_request,
)

FramesHandler = Callable[[list[bytes], int, "WsConnection"], None]
MAX_HEAD = 65536


class WsConnection(asyncio.Protocol):
    def __init__(
        self,
        url: str,
        on_frames: FramesHandler,
        max_size: int,
        name: str,
        unseen: set[str] | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self.on_frames = on_frames
        self.parser = FrameParser(max_size)
        self.transport: asyncio.Transport | None = None
        self.request, self.key = handshake_request(url)
        self.head = b""
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self.opened_at = time.monotonic()
        self.last_rx = self.opened_at
        self.frames = 0
        self.got_frames = asyncio.Event()
        self.paused = False
        self.error: str | None = None
        # for the ingest: symbols not seen yet on this connection (after a reconnect), and
        # whether the server announced its shutdown
        self.unseen: set[str] = unseen or set()
        self.shutdown_notice = False

    # ----- asyncio.Protocol -----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD:
                    self._fail("handshake response too large")
                return
            try:
                check_handshake(self.head[:end], self.key)
            except HandshakeError as exc:
                self._fail(str(exc))
                return
            data, self.head, self.upgraded = self.head[end + 4 :], b"", True
            if not self.ready.done():
                self.ready.set_result(None)
            if not data:
                return
        parser = self.parser
        try:
            frames = parser.feed(data)
        except ProtocolError as exc:
            self._fail(f"protocol error: {exc}")
            return
        if parser.pings:
            transport = self.transport
            assert transport is not None
            for payload in parser.pings:
                transport.write(client_frame(OP_PONG, payload))
            parser.pings.clear()
        if frames:
            if not self.frames:
                self.got_frames.set()
            self.frames += len(frames)
            self.on_frames(frames, time.time_ns() // 1000, self)
        if parser.close is not None:
            code, reason = parser.close
            self.error = f"server closed the connection: {code} {reason}".strip()
            self.close(code if code not in (1005, 1006) else 1000)

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
            self.transport.write(client_frame(OP_TEXT, payload))

    def close(self, code: int = 1000, reason: str = "") -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(Exception):
            transport.write(client_frame(OP_CLOSE, close_payload(code, reason)))
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
    unseen: set[str] | None = None,
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
    conn = WsConnection(url, on_frames, max_size, name, unseen)
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
