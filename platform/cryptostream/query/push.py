"""Live push: one shared Redis subscription per worker, fanned out to many clients.

The processor publishes, per applied batch, a JSON array on ``updates:price``; each element is
the new latest trade of one symbol::

    [{"symbol": "BTCUSDT", "price": "66398.85000000", "quantity": "0.01200000",
      "trade_id": 3141592, "trade_time": 1718000000000, "event_time": 1718000000001,
      "update_time": 1718000000012}, ...]

(price and quantity are decimal strings, the rest integers, times in ms; ``update_time`` is when
the batch became visible in Redis).

Why this shape of fan-out: a subscription per client would cost Redis a connection per client,
and a queue per client grows without bound when the client reads slower than trades arrive.
Instead the :class:`PriceHub` reads the channel once and :meth:`ClientFeed.offer` stores the
update in the client's dict keyed by symbol -- O(1), never awaiting -- so a newer update replaces
an older one that the client has not taken yet. A lagging client therefore holds at most one
update per subscribed symbol and receives the latest values when it catches up, while every other
client is served at full speed. The service stays stateless: nothing here outlives a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from cryptostream.core.keys import PRICE_CHANNEL
from cryptostream.core.symbols import InvalidSymbol
from cryptostream.query.inputs import parse_symbol_list, parse_symbols
from cryptostream.query.metrics import QueryMetrics

log = logging.getLogger("cryptostream.query.push")

Update = dict[str, Any]


class ClientFeed:
    """One client's pending updates: at most one (the newest) per symbol."""

    def __init__(self, metrics: QueryMetrics | None = None) -> None:
        self.pending: dict[str, Update] = {}
        self.symbols: set[str] = set()
        self._ready = asyncio.Event()
        self._metrics = metrics
        self.coalesced = 0

    def offer(self, symbol: str, update: Update) -> None:
        """Keep ``update`` as the latest for ``symbol``; never blocks, never grows past symbols."""
        if symbol in self.pending:
            self.coalesced += 1
            if self._metrics is not None:
                self._metrics.stream_coalesced.inc()
        self.pending[symbol] = update
        self._ready.set()

    async def take(self) -> list[Update]:
        """Wait for updates, then hand over everything pending (oldest symbol first)."""
        while not self.pending:
            self._ready.clear()
            await self._ready.wait()
        batch = list(self.pending.values())
        self.pending = {}
        self._ready.clear()
        return batch


