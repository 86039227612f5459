"""Read-only access to the Redis views, with every Redis failure turned into one exception.

The routes never see a redis-py exception: anything that means "Redis is not answering right
now" becomes :class:`StoreUnavailable` (rendered as 503), and the client reconnects on the next
call, so the service recovers by itself when Redis comes back. Every command here touches keys
named exactly from a validated symbol; nothing builds a pattern (``KEYS``/``SCAN``) from input.

A symbol's keys carry its home partition's hash tag (core/keys.py), computed from the symbol
and ``CSP_PARTITIONS``; on a Redis Cluster (``CSP_REDIS_CLUSTER``) the reads go to the master of
that tag's slot: ``GET /price`` through :class:`~.fastredis.ClusterReader`, the rest through
redis-py's cluster client, whose pipelines (``/prices``, ``/books/top``) send each master its
share in one round trip, all masters in parallel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cryptostream.core.keys import (
    LAYOUT_KEY,
    LAYOUT_VERSION,
    book_key,
    book_side_key,
    candles_1m_key,
    key_slot,
    price_key,
    stats_key,
    symbols_keys,
)
from cryptostream.query.errors import StoreUnavailable
from cryptostream.query.fastredis import ClusterReader, PipelinedReader, RedisTimedOut, encode

# "the cluster is not answering right now" (a failover in progress, a slot without a master)
_CLUSTER_UNAVAILABLE = (
    ClusterDownError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
    MaxConnectionsError,
)

__all__ = ["RedisStore", "StoreUnavailable", "make_client"]

# One book in one atomic step on a cluster (redis-py's asyncio cluster pipeline cannot run a
# MULTI/EXEC from a long-lived event loop: it runs each queued command with asyncio.run in a
# thread). The three keys share the book's hash tag, so the script touches one slot.
BOOK_READ_SCRIPT = """
return {redis.call('HGETALL', KEYS[1]),
        redis.call('ZREVRANGE', KEYS[2], 0, ARGV[1]),
        redis.call('ZRANGE', KEYS[3], 0, ARGV[1])}
