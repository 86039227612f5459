"""The baseline of ``bench_query.py``: a plain FastAPI route doing one async Redis read.

This is what a straightforward FastAPI service looks like (default route, pydantic-free dict
return, redis-py asyncio client), so the benchmark can state the query service's speed as a
ratio to it, measured in the same run on the same machine. Redis URL from ``CSP_REDIS_URL``.
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from cryptostream.core.keys import price_key

app = FastAPI()
client = aioredis.Redis.from_url(os.environ.get("CSP_REDIS_URL", "redis://127.0.0.1:6379/0"))
PARTITIONS = int(os.environ.get("CSP_PARTITIONS", "8"))  # the key layout's


@app.get("/price/{symbol}")
async def price(symbol: str) -> Any:
    value = await client.hget(price_key(symbol.upper(), PARTITIONS), "price")
    if value is None:
        return JSONResponse({"error": "price not available"}, status_code=404)
    return {"symbol": symbol.upper(), "price": float(value)}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
