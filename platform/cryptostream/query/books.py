"""Order books over HTTP and live push: ``GET /book/{symbol}``, ``GET /books/top``,
``GET /stream/books`` (and the ``book`` channel of the WebSocket, in :mod:`.push`).

The processor keeps exact L2 books in the layout of :mod:`cryptostream.core.keys`: the
``book:{SYMBOL}`` state hash and one sorted set per side whose lexicographic order is price
order. A book is served only when its hash says ``status=synced``: an ``unsynced`` book (a gap
in the update-id chain, waiting for a snapshot) answers 503 ``{"error": "book resyncing",
"reason": ...}``, never its stale or half-known levels. ``GET /book`` reads the hash and both
sides in one MULTI/EXEC; the processor applies every book change in one atomic step, so the
answer is always one state of the book (``lastUpdateId`` and its levels belong together).

The ``updates:book`` channel (written by the processor, read here) carries, per applied batch,
a JSON array with one element per symbol whose book changed: the symbol and the book hash's
``BOOK_FIELDS`` (``core/keys.py``)::

    [{"symbol": "BTCUSDT", "last_update_id": 4123456789, "status": "synced", "reason": null,
      "best_bid": "66398.84", "best_bid_qty": "1.20000000", "best_ask": "66398.85",
      "best_ask_qty": "0.50000000", "event_time": 1718000000001,
      "ingest_time_us": 1718000000004210, "update_time": 1718000000012}, ...]

Prices and quantities are decimal strings exactly as the exchange wrote them (``null`` for an
empty side); ``last_update_id`` is the book's last applied update id, ``event_time`` the
exchange event time of that update (ms), ``ingest_time_us`` when ingest received it and
``update_time`` when the batch became visible in Redis (ms). ``status`` is ``synced``, or
``unsynced`` (with ``reason``) when the book broke and waits for a snapshot: clients must then
treat its top as unknown. The query service forwards elements unchanged, coalesced per symbol
for clients that read slowly (:mod:`.push`).
"""

# No ``from __future__ import annotations``: FastAPI resolves these routes' annotations (see api.py).

import logging
import time
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Query
from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from cryptostream.core.keys import parse_level_member
from cryptostream.core.symbols import normalize_symbol
from cryptostream.query import inputs
from cryptostream.query.push import sse_events
from cryptostream.query.responses import JSONBytes, error_body

log = logging.getLogger("cryptostream.query")

BOOK_NOT_AVAILABLE = orjson.dumps({"error": "book not available"})
SYNCED = b"synced"
# What GET /books/top reads of each ``book:{SYMBOL}`` hash, in this order.
TOP_FIELDS = (
    "status",
    "reason",
    "best_bid",
    "best_bid_qty",
    "best_ask",
    "best_ask_qty",
    "last_update_id",
    "event_time",
    "update_time",
)

BOOK_UPDATE_EXAMPLE = {
    "symbol": "BTCUSDT",
    "last_update_id": 4123456789,
    "status": "synced",
    "reason": None,
    "best_bid": "66398.84",
    "best_bid_qty": "1.20000000",
    "best_ask": "66398.85",
    "best_ask_qty": "0.50000000",
    "event_time": 1718000000001,
    "ingest_time_us": 1718000000004210,
    "update_time": 1718000000012,
}

