"""The FastAPI application: every endpoint, its OpenAPI documentation and the error rendering.

Every error leaves as ``{"error": "..."}`` with a 4xx/5xx status: malformed input is 400
(FastAPI's own validation errors included, never 422 or 500), a Redis that does not answer is 503.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from cryptostream.config import Settings
from cryptostream.core.symbols import InvalidSymbol, normalize_symbol
from cryptostream.query.metrics import QueryMetrics
from cryptostream.query.responses import (
    PRICE_NOT_AVAILABLE,
    REDIS_UNAVAILABLE,
    JSONBytes,
    error_body,
    error_response,
    price_body,
)
from cryptostream.query.store import RedisStore, StoreUnavailable

log = logging.getLogger("cryptostream.query")

SYMBOL_DOC = "Trading pair, 2-20 ASCII letters or digits; lower case is accepted and upper-cased."


class QueryState:
    """What the routes share within one worker process: settings, Redis, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = QueryMetrics()
        self._store: RedisStore | None = None

    @property
    def store(self) -> RedisStore:
        if self._store is None:  # only before the lifespan started (e.g. a misconfigured test)
            self._store = RedisStore(self.settings.redis_url)
        return self._store

    async def start(self) -> None:
        self._store = RedisStore(self.settings.redis_url)

    async def stop(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def price_response(self, raw: str) -> tuple[int, bytes]:
        """Status and body of ``GET /price/{raw}``: used by the fast path and the FastAPI route."""
        try:
            symbol = normalize_symbol(raw)
        except InvalidSymbol as exc:
            return 400, error_body(str(exc))
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


def _error_doc(description: str, example: str) -> dict[str, Any]:
    return {
        "model": ErrorOut,
        "description": description,
        "content": {"application/json": {"example": {"error": example}}},
    }


BAD_INPUT = _error_doc(
    "Malformed input", "invalid symbol 'BTC-USDT': expected 2-20 ASCII letters or digits"
)
UNAVAILABLE = _error_doc("Redis is not answering; retry later", "redis unavailable")

SymbolPath = Annotated[str, Path(description=SYMBOL_DOC, examples=["BTCUSDT"])]


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def build_api(state: QueryState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="Crypto Streaming Platform query API",
        version="1.0",
        description=(
            "Stateless reads over the processor's Redis views, and live price push. "
            'Errors are always JSON `{"error": ...}`.'
        ),
        lifespan=lifespan,
        default_response_class=JSONBytes,
    )

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

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, minus the 422 it documents by default: validation errors are 400."""
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
                    if responses.pop("422", None) is not None and "400" not in responses:
                        responses["400"] = {
                            "description": "Malformed input",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ErrorOut"},
                                    "example": {"error": "invalid request: query.limit: ..."},
                                }
                            },
                        }
            components = schema.get("components", {}).get("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
