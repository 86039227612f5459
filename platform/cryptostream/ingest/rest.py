"""One GET of Binance's REST API with its rules: what backfills, tail checks and depth snapshots
share (the thin I/O part; what to ask for is in ``backfill``, ``tail`` and ``depth``)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from cryptostream.ingest.streams import Backoff


class BackfillError(RuntimeError):
    """A REST request that failed after its retries; the message says why."""


async def rest_get(client: httpx.AsyncClient, url: str, attempts: int = 5) -> Any:
    """GET a Binance REST URL's JSON: transport errors and 5xx retried with backoff; 429 (rate
    limited) and 418 (banned for ignoring 429s) wait as Retry-After says (at most 60 s) before
    the next attempt; BackfillError with the last problem after ``attempts``."""
    backoff = Backoff(0.5, 10.0)
    problem = ""
    for _attempt in range(attempts):
        try:
            reply = await client.get(url)
        except httpx.HTTPError as exc:
            problem = repr(exc)
            await asyncio.sleep(backoff.next_delay())
            continue
        if reply.status_code == 200:
            return reply.json()
        problem = f"HTTP {reply.status_code}: {reply.text[:200]}"
        if reply.status_code in (418, 429):  # rate limited: honour Retry-After
            retry_after = reply.headers.get("Retry-After", "")
            wait = float(retry_after) if retry_after.isdigit() else backoff.next_delay()
            await asyncio.sleep(min(wait, 60.0))
        elif reply.status_code >= 500:
            await asyncio.sleep(backoff.next_delay())
        else:
            break
    raise BackfillError(f"GET {url} failed: {problem}")