# For the OpenAPI description (api.py adds it after the price push protocol).
BOOK_PUSH_DOC = """\
## Live top of book: `/stream/books` and the WebSocket's `book` channel

The processor publishes, per applied batch, the state of every book that changed. Elements
look like `{"symbol": "BTCUSDT", "last_update_id": 4123456789, "status": "synced", "reason":
null, "best_bid": "66398.84", "best_bid_qty": "1.20000000", "best_ask": "66398.85",
"best_ask_qty": "0.50000000", "event_time": 1718000000001, "ingest_time_us": 1718000000004210,
"update_time": 1718000000012}` (decimal strings, null for an empty side; `"status":
"unsynced"`, with a `reason`, says the book is resyncing and its top is unknown).

* Server-Sent Events: `curl -N 'http://127.0.0.1:3000/stream/books?symbols=BTCUSDT,ETHUSDT'`
  (without `symbols`, every book), each `data:` line a JSON array of such elements;
* WebSocket `/ws/prices`: connect with `?books=BTCUSDT` or send
  `{"op": "subscribe", "channel": "book", "symbols": ["BTCUSDT"]}` (and `"unsubscribe"`),
  acknowledged with `{"type": "subscribed", "channel": "book", "symbols": [...]}`; updates
  arrive as `{"type": "books", "updates": [...]}`, at most one per symbol per frame, beside the
  `prices` frames of the same connection.

Example (Python, `pip install websockets`):

```python
import asyncio, json, websockets


async def main():
    async with websockets.connect("ws://127.0.0.1:3000/ws/prices") as ws:
        print(await ws.recv())  # {"type":"subscribed","symbols":[]}
        await ws.send(json.dumps({"op": "subscribe", "channel": "book", "symbols": ["BTCUSDT"]}))
        async for frame in ws:
            print(frame)  # {"type":"subscribed","symbols":["BTCUSDT"],"channel":"book"}, books


asyncio.run(main())
```

One book in full, consistent and exact: `GET /book/BTCUSDT?depth=20`.
"""


# --- pure rendering (no I/O) ------------------------------------------------------------------


class MalformedBook(ValueError):
    """What the store holds is not the processor's book layout."""


def _text(value: bytes | None) -> str | None:
    return value.decode() if value else None  # an empty side: no value, or an empty string


def _int(value: bytes | None, name: str, *, required: bool = False) -> int | None:
    if not value:
        if required:
            raise MalformedBook(f"book field {name} missing")
        return None
    try:
        return int(value)
    except ValueError:
        raise MalformedBook(f"book field {name} is not an integer: {value!r:.40}") from None


def levels(members: list[bytes]) -> list[list[str]]:
    """Sorted-set members (already in best-first order) as ``[[price, qty], ...]``."""
    try:
        return [list(parse_level_member(m)) for m in members]
    except ValueError as exc:
        raise MalformedBook(str(exc)) from None


def resyncing_body(reason: bytes | None) -> bytes:
    return orjson.dumps({"error": "book resyncing", "reason": _text(reason)})


def book_answer(
    symbol: str, fields: dict[bytes, bytes], bids: list[bytes], asks: list[bytes], now_ms: int
) -> tuple[int, bytes]:
    """Status and body of ``GET /book/{symbol}`` from what one MULTI read; MalformedBook if the
    stored book is not in the processor's shape."""
    if not fields:
        return 404, BOOK_NOT_AVAILABLE
    if fields.get(b"status") != SYNCED:
        return 503, resyncing_body(fields.get(b"reason"))
    update_time = _int(fields.get(b"update_time"), "update_time")
    doc = {
        "symbol": symbol,
        "lastUpdateId": _int(fields.get(b"last_update_id"), "last_update_id", required=True),
        "bids": levels(bids),
        "asks": levels(asks),
        "event_time": _int(fields.get(b"event_time"), "event_time"),
        "update_time": update_time,
        "ingest_time_us": _int(fields.get(b"ingest_time_us"), "ingest_time_us"),
        "age_ms": None if update_time is None else now_ms - update_time,
    }
    return 200, orjson.dumps(doc)


