"""The FastAPI application: every endpoint, its OpenAPI documentation and the error rendering.

Every error leaves as ``{"error": "..."}`` with a 4xx/5xx status: malformed input is 400
(FastAPI's own validation errors included, never 422 or 500), a Redis that does not answer is 503.
"""

# No ``from __future__ import annotations`` here: the routes' Query bounds come from the settings
# (closure variables of ``build_api``), and FastAPI can only resolve string annotations globally.

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Path, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, Response, StreamingResponse

from cryptostream.config import Settings
from cryptostream.core.symbols import InvalidSymbol, normalize_symbol
from cryptostream.query import candles as candle_math
from cryptostream.query import inputs
from cryptostream.query.books import BOOK_PUSH_DOC, BookRoutes
from cryptostream.query.history import TIME_DOC, TIME_SCHEMA, HistoryRoutes
from cryptostream.query.metrics import QueryMetrics
from cryptostream.query.protocol import REFUSED_STATE_KEY
from cryptostream.query.push import PushHub, serve_websocket, sse_events
from cryptostream.query.responses import (
    PRICE_NOT_AVAILABLE,
    REDIS_UNAVAILABLE,
    JSONBytes,
    error_body,
    error_response,
    price_body,
)
from cryptostream.query.store import RedisStore, StoreUnavailable
from cryptostream.query.view import PriceView

log = logging.getLogger("cryptostream.query")

SYMBOL_DOC = "Trading pair, 2-20 ASCII letters or digits; lower case is accepted and upper-cased."


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
        self.hub = PushHub(settings.redis_url, self.metrics, self.view)

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


# --- documented shapes ------------------------------------------------------------------------


class ErrorOut(BaseModel):
    error: str = Field(examples=["price not available"])


class PriceOut(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"symbol": "BTCUSDT", "price": 66398.85}]}}
    symbol: str
    price: float


class HealthOut(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"status": "ok"}]}}
    status: str


class PricesOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {"prices": {"BTCUSDT": 66398.85, "ETHUSDT": 3120.5}, "missing": ["XYZUSDT"]}
            ]
        }
    }
    prices: dict[str, float] = Field(description="Symbol -> latest price, for those that have one")
    missing: list[str] = Field(description="Requested symbols without a price (not an error)")


class TradeOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "symbol": "BTCUSDT",
                    "price": "66398.85000000",
                    "quantity": "0.01200000",
                    "trade_id": 3141592,
                    "trade_time": 1718000000000,
                    "event_time": 1718000000001,
                    "update_time": 1718000000012,
                    "ingest_time_us": 1718000000004210,
                    "age_ms": 850,
                }
            ]
        }
    }
    symbol: str
    price: str = Field(description="Decimal string, exactly as traded")
    quantity: str = Field(description="Decimal string, base asset")
    trade_id: int
    trade_time: int = Field(description="Exchange trade time, ms since the epoch")
    event_time: int = Field(description="Exchange event time, ms")
    update_time: int = Field(description="When the processor made it visible in Redis, ms")
    ingest_time_us: int | None = Field(None, description="When ingest received it, us")
    age_ms: int = Field(description="Now minus trade_time, ms (can be <0 under clock skew)")


class CandleOut(BaseModel):
    open_time: int = Field(description="ms since the epoch, aligned to the interval")
    close_time: int = Field(description="open_time + interval - 1 ms")
    open: str
    high: str
    low: str
    close: str
    volume: str = Field(description="Base asset volume (exact decimal)")
    quote_volume: str = Field(description="Quote asset volume (exact decimal)")
    trades: int


class CandlesOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "symbol": "BTCUSDT",
                    "interval": "5m",
                    "candles": [
                        {
                            "open_time": 1718000100000,
                            "close_time": 1718000399999,
                            "open": "66390.00",
                            "high": "66410.50",
                            "low": "66385.10",
                            "close": "66398.85",
                            "volume": "12.34500000",
                            "quote_volume": "819705.11",
                            "trades": 1532,
                        }
                    ],
                }
            ]
        }
    }
    symbol: str
    interval: str
    candles: list[CandleOut] = Field(description="Oldest first")


class StatsOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "symbol": "BTCUSDT",
                    "trades": 1204332,
                    "base_volume": "18234.12000000",
                    "quote_volume": "1210554321.77",
                }
            ]
        }
    }
    symbol: str
    trades: int = Field(description="Trades applied since the views were (re)built")
    base_volume: str
    quote_volume: str


class SymbolsOut(BaseModel):
    model_config = {
        "json_schema_extra": {"examples": [{"symbols": ["BTCUSDT", "ETHUSDT"], "count": 2}]}
    }
    symbols: list[str] = Field(description="Every symbol with a price, sorted")
    count: int


def _error_doc(description: str, example: str) -> dict[str, Any]:
    return {
        "model": ErrorOut,
        "description": description,
        "content": {"application/json": {"example": {"error": example}}},
    }


def _schema_error_doc(description: str, example: str) -> dict[str, Any]:
    """An error response written straight into the OpenAPI document (after FastAPI built it)."""
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorOut"},
                "example": {"error": example},
            }
        },
    }


BAD_INPUT = _error_doc(
    "Malformed input", "invalid symbol 'BTC-USDT': expected 2-20 ASCII letters or digits"
)
UNAVAILABLE = _error_doc("Redis is not answering; retry later", "redis unavailable")

# The pattern is documented, not enforced by FastAPI: normalize_symbol() enforces it, so the
# fast path and this route produce the same 400 body.
SymbolPath = Annotated[
    str,
    Path(
        description=SYMBOL_DOC,
        examples=["BTCUSDT"],
        json_schema_extra={"pattern": inputs.SYMBOL_PATTERN},
    ),
]


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _json(doc: Any, status: int = 200) -> JSONBytes:
    return JSONBytes(orjson.dumps(doc), status_code=status)


def _int_field(fields: dict[bytes, bytes], name: bytes) -> int | None:
    value = fields.get(name)
    return int(value) if value is not None else None


DOCS_ASSETS = "/docs-assets"

# WebSocket routes have no place in OpenAPI's paths, so the protocol is told here.
WS_PROTOCOL_DOC = """\
## Live push over WebSocket: `/ws/prices`

JSON text frames both ways. Connect to `ws://HOST:PORT/ws/prices`, optionally with
`?symbols=BTCUSDT,ETHUSDT`; the server answers `{"type": "subscribed", "symbols": [...]}`.

* send `{"op": "subscribe", "symbols": ["SOLUSDT"]}` or `{"op": "unsubscribe", "symbols": [...]}`
  at any time; each is acknowledged with `{"type": "subscribed", "symbols": [...]}` (the whole
  current set); a bad one gets `{"type": "error", "error": "..."}` and the connection stays open
  (a bad `?symbols=` closes it with code 1008);
* updates arrive as `{"type": "prices", "updates": [{"symbol": "BTCUSDT", "price": "66398.85",
  "quantity": "0.012", "trade_id": 3141592, "trade_time": ..., "event_time": ...,
  "update_time": ...}]}`, at most one per symbol per frame; a client that reads slowly skips to
  the latest value per symbol; one that blocks a frame for `CSP_QUERY_PUSH_SEND_TIMEOUT_S` is
  dropped (code 1008).

Example (Python, `pip install websockets`):

```python
import asyncio, json, websockets


async def main():
    async with websockets.connect("ws://127.0.0.1:3000/ws/prices?symbols=BTCUSDT") as ws:
        print(await ws.recv())  # {"type":"subscribed","symbols":["BTCUSDT"]}
        await ws.send(json.dumps({"op": "subscribe", "symbols": ["ETHUSDT"]}))
        async for frame in ws:
            print(frame)


asyncio.run(main())
```

The same updates as Server-Sent Events: `curl -N 'http://127.0.0.1:3000/stream/prices'` (every
symbol) or `.../stream/prices?symbols=BTCUSDT,ETHUSDT`.
"""


