"""What the query routes share within one worker process, apart from any web framework: the
settings, the Redis store, the live-push hub, the optional price view, the metrics, and the
``GET /price`` answer that both the ASGI fast path (``app.py``) and the FastAPI route
(``api.py``) give."""

from __future__ import annotations

import logging

from cryptostream.config import Settings
from cryptostream.core.symbols import InvalidSymbol, normalize_symbol
from cryptostream.query.metrics import QueryMetrics
from cryptostream.query.push import PushHub
from cryptostream.query.responses import (
    PRICE_NOT_AVAILABLE,
    REDIS_UNAVAILABLE,
    error_body,
    price_body,
)
from cryptostream.query.store import RedisStore, StoreUnavailable
from cryptostream.query.view import PriceView

log = logging.getLogger("cryptostream.query")


class QueryState:
    """What the routes share within one worker process: settings, Redis, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = QueryMetrics()
        self._store: RedisStore | None = None
        self.view = (
            PriceView(settings.query_price_view_max_lag_ms / 1000)
            if settings.query_price_view
            else None
        )
        self.hub = PushHub(
            settings.redis_url,
            self.metrics,
            self.view,
            seeds=settings.redis_seeds if settings.redis_cluster else (),
        )

    @property
    def store(self) -> RedisStore:
        if self._store is None:  # only before the lifespan started (e.g. a misconfigured test)
            self._store = self._new_store()
        return self._store

    def _new_store(self) -> RedisStore:
        settings = self.settings
        return RedisStore(
            settings.redis_url,
            timeout=settings.query_redis_timeout_s,
            partitions=settings.partitions,
            cluster=settings.redis_cluster,
            seeds=settings.redis_seeds,
        )

    async def start(self) -> None:
        self._store = self._new_store()
        self.hub.start()
        await self._check_layout(self._store)

    async def _check_layout(self, store: RedisStore) -> None:
        """Say so at start if Redis holds views of another partition count: every symbol's
        keys would be looked up under the wrong tag (404s). Not fatal: Redis may be down."""
        try:
            stored = await store.layout_partitions()
        except StoreUnavailable:
            return
        if stored is not None and stored != self.settings.partitions:
            log.error(
                "Redis holds views written with another partition count: set CSP_PARTITIONS "
                "to the processors' (or run `csp rebuild` with this one)",
                extra={"fields": {"stored": stored, "CSP_PARTITIONS": self.settings.partitions}},
            )

    async def stop(self) -> None:
        await self.hub.stop()
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def price_response(self, raw: str) -> tuple[int, bytes]:
        """Status and body of ``GET /price/{raw}``: used by the fast path and the FastAPI route."""
        try:
            symbol = normalize_symbol(raw)
        except InvalidSymbol as exc:
            return 400, error_body(str(exc))
        view = self.view
        if view is not None:
            return await self._price_via_view(view, symbol)
        try:
            stored = await self.store.price(symbol)
        except StoreUnavailable:
            self.metrics.redis_errors.inc()
            return 503, REDIS_UNAVAILABLE
        if stored is None:
            return 404, PRICE_NOT_AVAILABLE
        try:
            return 200, price_body(symbol, stored)
        except ValueError:
            log.error("malformed stored price", extra={"fields": {"symbol": symbol}})
            return 500, error_body("stored price is malformed")

    async def _price_via_view(self, view: PriceView, symbol: str) -> tuple[int, bytes]:
        """The view's answer if it is fresh and has the symbol, else Redis (and learn it)."""
        body = view.lookup(symbol)
        if body is not None:
            return 200, body
        token = view.read_token()
        try:
            stored, trade_id = await self.store.price_and_trade_id(symbol)
        except StoreUnavailable:
            self.metrics.redis_errors.inc()
            return 503, REDIS_UNAVAILABLE
        if stored is None:
            return 404, PRICE_NOT_AVAILABLE
        try:
            body = price_body(symbol, stored)
        except ValueError:
            log.error("malformed stored price", extra={"fields": {"symbol": symbol}})
            return 500, error_body("stored price is malformed")
        if trade_id is not None and trade_id.isdigit():
            view.learn(token, symbol, int(trade_id), body)
        return 200, body