class PriceHub:
    """The worker's single subscription to ``updates:price`` and its routing table."""

    def __init__(self, redis_url: str, metrics: QueryMetrics) -> None:
        self.redis_url = redis_url
        self.metrics = metrics
        self.by_symbol: dict[str, set[ClientFeed]] = {}
        self.feeds: set[ClientFeed] = set()
        # Clients following every symbol: feed -> how many symbols it may follow at most.
        self.followers_of_all: dict[ClientFeed, int] = {}
        self.subscribed = asyncio.Event()
        metrics.stream_pending.set_function(self.pending_total)
        self._task: asyncio.Task[None] | None = None

    def pending_total(self) -> int:
        """Updates held for clients that have not taken them: bounded by their subscriptions."""
        return sum(len(feed.pending) for feed in list(self.feeds))

    def register(self, feed: ClientFeed, symbols: Iterable[str]) -> None:
        self.feeds.add(feed)
        for symbol in symbols:
            if symbol not in feed.symbols:
                feed.symbols.add(symbol)
                self.by_symbol.setdefault(symbol, set()).add(feed)

    def register_all(self, feed: ClientFeed, limit: int) -> None:
        """Follow every symbol, each from its first update on, up to ``limit`` symbols (the
        per-client bound that keeps a slow client's pending updates bounded)."""
        self.feeds.add(feed)
        self.followers_of_all[feed] = limit

    def unregister(self, feed: ClientFeed, symbols: Iterable[str] | None = None) -> None:
        """Drop some of ``feed``'s symbols, or (``symbols=None``) the whole client."""
        if symbols is None:
            self.feeds.discard(feed)
            self.followers_of_all.pop(feed, None)
        for symbol in list(feed.symbols if symbols is None else symbols):
            feed.symbols.discard(symbol)
            feed.pending.pop(symbol, None)
            feeds = self.by_symbol.get(symbol)
            if feeds is not None:
                feeds.discard(feed)
                if not feeds:
                    del self.by_symbol[symbol]

    def dispatch(self, data: bytes | str) -> int:
        """Route one channel message to the feeds of its symbols; returns updates routed."""
        try:
            updates = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("undecodable message on %s", PRICE_CHANNEL)
            return 0
        if isinstance(updates, dict):
            updates = [updates]
        if not isinstance(updates, list):
            return 0
        routed = 0
        for update in updates:
            if not isinstance(update, dict):
                continue
            self.metrics.stream_updates.inc()
            if self.followers_of_all:
                self._follow_new_symbol(update.get("symbol"))
            feeds = self.by_symbol.get(update.get("symbol"))  # type: ignore[arg-type]
            if feeds:
                for feed in feeds:
                    feed.offer(update["symbol"], update)
                    routed += 1
        return routed

    def _follow_new_symbol(self, symbol: Any) -> None:
        if not isinstance(symbol, str):
            return
        for feed, limit in self.followers_of_all.items():
            if symbol not in feed.symbols and len(feed.symbols) < limit:
                self.register(feed, [symbol])

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="price-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: a cancel that lands mid-connect must not hold up shutdown.
            await asyncio.wait({self._task}, timeout=2.0)
            self._task = None

    async def _run(self) -> None:
        """Subscribe, dispatch, and re-subscribe with backoff whenever Redis goes away."""
        backoff = 0.1
        first = True
        while True:
            client = aioredis.Redis.from_url(
                self.redis_url, socket_connect_timeout=1.0, health_check_interval=15
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(PRICE_CHANNEL)
                if not first:
                    self.metrics.pubsub_reconnects.inc()
                    log.info("re-subscribed to %s", PRICE_CHANNEL)
                first = False
                self.subscribed.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self.dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("price subscription lost: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), 1.0)


# --- the WebSocket endpoint ------------------------------------------------------------------


async def serve_websocket(
    hub: PriceHub,
    metrics: QueryMetrics,
    websocket: WebSocket,
    *,
    max_symbols: int,
    send_timeout_s: float,
) -> None:
    """``/ws/prices``: subscribe, then receive ``{"type": "prices", "updates": [...]}``.

    Protocol (JSON text frames):

    - connect with ``?symbols=BTCUSDT,ETHUSDT`` and/or send
      ``{"op": "subscribe"|"unsubscribe", "symbols": [...]}`` at any time;
    - every (un)subscription is acknowledged with ``{"type": "subscribed", "symbols": [...]}``
      (the full current set), a bad one with ``{"type": "error", "error": "..."}``;
    - updates arrive as ``{"type": "prices", "updates": [<processor update>, ...]}``, at most one
      per symbol per frame; a client that reads slowly skips to the latest values. A frame that
      cannot be written within ``send_timeout_s`` drops the client (close code 1008).
    """
    await websocket.accept()
    feed = ClientFeed(metrics)
    hub.feeds.add(feed)
    metrics.stream_clients.inc()
    send_lock = asyncio.Lock()

    async def send(doc: dict[str, Any]) -> None:
        async with send_lock:
            await websocket.send_text(orjson.dumps(doc).decode())

    try:
        raw = websocket.query_params.get("symbols")
        if raw:
            try:
                hub.register(feed, parse_symbol_list(raw, max_symbols))
            except InvalidSymbol as exc:
                await send({"type": "error", "error": str(exc)})
                await websocket.close(code=1008)
                return
        await send({"type": "subscribed", "symbols": sorted(feed.symbols)})
        pump = asyncio.create_task(_pump(websocket, feed, metrics, send, send_timeout_s))
        reader = asyncio.create_task(_read_commands(websocket, hub, feed, send, max_symbols))
        done, pending = await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
    except WebSocketDisconnect:
        pass
    finally:
        hub.unregister(feed)
        metrics.stream_clients.dec()


async def _pump(
    websocket: WebSocket,
    feed: ClientFeed,
    metrics: QueryMetrics,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    send_timeout_s: float,
) -> None:
    while True:
        batch = await feed.take()
        try:
            await asyncio.wait_for(send({"type": "prices", "updates": batch}), send_timeout_s)
        except TimeoutError:
            metrics.stream_dropped_clients.inc()
            log.warning("dropping a live client that stopped reading")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(code=1008), 1.0)
            return


async def _read_commands(
    websocket: WebSocket,
    hub: PriceHub,
    feed: ClientFeed,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    max_symbols: int,
) -> None:
    while True:
        text = await websocket.receive_text()
        try:
            command = orjson.loads(text)
            op = command.get("op") if isinstance(command, dict) else None
            if op not in ("subscribe", "unsubscribe"):
                raise ValueError('expected {"op": "subscribe"|"unsubscribe", "symbols": [...]}')
            raw = command.get("symbols")
            if not isinstance(raw, list):
                raise ValueError("symbols must be a list")
            symbols = parse_symbols(raw, max_symbols)
            if op == "subscribe":
                if len(feed.symbols | set(symbols)) > max_symbols:
                    raise ValueError(f"at most {max_symbols} symbols per connection")
                hub.register(feed, symbols)
            else:
                hub.unregister(feed, symbols)
        except (ValueError, orjson.JSONDecodeError) as exc:  # InvalidSymbol is a ValueError
            await send({"type": "error", "error": str(exc)})
            continue
        await send({"type": "subscribed", "symbols": sorted(feed.symbols)})
