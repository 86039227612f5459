"""A minimal pipelining Redis reader for the ``/price`` hot path.

Why: with 64 concurrent requests, redis-py's asyncio client spends most of a request's CPU in
pool checkout and per-command machinery, one round trip per connection. Here every request
queues its ``HGET`` on one shared connection and awaits a future; replies come back in order and
are parsed in bulk by hiredis, so concurrent requests share syscalls (ioredis' approach). Writes
are corked while a batch is in flight: a command queued when nothing is in flight leaves at the
end of the loop iteration, one queued meanwhile leaves with the others as soon as the batch in
flight is answered -- so under load batches grow by themselves and both this process and Redis
make a few large reads and writes instead of one per request.

Timeouts: one deadline per connection, not a timer per request (``asyncio.timeout()`` per call
was ~8 % of a worker's CPU). Each queued command notes when its reply is due; a single watchdog
timer waits for the oldest pending reply. If Redis has not answered it by then, Redis is hung
(it answers in order): every pending caller fails with :class:`StoreUnavailable` (503) and the
connection is closed, so the next call reconnects. A caller therefore never waits longer than
the timeout (plus the loop's timer resolution) for a reply.

Only read commands go through it; failures surface as :class:`StoreUnavailable` and the next
call reconnects.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis

from cryptostream.query.errors import StoreUnavailable


class RedisTimedOut(StoreUnavailable):
    """Redis did not answer within the timeout (as opposed to a connection that broke)."""


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _RedisProtocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.deadlines: deque[float] = deque()  # loop time each waiter's reply is due by
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._outbox: list[bytes] = []  # queued, not yet written
        self._inflight = 0  # written, reply not yet read
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not register as asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue ``command``; it is written with the others of this loop iteration."""
        if self.lost:
            raise StoreUnavailable("redis unavailable: connection closed")
        loop = self.loop
        future: asyncio.Future[Any] = loop.create_future()
        due = loop.time() + self.timeout
        self.waiters.append(future)
        self.deadlines.append(due)
        self._outbox.append(command)
        if not self._inflight and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_at(due, self._check_deadline)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox = self._outbox
        if outbox and not self.lost and self.transport is not None:
            self._outbox = []
            self._inflight += len(outbox)
            self.transport.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])

    def _check_deadline(self) -> None:
        """The watchdog: fail everything if the oldest pending reply is overdue, else wait for
        it (re-armed only when it fires, so its cost does not grow with the request rate)."""
        self._watchdog = None
        if self.lost or not self.deadlines:
            return
        due = self.deadlines[0]
        if self.loop.time() >= due:
            self.fail(RedisTimedOut("redis unavailable: timed out"))
            return
        self._watchdog = self.loop.call_at(due, self._check_deadline)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.waiters
        deadlines = self.deadlines
        while True:
            reply = reader.gets()
            if reply is False:
                if not self._inflight and self._outbox:
                    self._flush()  # the batch in flight is answered: send what queued meanwhile
                return
            if not waiters:  # cannot happen with a well-behaved server
                self.fail(StoreUnavailable("redis unavailable: unexpected reply"))
                return
            future = waiters.popleft()
            deadlines.popleft()
            self._inflight -= 1
            if not future.done():  # a cancelled caller already gave up on it
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(StoreUnavailable(f"redis error: {reply}"))
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(StoreUnavailable(f"redis unavailable: {exc or 'connection closed'}"))

    def fail(self, exc: Exception) -> None:
        self.lost = True
        self._outbox = []
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.deadlines.clear()
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
                    loop.create_connection(
                        lambda: _RedisProtocol(self.timeout), self.host, self.port
                    ),
                    self.timeout,
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
        return await protocol.send(_command(*parts))

    async def execute(self, *parts: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.send(_command(*parts))

    def hget(self, key: str, field: bytes) -> Awaitable[bytes | None]:
        """``HGET key field``: the reply's future itself when connected (one coroutine frame
        less per request on the hot path), else a coroutine that connects first."""
        k = key.encode()
        command = b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(field), field)
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return self._connect_and_send(command)
        return protocol.send(command)

    async def _connect_and_send(self, command: bytes) -> Any:
        protocol = await self._connect()
        return await protocol.send(command)

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