def tops_answer(symbols: list[str], rows: list[list[bytes | None]], now_ms: int) -> dict[str, Any]:
    """``GET /books/top``: each symbol's best bid and ask (rows in :data:`TOP_FIELDS` order),
    symbols without a book under ``missing``, unsynced ones under ``resyncing`` (with reason)."""
    books: dict[str, Any] = {}
    missing: list[str] = []
    resyncing: dict[str, str | None] = {}
    for symbol, row in zip(symbols, rows, strict=True):
        values = dict(zip(TOP_FIELDS, row, strict=True))
        if all(v is None for v in row):
            missing.append(symbol)
        elif values["status"] != SYNCED:
            resyncing[symbol] = _text(values["reason"])
        else:
            update_time = _int(values["update_time"], "update_time")
            books[symbol] = {
                "best_bid": _text(values["best_bid"]),
                "best_bid_qty": _text(values["best_bid_qty"]),
                "best_ask": _text(values["best_ask"]),
                "best_ask_qty": _text(values["best_ask_qty"]),
                "lastUpdateId": _int(values["last_update_id"], "last_update_id", required=True),
                "event_time": _int(values["event_time"], "event_time"),
                "update_time": update_time,
                "age_ms": None if update_time is None else now_ms - update_time,
            }
    return {"books": books, "missing": missing, "resyncing": resyncing}


# --- documented shapes ------------------------------------------------------------------------


class BookErrorOut(BaseModel):
    error: str = Field(examples=["book resyncing"])
    reason: str | None = Field(None, description="Why the book is resyncing (503 only)")


class BookOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "symbol": "BTCUSDT",
                    "lastUpdateId": 4123456789,
                    "bids": [["66398.84", "1.20000000"], ["66398.10", "0.03000000"]],
                    "asks": [["66398.85", "0.50000000"], ["66400.00", "2.00000000"]],
                    "event_time": 1718000000001,
                    "update_time": 1718000000012,
                    "ingest_time_us": 1718000000004210,
                    "age_ms": 40,
                }
            ]
        }
    }
    symbol: str
    lastUpdateId: int = Field(description="The last update id applied to this book")
    bids: list[list[str]] = Field(description="[price, quantity] pairs, best (highest) first")
    asks: list[list[str]] = Field(description="[price, quantity] pairs, best (lowest) first")
    event_time: int | None = Field(description="Exchange event time of the last update, ms")
    update_time: int | None = Field(description="When the processor made it visible, ms")
    ingest_time_us: int | None = Field(description="When ingest received the last update, us")
    age_ms: int | None = Field(description="Now minus update_time, ms")


class BookTopOut(BaseModel):
    best_bid: str | None = Field(description="Decimal string; null when the side is empty")
    best_bid_qty: str | None
    best_ask: str | None
    best_ask_qty: str | None
    lastUpdateId: int
    event_time: int | None
    update_time: int | None
    age_ms: int | None


class BooksTopOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "books": {
                        "BTCUSDT": {
                            "best_bid": "66398.84",
                            "best_bid_qty": "1.20000000",
                            "best_ask": "66398.85",
                            "best_ask_qty": "0.50000000",
                            "lastUpdateId": 4123456789,
                            "event_time": 1718000000001,
                            "update_time": 1718000000012,
                            "age_ms": 40,
                        }
                    },
                    "missing": ["XYZUSDT"],
                    "resyncing": {"ETHUSDT": "gap in update ids"},
                }
            ]
        }
    }
    books: dict[str, BookTopOut] = Field(description="Symbol -> top of its synced book")
    missing: list[str] = Field(description="Requested symbols without a book (not an error)")
    resyncing: dict[str, str | None] = Field(
        description="Symbols whose book is resyncing -> why (their top is not served)"
    )


def _doc(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": BookErrorOut,
        "description": description,
        "content": {"application/json": {"example": example}},
    }


BAD_INPUT = _doc("Malformed input", {"error": "invalid request: query.depth: ..."})
UNAVAILABLE = _doc("Redis is not answering; retry later", {"error": "redis unavailable"})


# --- routes -----------------------------------------------------------------------------------