def _offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their JavaScript, CSS and icon served by this process
    from the ``fastapi-offline`` package (MIT; it ships the upstream builds), so the pages work
    on a machine without internet access; FastAPI's defaults load them from a public CDN."""
    assets = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    favicon = f"{DOCS_ASSETS}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=str(app.openapi_url),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=favicon,
            swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=str(app.openapi_url),
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )


def build_api(state: QueryState) -> FastAPI:
    settings = state.settings
    max_symbols = settings.query_max_symbols
    max_stream_symbols = settings.query_max_stream_symbols
    max_candles = settings.query_max_candles
    default_candles = min(100, max_candles)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await state.start()
        try:
            # Lifespan state reaches uvicorn's connection protocol, which counts refusals.
            yield {REFUSED_STATE_KEY: state.metrics.connection_refused}
        finally:
            await state.stop()

    app = FastAPI(
        title="Crypto Streaming Platform query API",
        version="1.0",
        description=(
            "Stateless reads over the processor's Redis views (prices, candles, stats, order "
            "books), and live push of prices and top of book. "
            'Errors are always JSON `{"error": ...}`.\n\n' + WS_PROTOCOL_DOC + "\n" + BOOK_PUSH_DOC
        ),
        lifespan=lifespan,
        default_response_class=JSONBytes,
        docs_url=None,  # served below from packaged assets, not a public CDN
        redoc_url=None,
        # No 307 to the slash-less path: `/price/..%2F` and friends get a JSON 4xx, not a redirect.
        redirect_slashes=False,
    )

    _offline_docs(app)
    history = HistoryRoutes(state)  # issue 21: the Parquet archive (query/history.py)
    history.register(app)
    BookRoutes(state).register(app)  # issue 16: order books (query/books.py)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        return error_response(400, _validation_message(exc))

    @app.exception_handler(InvalidSymbol)
    async def _bad_symbol(request: Request, exc: InvalidSymbol) -> Response:
        return error_response(400, str(exc))

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> Response:
        state.metrics.redis_errors.inc()
        return JSONBytes(REDIS_UNAVAILABLE, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return JSONBytes(
            error_body(message.lower()), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"fields": {"url.path": request.url.path}})
        return error_response(500, "internal error")

    @app.get(
        "/price/{symbol}",
        summary="Latest price of one symbol",
        description="The original service's contract: the price as a JSON number.",
        response_class=JSONBytes,
        responses={
            200: {"model": PriceOut},
            400: BAD_INPUT,
            404: _error_doc("No trade seen for this symbol", "price not available"),
            503: UNAVAILABLE,
        },
    )
    async def get_price(symbol: SymbolPath) -> Response:
        status, body = await state.price_response(symbol)
        return JSONBytes(body, status_code=status)

    @app.get(
        "/health",
        summary="Liveness: the process is serving",
        response_model=HealthOut,
        responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
    )
    async def health() -> HealthOut:
        return HealthOut(status="ok")

    @app.get(
        "/ready",
        summary="Readiness: Redis answers a PING",
        response_model=HealthOut,
        responses={
            200: {"content": {"application/json": {"example": {"status": "ready"}}}},
            503: UNAVAILABLE,
        },
    )
    async def ready() -> HealthOut:
        await state.store.ping()
        return HealthOut(status="ready")

    @app.get(
        "/metrics",
        summary="Prometheus metrics of this worker process",
        response_class=Response,
        responses={
            200: {
                "content": {
                    "text/plain": {
                        "schema": {"type": "string"},
                        "example": 'csp_query_requests_total{route="/price/{symbol}",status="200"} 1.0\n',
                    }
                }
            }
        },
    )
    async def metrics() -> Response:
        return Response(
            state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    NOT_FOUND = _error_doc("Nothing stored for this symbol", "price not available")

    @app.get(
        "/prices",
        summary="Latest prices of many symbols in one call",
        description=(
            f"Comma-separated symbols (at most {max_symbols}); symbols without a "
            "price are listed under `missing`, not treated as an error."
        ),
        responses={200: {"model": PricesOut}, 400: BAD_INPUT, 503: UNAVAILABLE},
    )
    async def get_prices(
        symbols: Annotated[
            str,
            Query(
                max_length=max_symbols * 21,
                description=f"Comma-separated symbols, at most {max_symbols}",
                json_schema_extra={"pattern": inputs.symbol_list_pattern(max_symbols)},
                examples=["BTCUSDT,ETHUSDT"],
            ),
        ],
    ) -> Response:
        wanted = inputs.parse_symbol_list(symbols, max_symbols)
        stored = await state.store.prices(wanted)
        prices: dict[str, float] = {}
        missing: list[str] = []
        for symbol, value in zip(wanted, stored, strict=True):
            if value is None:
                missing.append(symbol)
            else:
                prices[symbol] = float(value)
        return _json({"prices": prices, "missing": missing})

    @app.get(
        "/trades/latest/{symbol}",
        summary="The whole latest-trade record of one symbol, with its age",
        responses={200: {"model": TradeOut}, 400: BAD_INPUT, 404: NOT_FOUND, 503: UNAVAILABLE},
    )
    async def get_latest_trade(symbol: SymbolPath) -> Response:
        sym = normalize_symbol(symbol)
        fields = await state.store.latest_trade(sym)
        if not fields or b"price" not in fields:
            return JSONBytes(PRICE_NOT_AVAILABLE, status_code=404)
        trade_time = _int_field(fields, b"trade_time") or 0
        return _json(
            {
                "symbol": sym,
                "price": fields[b"price"].decode(),
                "quantity": fields.get(b"quantity", b"0").decode(),
                "trade_id": _int_field(fields, b"trade_id") or 0,
                "trade_time": trade_time,
                "event_time": _int_field(fields, b"event_time") or 0,
                "update_time": _int_field(fields, b"update_time") or 0,
                "ingest_time_us": _int_field(fields, b"ingest_time_us"),
                "age_ms": int(time.time() * 1000) - trade_time,
            }
        )

    @app.get(
        "/candles/{symbol}",
        summary="OHLCV candles, newest last",
        description=(
            "1-minute candles as the processor keeps them; 5m, 15m and 1h are rolled up from "
            "them with exact decimal arithmetic, aligned to the epoch. Minutes without trades "
            "have no candle. With `from` and/or `to`, the candles opening in [from, to): "
            "minutes older than Redis's day come from the Parquet archive, a range without "
            "data is an empty list, and at most CSP_HISTORY_MAX_CANDLES candles come back, "
            "with `next` for the rest (`limit` does not apply)."
        ),
        responses={
            200: {"model": CandlesOut},
            400: BAD_INPUT,
            404: _error_doc("No candles for this symbol", "no candles"),
            503: UNAVAILABLE,
        },
    )
    async def get_candles(
        symbol: SymbolPath,
        interval: Annotated[
            Literal["1m", "5m", "15m", "1h"], Query(description="Candle width")
        ] = "1m",
        limit: Annotated[
            int, Query(ge=1, le=max_candles, description="Number of candles")
        ] = default_candles,
        from_: Annotated[
            str | None,
            Query(
                alias="from", description="Range start: " + TIME_DOC, json_schema_extra=TIME_SCHEMA
            ),
        ] = None,
        to: Annotated[
            str | None,
            Query(description="Range end (exclusive): " + TIME_DOC, json_schema_extra=TIME_SCHEMA),
        ] = None,
    ) -> Response:
        sym = normalize_symbol(symbol)
        if from_ is not None or to is not None:  # a range: Redis's day, and the archive before it
            return await history.ranged_candles(sym, interval, from_, to)
        minutes = candle_math.INTERVAL_MINUTES[interval]
        latest = await state.store.latest_candle_time(sym)
        if latest is None:
            return _json({"error": "no candles"}, 404)
        width = minutes * candle_math.MINUTE_MS
        since = candle_math.bucket_start(latest, minutes) - (limit - 1) * width
        members = await state.store.candles_1m_since(sym, since, (limit + 1) * minutes)
        rolled = candle_math.aggregate((candle_math.parse_candle(m) for m in members), minutes)
        return _json(
            {
                "symbol": sym,
                "interval": interval,
                "candles": [candle_math.candle_json(c, minutes) for c in rolled[-limit:]],
            }
        )

    @app.get(
        "/stats/{symbol}",
        summary="Running totals of one symbol",
        responses={
            200: {"model": StatsOut},
            400: BAD_INPUT,
            404: _error_doc("No stats for this symbol", "stats not available"),
            503: UNAVAILABLE,
        },
    )
    async def get_stats(symbol: SymbolPath) -> Response:
        sym = normalize_symbol(symbol)
        fields = await state.store.stats(sym)
        if not fields:
            return _json({"error": "stats not available"}, 404)
        return _json(
            {
                "symbol": sym,
                "trades": _int_field(fields, b"trades") or 0,
                "base_volume": fields.get(b"base_volume", b"0").decode(),
                "quote_volume": fields.get(b"quote_volume", b"0").decode(),
            }
        )

    @app.get(
        "/symbols",
        summary="Every symbol that has a price",
        responses={200: {"model": SymbolsOut}, 503: UNAVAILABLE},
    )
    async def get_symbols() -> Response:
        symbols = [s.decode() for s in await state.store.symbols()]
        return _json({"symbols": symbols, "count": len(symbols)})

    @app.get(
        "/stream/prices",
        summary="Live prices as Server-Sent Events",
        description=(
            "Each `data:` line is a JSON array of updates (the processor's shape: price and "
            "quantity as decimal strings). A client that reads slowly receives only the latest "
            "update per symbol. A comment line is sent every 15 s to keep proxies from closing "
            "an idle stream."
        ),
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "example": 'data: [{"symbol":"BTCUSDT","price":"66398.85000000",'
                        '"quantity":"0.012","trade_id":3141592,"trade_time":1718000000000,'
                        '"event_time":1718000000001,"update_time":1718000000012}]\n\n',
                    }
                }
            },
            400: BAD_INPUT,
        },
    )
    async def stream_prices(
        symbols: Annotated[
            str | None,
            Query(
                max_length=max_stream_symbols * 21,
                json_schema_extra={"pattern": inputs.symbol_list_pattern(max_stream_symbols)},
                description=f"Comma-separated symbols (at most {max_stream_symbols}); without "
                f"it, every symbol (the first {max_stream_symbols} seen)",
                examples=["BTCUSDT,ETHUSDT"],
            ),
        ] = None,
    ) -> StreamingResponse:
        wanted = None if symbols is None else inputs.parse_symbol_list(symbols, max_stream_symbols)

        return StreamingResponse(
            sse_events(state.hub.prices, state.metrics, wanted, max_stream_symbols),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @app.websocket("/ws/prices")
    async def ws_prices(websocket: WebSocket) -> None:
        """Live prices over WebSocket (see :func:`serve_websocket`)."""
        await serve_websocket(
            state.hub,
            state.metrics,
            websocket,
            max_symbols=max_stream_symbols,
            send_timeout_s=settings.query_push_send_timeout_s,
        )

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, minus the 422 it documents by default: validation errors are 400.
        Every operation may answer 431 (the server's head limit, before any route runs)."""
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    for response in responses.values():
                        # Routes returning a raw Response get FastAPI's `"type": "string"`
                        # next to the documented model's $ref; the $ref is the truth.
                        for media in response.get("content", {}).values():
                            body = media.get("schema", {})
                            if "$ref" in body:
                                media["schema"] = {"$ref": body["$ref"]}
                    responses["431"] = _schema_error_doc(
                        "Request line and headers longer than CSP_QUERY_MAX_HEADER_BYTES; "
                        "the connection is closed",
                        "request header fields too large",
                    )
                    if responses.pop("422", None) is not None and "400" not in responses:
                        responses["400"] = _schema_error_doc(
                            "Malformed input", "invalid request: query.limit: ..."
                        )
            components = schema.get("components", {}).get("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
