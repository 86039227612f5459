"""Live push: one shared Redis subscription per worker, fanned out to many clients.

The processor publishes, per applied batch, a JSON array on ``updates:price``; each element is
the new latest trade of one symbol::

    [{"symbol": "BTCUSDT", "price": "66398.85000000", "quantity": "0.01200000",
      "trade_id": 3141592, "trade_time": 1718000000000, "event_time": 1718000000001,
      "update_time": 1718000000012}, ...]

(price and quantity are decimal strings, the rest integers, times in ms; ``update_time`` is when
the batch became visible in Redis). Top-of-book updates arrive the same way on ``updates:book``
(their shape: :data:`cryptostream.query.books.BOOK_UPDATE_DOC`). Each channel has its
:class:`Topic` (routing table), both are read by one subscription in the :class:`PushHub`.

Why this shape of fan-out: a subscription per client would cost Redis a connection per client,
and a queue per client grows without bound when the client reads slower than trades arrive.
Instead the :class:`PushHub` reads each channel once and :meth:`ClientFeed.offer` stores the
update in the client's dict keyed by symbol -- O(1), never awaiting -- so a newer update replaces
an older one that the client has not taken yet. A lagging client therefore holds at most one
update per subscribed symbol and receives the latest values when it catches up, while every other
client is served at full speed. The service stays stateless: nothing here outlives a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from cryptostream.core.keys import BOOK_CHANNEL, PRICE_CHANNEL
from cryptostream.core.symbols import InvalidSymbol
from cryptostream.query.inputs import parse_symbol_list, parse_symbols
from cryptostream.query.metrics import QueryMetrics
from cryptostream.query.view import PriceView
from cryptostream.redisconn import node_url

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


class Topic:
    """The routing table of one pub/sub channel: symbol -> the feeds following it.

    ``name`` is what clients call it (``price``, ``book``); a feed belongs to one topic."""

    def __init__(self, name: str, channel: str, received: Counter) -> None:
        self.name = name
        self.channel = channel
        self.received = received
        self.by_symbol: dict[str, set[ClientFeed]] = {}
        self.feeds: set[ClientFeed] = set()
        # Clients following every symbol: feed -> how many symbols it may follow at most.
        self.followers_of_all: dict[ClientFeed, int] = {}
        # Sees every update first (the price view), whether or not a client follows it.
        self.on_update: Callable[[Update], None] | None = None

    def pending_total(self) -> int:
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
            log.warning("undecodable message on %s", self.channel)
            return 0
        if isinstance(updates, dict):
            updates = [updates]
        if not isinstance(updates, list):
            return 0
        routed = 0
        for update in updates:
            if not isinstance(update, dict):
                continue
            self.received.inc()
            if self.on_update is not None:
                self.on_update(update)
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


class PushHub:
    """The worker's single Redis subscription (``updates:price`` and ``updates:book`` on one
    connection) and one :class:`Topic` per channel."""

    def __init__(
        self,
        redis_url: str,
        metrics: QueryMetrics,
        view: PriceView | None = None,
        seeds: Sequence[tuple[str, int]] = (),
    ) -> None:
        """``seeds``: the nodes of a Redis Cluster to subscribe on (any one node receives every
        ``PUBLISH``), tried in turn while the current one fails."""
        self.redis_url = redis_url
        self.urls = [redis_url] if not seeds else [node_url(redis_url, h, p) for h, p in seeds]
        self.metrics = metrics
        self.view = view
        self.prices = Topic("price", PRICE_CHANNEL, metrics.stream_updates)
        if view is not None:
            self.prices.on_update = view.apply
        self.books = Topic("book", BOOK_CHANNEL, metrics.stream_book_updates)
        self.topics = {topic.name: topic for topic in (self.prices, self.books)}
        self._by_channel = {topic.channel.encode(): topic for topic in self.topics.values()}
        self.subscribed = asyncio.Event()
        metrics.stream_pending.set_function(self.pending_total)
        self._task: asyncio.Task[None] | None = None

    def pending_total(self) -> int:
        """Updates held for clients that have not taken them: bounded by their subscriptions."""
        return sum(topic.pending_total() for topic in self.topics.values())

    def dispatch(self, channel: bytes | str, data: bytes | str) -> int:
        key = channel.encode() if isinstance(channel, str) else channel
        topic = self._by_channel.get(key)
        return 0 if topic is None else topic.dispatch(data)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="push-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: a cancel that lands mid-connect must not hold up shutdown.
            await asyncio.wait({self._task}, timeout=2.0)
            self._task = None

    async def _run(self) -> None:
        """Subscribe, dispatch, and re-subscribe with backoff whenever Redis goes away. With a
        price view, a PING every ``max_lag / 4`` on the subscription confirms its freshness
        (see :mod:`cryptostream.query.view`)."""
        backoff = 0.1
        first = True
        channels = [topic.channel for topic in self.topics.values()]
        view = self.view
        interval = 5.0 if view is None else view.max_lag_s / 4
        turn = 0
        while True:
            url = self.urls[turn % len(self.urls)]
            client = aioredis.Redis.from_url(
                url, socket_connect_timeout=1.0, health_check_interval=15
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                if view is not None:
                    view.subscribed()
                if not first:
                    self.metrics.pubsub_reconnects.inc()
                    log.info("re-subscribed to %s", ", ".join(channels))
                first = False
                self.subscribed.set()
                backoff = 0.1
                seq = 0
                ping_sent: tuple[bytes, float] | None = None  # one ping in flight at a time
                next_ping = 0.0
                while True:
                    if view is not None and ping_sent is None and time.monotonic() >= next_ping:
                        seq += 1
                        token = b"csp-view-%d" % seq
                        ping_sent = (token, time.monotonic())
                        await pubsub.ping(token)
                        next_ping = ping_sent[1] + interval
                    message = await pubsub.get_message(timeout=interval)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind == "message":
                        self.dispatch(message["channel"], message["data"])
                    elif (
                        kind == "pong"
                        and view is not None
                        and ping_sent is not None
                        and message.get("data") == ping_sent[0]
                    ):
                        view.confirmed(ping_sent[1])
                        ping_sent = None
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                if view is not None:
                    view.lost()
                log.warning("push subscription lost: %s", exc)
                turn += 1  # on a cluster: the next node
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if view is not None:
                    view.lost()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), 1.0)


async def sse_events(
    topic: Topic, metrics: QueryMetrics, wanted: list[str] | None, limit: int
) -> AsyncIterator[bytes]:
    """One Server-Sent Events stream of ``topic``: ``data: [<update>, ...]`` per batch taken,
    at most one update per symbol; ``wanted=None`` follows every symbol (the first ``limit``).
    A comment line every 15 s keeps proxies from closing an idle stream."""
    # Registered here, not before: the generator's finally is the only cleanup hook.
    feed = ClientFeed(metrics)
    if wanted is None:
        topic.register_all(feed, limit)
    else:
        topic.register(feed, wanted)
    metrics.stream_clients.inc()
    try:
        yield b": subscribed\n\n"
        while True:
            try:
                batch = await asyncio.wait_for(feed.take(), timeout=15.0)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            yield b"data: " + orjson.dumps(batch) + b"\n\n"
    finally:
        topic.unregister(feed)
        metrics.stream_clients.dec()


# --- the WebSocket endpoint ------------------------------------------------------------------

# Frame type of each topic's updates.
FRAME_TYPES = {"price": "prices", "book": "books"}


def _ack(topic: str, feed: ClientFeed) -> dict[str, Any]:
    """``{"type": "subscribed", "symbols": [...]}``; book subscriptions also name the channel
    (price acknowledgements keep the original shape, without it)."""
    doc: dict[str, Any] = {"type": "subscribed", "symbols": sorted(feed.symbols)}
    if topic != "price":
        doc["channel"] = topic
    return doc


async def serve_websocket(
    hub: PushHub,
    metrics: QueryMetrics,
    websocket: WebSocket,
    *,
    max_symbols: int,
    send_timeout_s: float,
) -> None:
    """``/ws/prices``: subscribe, then receive ``{"type": "prices"|"books", "updates": [...]}``.

    Protocol (JSON text frames):

    - connect with ``?symbols=BTCUSDT,ETHUSDT`` (prices) and/or ``?books=BTCUSDT`` (top of
      book), and/or send ``{"op": "subscribe"|"unsubscribe", "symbols": [...]}`` at any time,
      with ``"channel": "book"`` for top of book (``"price"``, the default, for prices);
    - every (un)subscription is acknowledged with ``{"type": "subscribed", "symbols": [...]}``
      (the full current set of that channel; ``"channel": "book"`` added for books), a bad one
      with ``{"type": "error", "error": "..."}``;
    - updates arrive as ``{"type": "prices", "updates": [<processor update>, ...]}`` or
      ``{"type": "books", "updates": [...]}``, at most one per symbol per frame; a client that
      reads slowly skips to the latest values. A frame that cannot be written within
      ``send_timeout_s`` drops the client (close code 1008).
    """
    await websocket.accept()
    feeds = {name: ClientFeed(metrics) for name in hub.topics}
    for name, feed in feeds.items():
        hub.topics[name].feeds.add(feed)
    metrics.stream_clients.inc()
    send_lock = asyncio.Lock()

    async def send(doc: dict[str, Any]) -> None:
        async with send_lock:
            await websocket.send_text(orjson.dumps(doc).decode())

    try:
        wanted: dict[str, list[str]] = {}
        try:
            for name, param in (("price", "symbols"), ("book", "books")):
                raw = websocket.query_params.get(param)
                if raw:
                    wanted[name] = parse_symbol_list(raw, max_symbols)
        except InvalidSymbol as exc:
            await send({"type": "error", "error": str(exc)})
            await websocket.close(code=1008)
            return
        for name, symbols in wanted.items():
            hub.topics[name].register(feeds[name], symbols)
        await send(_ack("price", feeds["price"]))
        if "book" in wanted:
            await send(_ack("book", feeds["book"]))
        tasks = {
            asyncio.create_task(
                _pump(websocket, FRAME_TYPES[name], feed, metrics, send, send_timeout_s)
            )
            for name, feed in feeds.items()
        }
        tasks.add(asyncio.create_task(_read_commands(websocket, hub, feeds, send, max_symbols)))
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
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
        for name, feed in feeds.items():
            hub.topics[name].unregister(feed)
        metrics.stream_clients.dec()


async def _pump(
    websocket: WebSocket,
    frame_type: str,
    feed: ClientFeed,
    metrics: QueryMetrics,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    send_timeout_s: float,
) -> None:
    while True:
        batch = await feed.take()
        try:
            await asyncio.wait_for(send({"type": frame_type, "updates": batch}), send_timeout_s)
        except TimeoutError:
            metrics.stream_dropped_clients.inc()
            log.warning("dropping a live client that stopped reading")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(code=1008), 1.0)
            return


async def _read_commands(
    websocket: WebSocket,
    hub: PushHub,
    feeds: dict[str, ClientFeed],
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
            name = command.get("channel", "price")
            if not isinstance(name, str) or name not in feeds:
                raise ValueError('channel must be "price" or "book"')
            feed, topic = feeds[name], hub.topics[name]
            raw = command.get("symbols")
            if not isinstance(raw, list):
                raise ValueError("symbols must be a list")
            symbols = parse_symbols(raw, max_symbols)
            if op == "subscribe":
                if len(feed.symbols | set(symbols)) > max_symbols:
                    raise ValueError(f"at most {max_symbols} symbols per connection")
                topic.register(feed, symbols)
            else:
                topic.unregister(feed, symbols)
        except (ValueError, orjson.JSONDecodeError) as exc:  # InvalidSymbol is a ValueError
            await send({"type": "error", "error": str(exc)})
            continue
        await send(_ack(name, feed))