class BookRoutes:
    """The order-book routes of the query API (one per worker process)."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def register(self, app: FastAPI) -> None:
        state = self.state
        settings = state.settings
        max_depth = settings.query_max_book_depth
        default_depth = min(20, max_depth)
        max_symbols = settings.query_max_symbols
        max_stream_symbols = settings.query_max_stream_symbols

        @app.get(
            "/book/{symbol}",
            summary="One order book: the best levels of each side",
            description=(
                f"Up to `depth` (at most {max_depth}) levels per side, bids highest first and "
                "asks lowest first, prices and quantities as exact decimal strings, all from "
                "one state of the book (one MULTI read of what the processor applies "
                "atomically). A book that is resyncing after a gap answers 503 with the "
                "reason, never its stale levels."
            ),
            responses={
                200: {"model": BookOut},
                400: BAD_INPUT,
                404: _doc("No book for this symbol", {"error": "book not available"}),
                503: _doc(
                    "The book is resyncing (with the reason), or Redis is not answering",
                    {"error": "book resyncing", "reason": "gap in update ids"},
                ),
            },
        )
        async def get_book(
            symbol: Annotated[
                str,
                Path(
                    description="Trading pair, 2-20 ASCII letters or digits; lower case is "
                    "accepted and upper-cased.",
                    examples=["BTCUSDT"],
                    json_schema_extra={"pattern": inputs.SYMBOL_PATTERN},
                ),
            ],
            depth: Annotated[
                int, Query(ge=1, le=max_depth, description="Levels per side")
            ] = default_depth,
        ) -> Response:
            sym = normalize_symbol(symbol)
            fields, bids, asks = await state.store.book(sym, depth)
            try:
                status, body = book_answer(sym, fields, bids, asks, int(time.time() * 1000))
            except MalformedBook as exc:
                log.error(
                    "malformed stored book", extra={"fields": {"symbol": sym, "error": str(exc)}}
                )
                return JSONBytes(error_body("stored book is malformed"), status_code=500)
            return JSONBytes(body, status_code=status)

        @app.get(
            "/books/top",
            summary="Best bid and ask of many books in one call",
            description=(
                f"Comma-separated symbols (at most {max_symbols}); symbols without a book are "
                "listed under `missing`, those whose book is resyncing under `resyncing` (with "
                "the reason), neither is an error."
            ),
            responses={200: {"model": BooksTopOut}, 400: BAD_INPUT, 503: UNAVAILABLE},
        )
        async def get_books_top(
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
            rows = await state.store.book_tops(wanted, TOP_FIELDS)
            try:
                doc = tops_answer(wanted, rows, int(time.time() * 1000))
            except MalformedBook as exc:
                log.error("malformed stored book", extra={"fields": {"error": str(exc)}})
                return JSONBytes(error_body("stored book is malformed"), status_code=500)
            return JSONBytes(orjson.dumps(doc))

        @app.get(
            "/stream/books",
            summary="Live top of book as Server-Sent Events",
            description=(
                "Each `data:` line is a JSON array of top-of-book updates (the processor's "
                "shape, see the API description). A client that reads slowly receives only "
                "the latest update per symbol. A comment line is sent every 15 s to keep "
                "proxies from closing an idle stream."
            ),
            response_class=StreamingResponse,
            responses={
                200: {
                    "content": {
                        "text/event-stream": {
                            "schema": {"type": "string"},
                            "example": "data: "
                            + orjson.dumps([BOOK_UPDATE_EXAMPLE]).decode()
                            + "\n\n",
                        }
                    }
                },
                400: BAD_INPUT,
            },
        )
        async def stream_books(
            symbols: Annotated[
                str | None,
                Query(
                    max_length=max_stream_symbols * 21,
                    json_schema_extra={"pattern": inputs.symbol_list_pattern(max_stream_symbols)},
                    description=f"Comma-separated symbols (at most {max_stream_symbols}); "
                    f"without it, every book (the first {max_stream_symbols} seen)",
                    examples=["BTCUSDT,ETHUSDT"],
                ),
            ] = None,
        ) -> StreamingResponse:
            wanted = (
                None if symbols is None else inputs.parse_symbol_list(symbols, max_stream_symbols)
            )
            return StreamingResponse(
                sse_events(state.hub.books, state.metrics, wanted, max_stream_symbols),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