"""

T = TypeVar("T")


def make_client(
    url: str,
    *,
    timeout: float = 1.0,
    pool_size: int = 64,
    cluster: bool = False,
    seeds: Sequence[tuple[str, int]] = (),
) -> Any:
    """A redis-py asyncio client: bounded pool, short timeouts, one retry on a broken connection.

    The single retry (connection errors only, not timeouts) absorbs pooled connections that
    died with a Redis restart; beyond that a request fails fast with 503 rather than queue up
    behind a dead server. On a cluster: redis-py's cluster client (at most ``pool_size``
    connections per master), which follows MOVED/ASK and reloads the slot map after a failover;
    it starts from ``url``'s node or any of ``seeds``.
    """
    if cluster:
        return AsyncRedisCluster.from_url(
            url,
            startup_nodes=[AsyncClusterNode(host, port) for host, port in seeds],
            max_connections=pool_size,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=0,
    )
    return aioredis.Redis(connection_pool=pool)


class RedisStore:
    """The views of :mod:`cryptostream.core.keys`, read with redis-py asyncio (hiredis parser)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        partitions: int = 8,
        cluster: bool = False,
        seeds: Sequence[tuple[str, int]] = (),
    ) -> None:
        """``seeds``: more nodes of the cluster to start from (``Settings.redis_seeds``)."""
        self.url = url
        self.partitions = partitions
        self.cluster = cluster
        self.client: Any = make_client(url, timeout=timeout, cluster=cluster, seeds=seeds)
        self.hot: PipelinedReader | ClusterReader = (
            ClusterReader(url, timeout=timeout, seeds=seeds)
            if cluster
            else PipelinedReader(url, timeout=timeout)
        )
        # symbol -> (slot, encoded HGET price): a symbol's key and slot, computed once
        self._price_commands: dict[str, tuple[int, bytes]] = {}
        self._book_script: Any = self.client.register_script(BOOK_READ_SCRIPT) if cluster else None

    def _price_command(self, symbol: str) -> tuple[int, bytes]:
        found = self._price_commands.get(symbol)
        if found is None:
            if len(self._price_commands) >= 100_000:
                self._price_commands.clear()
            key = price_key(symbol, self.partitions)
            found = self._price_commands[symbol] = (
                key_slot(key),
                encode(b"HGET", key.encode(), b"price"),
            )
        return found

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (RedisConnectionError, RedisTimeoutError, OSError, *_CLUSTER_UNAVAILABLE) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from None
        except RedisError as exc:  # e.g. LOADING after a restart, or a wrong-type key
            if "LOADING" in str(exc) or "BUSY" in str(exc):
                raise StoreUnavailable(f"redis unavailable: {exc}") from None
            raise

    async def layout_partitions(self) -> int | None:
        """The partition count of the layout the processors recorded (None: none recorded)."""
        raw = await self._call(lambda: self.client.get(LAYOUT_KEY))
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
            return int(doc["partitions"]) if doc.get("version") == LAYOUT_VERSION else None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    async def ping(self) -> bool:
        return bool(await self._call(lambda: self.client.ping()))

    async def price(self, symbol: str) -> bytes | None:
        """The latest price's decimal string, or None if the symbol has none."""
        slot, command = self._price_command(symbol)
        try:
            return await self.hot.send(command, slot)  # type: ignore[no-any-return]
        except RedisTimedOut:
            raise  # a hung Redis: a retry would double the wait before the 503
        except StoreUnavailable:
            # A connection that died with a Redis restart: one retry on a fresh one.
            return await self.hot.send(command, slot)  # type: ignore[no-any-return]

    async def price_and_trade_id(self, symbol: str) -> tuple[bytes | None, bytes | None]:
        """The latest price and its trade id (one ``HMGET``), for the price view."""
        key = price_key(symbol, self.partitions).encode()
        slot = key_slot(key)
        try:
            reply = await self.hot.execute_at(slot, b"HMGET", key, b"price", b"trade_id")
        except RedisTimedOut:
            raise
        except StoreUnavailable:  # a connection that died with a Redis restart: one retry
            reply = await self.hot.execute_at(slot, b"HMGET", key, b"price", b"trade_id")
        price, trade_id = reply
        return price, trade_id

    async def prices(self, symbols: Sequence[str]) -> list[bytes | None]:
        """Many latest prices in one round trip (a pipeline, not a transaction; on a cluster
        one per master, in parallel)."""

        async def run() -> list[bytes | None]:
            pipe = self.client.pipeline(transaction=False)
            for symbol in symbols:
                pipe.hget(price_key(symbol, self.partitions), "price")
            result: list[bytes | None] = await pipe.execute()
            return result

        return await self._call(run)

    async def latest_trade(self, symbol: str) -> dict[bytes, bytes]:
        result: dict[bytes, bytes] = await self._call(
            lambda: self.client.hgetall(price_key(symbol, self.partitions))
        )
        return result

    async def stats(self, symbol: str) -> dict[bytes, bytes]:
        result: dict[bytes, bytes] = await self._call(
            lambda: self.client.hgetall(stats_key(symbol, self.partitions))
        )
        return result

    async def symbols(self) -> list[bytes]:
        """Every symbol with a price: the union of the partitions' symbol sets."""

        async def run() -> list[set[bytes]]:
            pipe = self.client.pipeline(transaction=False)
            for key in symbols_keys(self.partitions):
                pipe.smembers(key)
            result: list[set[bytes]] = await pipe.execute()
            return result

        sets = await self._call(run)
        return sorted(set().union(*sets))

    async def latest_candle_time(self, symbol: str) -> int | None:
        """Open time (ms) of the newest 1-minute candle, from its score."""
        rows: list[tuple[bytes, float]] = await self._call(
            lambda: self.client.zrevrange(
                candles_1m_key(symbol, self.partitions), 0, 0, withscores=True
            )
        )
        return int(rows[0][1]) if rows else None

    async def candles_1m_since(self, symbol: str, since_ms: int, count: int) -> list[bytes]:
        """At most ``count`` 1-minute candle members with open time >= ``since_ms``, oldest first."""
        result: list[bytes] = await self._call(
            lambda: self.client.zrangebyscore(
                candles_1m_key(symbol, self.partitions), since_ms, "+inf", start=0, num=count
            )
        )
        return result

    async def book(
        self, symbol: str, depth: int
    ) -> tuple[dict[bytes, bytes], list[bytes], list[bytes]]:
        """The ``book:{pP}:SYMBOL`` hash and the best ``depth`` levels of each side (bids best
        first, asks best first), read in one MULTI/EXEC (the three keys share the book's hash
        tag: one slot on a cluster): the processor applies a book update atomically, so the
        three replies always come from one state of the book."""
        n = self.partitions
        keys = [
            book_key(symbol, n),
            book_side_key(symbol, "bids", n),
            book_side_key(symbol, "asks", n),
        ]

        async def read() -> tuple[dict[bytes, bytes], list[bytes], list[bytes]]:
            flat, bids, asks = await self._book_script(keys=keys, args=[depth - 1])
            return dict(zip(flat[::2], flat[1::2], strict=True)), bids, asks

        if self._book_script is not None:
            return await self._call(read)

        async def run() -> tuple[dict[bytes, bytes], list[bytes], list[bytes]]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(book_key(symbol, n))
            pipe.zrevrange(book_side_key(symbol, "bids", n), 0, depth - 1)
            pipe.zrange(book_side_key(symbol, "asks", n), 0, depth - 1)
            fields, bids, asks = await pipe.execute()
            return fields, bids, asks

        return await self._call(run)

    async def book_tops(
        self, symbols: Sequence[str], fields: Sequence[str]
    ) -> list[list[bytes | None]]:
        """``fields`` of many ``book:{pP}:SYMBOL`` hashes in one round trip (per master on a
        cluster; each HMGET is atomic by itself, which is all a top of book needs: it lives in
        the one hash)."""

        async def run() -> list[list[bytes | None]]:
            pipe = self.client.pipeline(transaction=False)
            for symbol in symbols:
                pipe.hmget(book_key(symbol, self.partitions), list(fields))
            result: list[list[bytes | None]] = await pipe.execute()
            return result

        return await self._call(run)

    async def close(self) -> None:
        self.hot.close()
        await self.client.aclose()
