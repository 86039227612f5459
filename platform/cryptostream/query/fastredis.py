"""A minimal pipelining Redis reader for the ``/price`` hot path.

Why: with 64 concurrent requests, redis-py's asyncio client spends most of a request's CPU in
pool checkout and per-command machinery, one round trip per connection. Here every request
writes its ``HGET`` into one shared connection and awaits a future; replies come back in order
and are parsed in bulk by hiredis, so concurrent requests share syscalls (ioredis' approach).
Only read commands go through it; failures surface as :class:`StoreUnavailable` and the next
call reconnects.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis

from cryptostream.query.errors import StoreUnavailable


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _RedisProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not register as asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not waiters:  # cannot happen with a well-behaved server
                self.fail(StoreUnavailable("redis unavailable: unexpected reply"))
                return
            future = waiters.popleft()
            if not future.done():  # a timed-out caller already gave up on it
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(StoreUnavailable(f"redis error: {reply}"))
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(StoreUnavailable(f"redis unavailable: {exc or 'connection closed'}"))

    def fail(self, exc: Exception) -> None:
        self.lost = True
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class PipelinedReader:
    """One connection, commands pipelined from many concurrent callers."""

    def __init__(self, url: str, *, timeout: float) -> None:
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.password = unquote(parsed.password) if parsed.password else None
        self.username = unquote(parsed.username) if parsed.username else None
        self.db = int(parsed.path.lstrip("/") or 0)
        self.timeout = timeout
        self._protocol: _RedisProtocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _RedisProtocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            current = self._protocol
            if current is not None and not current.lost:
                return current
            loop = asyncio.get_running_loop()
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(_RedisProtocol, self.host, self.port), self.timeout
                )
            except (OSError, TimeoutError) as exc:
                raise StoreUnavailable(f"redis unavailable: {exc}") from None
            if self.password is not None:
                auth = [self.password.encode()]
                if self.username:
                    auth.insert(0, self.username.encode())
                await self._send(protocol, b"AUTH", *auth)
            if self.db:
                await self._send(protocol, b"SELECT", str(self.db).encode())
            self._protocol = protocol
            return protocol

    async def _send(self, protocol: _RedisProtocol, *parts: bytes) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.waiters.append(future)
        assert protocol.transport is not None
        protocol.transport.write(_command(*parts))
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise StoreUnavailable("redis unavailable: timed out") from None

    async def execute(self, *parts: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await self._send(protocol, *parts)

    async def hget(self, key: str, field: bytes) -> bytes | None:
        reply: bytes | None = await self.execute(b"HGET", key.encode(), field)
        return reply

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
