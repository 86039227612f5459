"""The ASGI application: a lean hot path for ``GET /price/{symbol}`` in front of FastAPI.

Why two layers: FastAPI's per-request machinery (dependency solving, validation, response
model serialization) costs about half the throughput of a bare route, and ``/price`` is the
endpoint users hammer. So :class:`QueryApp` answers ``GET /price/{symbol}`` itself (validate,
one ``HGET``, orjson) -- and ``GET /health``, a constant -- and hands every other request and the
lifespan to FastAPI, which still documents both in the OpenAPI schema with routes of identical
behaviour (tests check both give the same answers). Both layers render bodies through
:mod:`cryptostream.query.responses`.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from cryptostream.config import Settings, load_settings
from cryptostream.query.api import build_api
from cryptostream.query.responses import JSON_CONTENT_TYPE
from cryptostream.query.state import QueryState

PRICE_PREFIX = "/price/"
_PREFIX_LEN = len(PRICE_PREFIX)
HEALTH_PATH = "/health"
HEALTH_BODY = b'{"status":"ok"}'


class QueryApp:
    """ASGI entry point: the ``/price`` fast path, then FastAPI for everything else."""

    def __init__(self, settings: Settings) -> None:
        self.state = QueryState(settings)
        self.api = build_api(self.state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if (
                path.startswith(PRICE_PREFIX)
                and scope["method"] == "GET"
                and "/" not in path[_PREFIX_LEN:]
            ):
                await self._price(path[_PREFIX_LEN:], send)
                return
            if path == HEALTH_PATH and scope["method"] == "GET":
                await self._health(send)
                return
            await self._observed(scope, receive, send)
            return
        await self.api(scope, receive, send)

    async def _price(self, raw: str, send: Send) -> None:
        started = time.perf_counter()
        status, body = await self.state.price_response(raw)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", JSON_CONTENT_TYPE),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.state.metrics.price_served(status, time.perf_counter() - started)

    async def _health(self, send: Send) -> None:
        """``GET /health`` on the same fast path, a constant without Redis: liveness probes are
        cheap, and the benchmark measures this server stack's ceiling with it."""
        started = time.perf_counter()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", JSON_CONTENT_TYPE),
                    (b"content-length", b"%d" % len(HEALTH_BODY)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": HEALTH_BODY})
        self.state.metrics.health_served(time.perf_counter() - started)

    async def _observed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run FastAPI, recording status and latency under the matched route template."""
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.api(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics = self.state.metrics
            metrics.requests.labels(template, str(status)).inc()
            metrics.latency.labels(template).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> QueryApp:
    """The app for ``settings`` (read from ``CSP_*`` when not given)."""
    return QueryApp(settings if settings is not None else load_settings())
