"""JSON bodies shared by the fast path and the FastAPI routes, so both render identically."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

JSON_CONTENT_TYPE = b"application/json"

PRICE_NOT_AVAILABLE = orjson.dumps({"error": "price not available"})
REDIS_UNAVAILABLE = orjson.dumps({"error": "redis unavailable"})


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def price_body(symbol: str, stored: bytes) -> bytes:
    """``{"symbol": ..., "price": <number>}`` from the stored decimal string.

    The original service answered ``parseFloat(price)``; ``float`` gives the same shortest
    round-trip number (``"66398.85000000"`` -> ``66398.85``). Raises ValueError on a stored value
    that is not a finite decimal.
    """
    price = float(stored)
    if price != price or price in (float("inf"), float("-inf")):
        raise ValueError(f"stored price is not finite: {stored!r}")
    return orjson.dumps({"symbol": symbol, "price": price})


class JSONBytes(JSONResponse):
    """A JSON response rendered with orjson; bytes pass through (already-encoded bodies).

    A JSONResponse subclass so FastAPI documents routes using it as ``application/json``.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)


def error_response(status: int, message: str) -> JSONBytes:
    return JSONBytes(error_body(message), status_code=status)
