"""Read-only access to the Redis views, with every Redis failure turned into one exception.

The routes never see a redis-py exception: anything that means "Redis is not answering right
now" becomes :class:`StoreUnavailable` (rendered as 503), and the client reconnects on the next
call, so the service recovers by itself when Redis comes back. Every command here touches keys
named exactly from a validated symbol; nothing builds a pattern (``KEYS``/``SCAN``) from input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cryptostream.core.keys import (
    SYMBOLS_KEY,
    book_key,
    book_side_key,
    candles_1m_key,
    price_key,
    stats_key,
)
from cryptostream.query.errors import StoreUnavailable
from cryptostream.query.fastredis import PipelinedReader, RedisTimedOut

__all__ = ["RedisStore", "StoreUnavailable", "make_client"]

T = TypeVar("T")


def make_client(url: str, *, timeout: float = 1.0, pool_size: int = 64) -> Any:
    """A redis-py asyncio client: bounded pool, short timeouts, one retry on a broken connection.

    The single retry (connection errors only, not timeouts) absorbs pooled connections that
    died with a Redis restart; beyond that a request fails fast with 503 rather than queue up
    behind a dead server.
    """
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

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        self.url = url
        self.client: Any = make_client(url, timeout=timeout)
        self.hot = PipelinedReader(url, timeout=timeout)

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from None
        except RedisError as exc:  # e.g. LOADING after a restart, or a wrong-type key
            if "LOADING" in str(exc) or "BUSY" in str(exc):
                raise StoreUnavailable(f"redis unavailable: {exc}") from None
            raise

    async def ping(self) -> bool:
        return bool(await self._call(lambda: self.client.ping()))

    async def price(self, symbol: str) -> bytes | None:
        """The latest price's decimal string, or None if the symbol has none."""
        key = price_key(symbol)
        try:
            return await self.hot.hget(key, b"price")
        except RedisTimedOut:
            raise  # a hung Redis: a retry would double the wait before the 503
        except StoreUnavailable:
            # A connection that died with a Redis restart: one retry on a fresh one.
            return await self.hot.hget(key, b"price")

    async def price_and_trade_id(self, symbol: str) -> tuple[bytes | None, bytes | None]:
        """The latest price and its trade id (one ``HMGET``), for the price view."""
        key = price_key(symbol)
        try:
            reply = await self.hot.execute(b"HMGET", key.encode(), b"price", b"trade_id")
        except RedisTimedOut:
            raise
        except StoreUnavailable:  # a connection that died with a Redis restart: one retry
            reply = await self.hot.execute(b"HMGET", key.encode(), b"price", b"trade_id")
        price, trade_id = reply
        return price, trade_id

    async def prices(self, symbols: Sequence[str]) -> list[bytes | None]:
        """Many latest prices in one round trip (a pipeline, not a transaction)."""

        async def run() -> list[bytes | None]:
            pipe = self.client.pipeline(transaction=False)
            for symbol in symbols:
                pipe.hget(price_key(symbol), "price")
            result: list[bytes | None] = await pipe.execute()
            return result

        return await self._call(run)

    async def latest_trade(self, symbol: str) -> dict[bytes, bytes]:
        result: dict[bytes, bytes] = await self._call(
            lambda: self.client.hgetall(price_key(symbol))
        )
        return result

    async def stats(self, symbol: str) -> dict[bytes, bytes]:
        result: dict[bytes, bytes] = await self._call(
            lambda: self.client.hgetall(stats_key(symbol))
        )
        return result

    async def symbols(self) -> list[bytes]:
        result: set[bytes] = await self._call(lambda: self.client.smembers(SYMBOLS_KEY))
        return sorted(result)

    async def latest_candle_time(self, symbol: str) -> int | None:
        """Open time (ms) of the newest 1-minute candle, from its score."""
        rows: list[tuple[bytes, float]] = await self._call(
            lambda: self.client.zrevrange(candles_1m_key(symbol), 0, 0, withscores=True)
        )
        return int(rows[0][1]) if rows else None

    async def candles_1m_since(self, symbol: str, since_ms: int, count: int) -> list[bytes]:
        """At most ``count`` 1-minute candle members with open time >= ``since_ms``, oldest first."""
        result: list[bytes] = await self._call(
            lambda: self.client.zrangebyscore(
                candles_1m_key(symbol), since_ms, "+inf", start=0, num=count
            )
        )
        return result

    async def book(
        self, symbol: str, depth: int
    ) -> tuple[dict[bytes, bytes], list[bytes], list[bytes]]:
        """The ``book:{SYMBOL}`` hash and the best ``depth`` levels of each side (bids best
        first, asks best first), read in one MULTI/EXEC: the processor applies a book update
        atomically, so the three replies always come from one state of the book."""

        async def run() -> tuple[dict[bytes, bytes], list[bytes], list[bytes]]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(book_key(symbol))
            pipe.zrevrange(book_side_key(symbol, "bids"), 0, depth - 1)
            pipe.zrange(book_side_key(symbol, "asks"), 0, depth - 1)
            fields, bids, asks = await pipe.execute()
            return fields, bids, asks

        return await self._call(run)

    async def book_tops(
        self, symbols: Sequence[str], fields: Sequence[str]
    ) -> list[list[bytes | None]]:
        """``fields`` of many ``book:{SYMBOL}`` hashes in one round trip (each HMGET is atomic
        by itself, which is all a top of book needs: it lives in the one hash)."""

        async def run() -> list[list[bytes | None]]:
            pipe = self.client.pipeline(transaction=False)
            for symbol in symbols:
                pipe.hmget(book_key(symbol), list(fields))
            result: list[list[bytes | None]] = await pipe.execute()
            return result

        return await self._call(run)

    async def close(self) -> None:
        self.hot.close()
        await self.client.aclose()
