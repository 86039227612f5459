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

On a Redis Cluster (:class:`ClusterReader`), one such connection per master: the reader keeps
the cluster's slot map (``CLUSTER SLOTS``), sends each command to the master of its key's slot,
follows ``MOVED`` (the slot moved: remember its new master, refresh the map) and ``ASK`` (a slot
being migrated: ``ASKING`` + the command on the target), and refreshes the map when a master
stops answering (a failover promotes its replica under another address).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis

from cryptostream.core.keys import CLUSTER_SLOTS
from cryptostream.query.errors import StoreUnavailable


class RedisTimedOut(StoreUnavailable):
    """Redis did not answer within the timeout (as opposed to a connection that broke)."""


class ReplyError(StoreUnavailable):
    """Redis answered with an error (``reply``: its text, e.g. ``MOVED 3999 127.0.0.1:7002``)."""

    def __init__(self, reply: str) -> None:
        super().__init__(f"redis error: {reply}")
        self.reply = reply


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
                    future.set_exception(ReplyError(str(reply)))
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

    async def execute_at(self, slot: int, *parts: bytes) -> Any:
        return await self.execute(*parts)

    def send(self, command: bytes, slot: int = 0) -> Awaitable[Any]:
        """A RESP-encoded command (:func:`encode`): the reply's future itself when connected
        (one coroutine frame less per request on the hot path), else a coroutine that connects
        first. ``slot`` is for the cluster reader's sake (one node: ignored)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return self._connect_and_send(command)
        return protocol.send(command)

    def send_pair(self, first: bytes, second: bytes) -> Awaitable[Any]:
        """Two commands written back to back on this connection (``ASKING`` + a command: the
        second must follow the first on the same connection); the second's reply."""
        return self._pair(first, second)

    async def _pair(self, first: bytes, second: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        one, two = protocol.send(first), protocol.send(second)
        await asyncio.gather(one, return_exceptions=True)
        return await two

    def hget(self, key: str, field: bytes) -> Awaitable[bytes | None]:
        """``HGET key field`` (see :meth:`send`)."""
        return self.send(encode(b"HGET", key.encode(), field))

    async def _connect_and_send(self, command: bytes) -> Any:
        protocol = await self._connect()
        return await protocol.send(command)

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def encode(*parts: bytes) -> bytes:
    """One command in RESP (what :meth:`PipelinedReader.send` takes)."""
    return _command(*parts)


Node = tuple[str, int]
_REFRESH_MIN_S = 0.25  # at most one slot-map refresh per this many seconds


class ClusterReader:
    """:class:`PipelinedReader`'s batching on a Redis Cluster: one pipelined connection per
    master, each command sent to the master of its slot (see the module's description)."""

    def __init__(self, url: str, *, timeout: float, seeds: Sequence[Node] = ()) -> None:
        parsed = urlparse(url)
        self.url = url
        self.seed: Node = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.seeds: list[Node] = [s for s in dict.fromkeys(seeds) if s != self.seed]
        self.timeout = timeout
        self._credentials = url.split("://", 1)[1].rpartition("@")[0] if "@" in url else ""
        self._scheme = parsed.scheme or "redis"
        self.slots: list[Node | None] = [None] * CLUSTER_SLOTS
        self.nodes: dict[Node, PipelinedReader] = {}
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0
        self.redirects = 0
        self.refreshes = 0

    def _reader(self, node: Node) -> PipelinedReader:
        reader = self.nodes.get(node)
        if reader is None:
            auth = f"{self._credentials}@" if self._credentials else ""
            reader = self.nodes[node] = PipelinedReader(
                f"{self._scheme}://{auth}{node[0]}:{node[1]}/0", timeout=self.timeout
            )
        return reader

    async def refresh(self, *, force: bool = False) -> None:
        """Load the slot map (one refresh at a time; not again within _REFRESH_MIN_S unless
        nothing is known yet or ``force``)."""
        loop = asyncio.get_running_loop()
        if self._refresh is not None and not self._refresh.done():
            await asyncio.shield(self._refresh)
            return
        if not force and self._refreshed_at and loop.time() - self._refreshed_at < _REFRESH_MIN_S:
            return
        self._refresh = loop.create_task(self._load())
        await asyncio.shield(self._refresh)

    async def _load(self) -> None:
        self._refreshed_at = asyncio.get_running_loop().time()
        self.refreshes += 1
        seeds = [self.seed, *self.seeds]
        candidates = [*seeds, *(n for n in self.nodes if n not in seeds)]
        last: Exception | None = None
        for node in candidates:
            try:
                reply = await self._reader(node).execute(b"CLUSTER", b"SLOTS")
            except StoreUnavailable as exc:
                last = exc
                continue
            slots: list[Node | None] = [None] * CLUSTER_SLOTS
            for start, end, master, *_replicas in reply:
                host = master[0].decode() if master[0] else node[0]
                owner = (host, int(master[1]))
                slots[int(start) : int(end) + 1] = [owner] * (int(end) - int(start) + 1)
            self.slots = slots
            return
        raise StoreUnavailable(f"redis unavailable: no cluster node answers ({last})")

    def send(self, command: bytes, slot: int) -> Awaitable[Any]:
        node = self.slots[slot]
        if node is None:
            return self._send_slow(command, slot)
        reader = self._reader(node)
        return self._follow(reader.send(command), command, slot)

    async def _follow(self, reply: Awaitable[Any], command: bytes, slot: int) -> Any:
        try:
            return await reply
        except RedisTimedOut:
            raise
        except ReplyError as exc:
            if exc.reply.startswith(("MOVED ", "ASK ")):
                return await self._redirected(exc.reply, command, slot)
            raise  # CLUSTERDOWN, TRYAGAIN...: 503
        except StoreUnavailable:  # the master is gone (a failover?): the map may be stale
            await self.refresh()
            return await self._send_slow(command, slot, retried=True)

    async def _send_slow(self, command: bytes, slot: int, retried: bool = False) -> Any:
        for _ in range(3):
            node = self.slots[slot]
            if node is None:
                await self.refresh(force=not retried)
                node = self.slots[slot]
                if node is None:
                    raise StoreUnavailable(f"redis unavailable: no master for slot {slot}")
            try:
                return await self._reader(node).send(command)
            except RedisTimedOut:
                raise
            except ReplyError as exc:
                if exc.reply.startswith(("MOVED ", "ASK ")):
                    return await self._redirected(exc.reply, command, slot)
                raise
            except StoreUnavailable:
                if retried:
                    raise
                retried = True
                await self.refresh(force=True)
        raise StoreUnavailable("redis unavailable: the cluster keeps redirecting")

    async def _redirected(self, reply: str, command: bytes, slot: int, hops: int = 0) -> Any:
        kind, _slot, address = reply.split(" ")[:3]
        host, _, port = address.rpartition(":")
        target = (host or self.seed[0], int(port))
        self.redirects += 1
        try:
            if kind == "ASK":  # this one command, this once, on the importing node
                return await self._reader(target).send_pair(encode(b"ASKING"), command)
            self.slots[slot] = target  # moved for good; the rest of the map probably too
            asyncio.get_running_loop().create_task(self._refresh_quietly())
            return await self._reader(target).send(command)
        except ReplyError as exc:
            if hops < 3 and exc.reply.startswith(("MOVED ", "ASK ")):
                return await self._redirected(exc.reply, command, slot, hops + 1)
            raise

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.refresh()

    async def execute_at(self, slot: int, *parts: bytes) -> Any:
        return await self.send(encode(*parts), slot)

    def close(self) -> None:
        for reader in self.nodes.values():
            reader.close()
        self.nodes.clear()
