"""History routes of the query API: the Parquet archive through embedded DuckDB.

``GET /history/trades/{symbol}?from=&to=`` pages through archived trades;
``GET /history/book/{symbol}?at=`` rebuilds an order book at a time from the archived depth
records (the nearest snapshot before it, then the diffs); ``GET /candles/{symbol}``
with ``from``/``to`` answers ranges older than Redis's day: the minutes before Redis's first
candle of the range come from the archive, the rest from Redis (the archive lags by up to
``CSP_ARCHIVE_FLUSH_S``, Redis does not), then both are rolled up together with exact decimals.
DuckDB runs in a worker thread, never on the event loop. A corrupt archive file is logged with
its path, skipped and named in the answer's ``skipped_files``; a range without data is an empty
list.
"""

# No ``from __future__ import annotations``: FastAPI resolves these routes' annotations (see api.py).

import asyncio
import datetime as dt
import time
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Query
from pydantic import BaseModel, Field
from starlette.responses import Response

from cryptostream.archive.store import archive_root
from cryptostream.core.symbols import normalize_symbol
from cryptostream.history.queries import History
from cryptostream.query import candles as candle_math
from cryptostream.query import inputs
from cryptostream.query.candles import Candle
from cryptostream.query.responses import JSONBytes, error_response

TIME_DOC = (
    "ms since the epoch (as documented by the pattern); ISO-8601 is accepted too "
    "(`2026-12-01`, `2026-12-01T10:00:00Z`; UTC when no offset)"
)
# Documented as digits only: a schema for every valid ISO-8601 text would also admit invalid
# dates, which answer 400.
TIME_SCHEMA = {"pattern": "^[0-9]{1,15}$"}


class RangeError(ValueError):
    """A from/to that is not a time, or a range the answer cannot hold (400)."""


def parse_time(text: str, name: str) -> int:
    """Milliseconds since the epoch from digits or an ISO-8601 date/time (naive = UTC)."""
    text = text.strip()
    if text.isdigit() and len(text) <= 15:
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RangeError(f"{name} must be ms since the epoch or ISO-8601: {text[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def parse_range(from_: str | None, to: str | None, now_ms: int) -> tuple[int, int]:
    start = 0 if from_ is None else parse_time(from_, "from")
    end = now_ms + 1 if to is None else parse_time(to, "to")
    return start, end


class HistoryTradeOut(BaseModel):
    trade_id: int
    price: str = Field(description="Exact decimal string")
    quantity: str
    trade_time: int = Field(description="ms since the epoch")
    event_time: int
    buyer_is_maker: bool


class HistoryPageOut(BaseModel):
    symbol: str
    trades: list[HistoryTradeOut] = Field(description="In trade id order")
    next: str | None = Field(description="The next page's URL, null on the last page")
    skipped_files: list[str] = Field(
        default_factory=list, description="Corrupt archive files left out (logged)"
    )


class HistoryBookOut(BaseModel):
    symbol: str
    at: int = Field(description="The time asked for, ms since the epoch")
    last_update_id: int = Field(description="The book's update id at that time")
    as_of_us: int = Field(description="Ingest receive time of the last record applied")
    bids: list[list[str]] = Field(description="[price, quantity], best (highest) first")
    asks: list[list[str]] = Field(description="[price, quantity], best (lowest) first")
    skipped_files: list[str] = Field(default_factory=list)


NO_BOOK = {
    "description": "No archived book at that time",
    "content": {"application/json": {"example": {"error": "book not available: ..."}}},
}

BAD_INPUT = {
    "description": "Malformed input",
    "content": {"application/json": {"example": {"error": "from must be ms since the epoch"}}},
}


class HistoryRoutes:
    """The archive side of the query API (one per worker process)."""

    def __init__(self, state: Any) -> None:
        settings = state.settings
        self.state = state
        self.history = History(archive_root(settings))  # a folder or an object store
        self.max_rows = settings.history_max_rows
        self.max_candles = settings.history_max_candles
        self.max_depth = settings.query_max_book_depth

    async def ranged_candles(
        self, symbol: str, interval: str, from_: str | None, to: str | None
    ) -> Response:
        """``GET /candles`` with a range: archive before Redis's first candle, Redis after.

        The candles opening in [from, to), each with all its minutes."""
        minutes = candle_math.INTERVAL_MINUTES[interval]
        width = minutes * candle_math.MINUTE_MS
        try:
            start, end = parse_range(from_, to, int(time.time() * 1000))
        except RangeError as exc:
            return error_response(400, str(exc))
        # Buckets opening in [from, to), each whole (as Binance's klines with startTime/endTime)
        start, end = _ceil(start, width), _ceil(end, width)
        requested_end = end
        if end <= start:
            return _candles_answer(symbol, interval, [], minutes, [], None)
        nxt = None
        if (end - start) // width > self.max_candles:  # one page; `next` continues
            end = start + self.max_candles * width
            nxt = f"/candles/{symbol}?interval={interval}&from={end}&to={requested_end}"
        # Redis: every 1m candle of the range it still holds (it trims only the oldest).
        members = await self.state.store.candles_1m_since(
            symbol, start, (end - start) // candle_math.MINUTE_MS + 1
        )
        recent = [c for c in map(candle_math.parse_candle, members) if c.open_time < end]
        archive_end = recent[0].open_time if recent else end
        older: list[Candle] = []
        skipped: list[tuple[str, str]] = []
        if archive_end > start:
            older, skipped = await asyncio.to_thread(
                self.history.candles, symbol, start, archive_end, 1
            )
        rolled = candle_math.aggregate([*older, *recent], minutes)
        return _candles_answer(symbol, interval, rolled, minutes, skipped, nxt)

    def register(self, app: FastAPI) -> None:
        max_rows = self.max_rows
        max_depth = self.max_depth

        @app.get(
            "/history/book/{symbol}",
            summary="An archived order book at a time",
            description=(
                "The book of `symbol` as the archived `raw.depth` records make it at `at` "
                "(ingest receive time): the nearest snapshot at or before it, then every diff "
                "received by then, applied as a consumer of the topic applies them. 404 when the "
                "archive holds no snapshot before `at`, or the update-id chain broke after it."
            ),
            responses={200: {"model": HistoryBookOut}, 400: BAD_INPUT, 404: NO_BOOK},
        )
        async def history_book(
            symbol: Annotated[
                str,
                Path(
                    description="Trading pair, 2-20 ASCII letters or digits",
                    examples=["BTCUSDT"],
                    json_schema_extra={"pattern": inputs.SYMBOL_PATTERN},
                ),
            ],
            at: Annotated[
                str | None,
                Query(description=TIME_DOC + " (default: now)", json_schema_extra=TIME_SCHEMA),
            ] = None,
            depth: Annotated[int, Query(ge=1, le=max_depth, description="Levels per side")] = min(
                100, max_depth
            ),
        ) -> Response:
            sym = normalize_symbol(symbol)
            try:
                at_ms = int(time.time() * 1000) if at is None else parse_time(at, "at")
            except RangeError as exc:
                return error_response(400, str(exc))
            found = await asyncio.to_thread(self.history.book, sym, at_ms)
            if found.book is None:
                return error_response(404, f"book not available: {found.problem}")
            bids, asks = found.book.top(depth)
            return JSONBytes(
                orjson.dumps(
                    {
                        "symbol": sym,
                        "at": at_ms,
                        "last_update_id": found.last_update_id,
                        "as_of_us": found.as_of_us,
                        "bids": [[p, q] for p, q in bids],  # canonical text (History.book)
                        "asks": [[p, q] for p, q in asks],
                        "skipped_files": [p for p, _ in found.skipped],
                    }
                )
            )

        @app.get(
            "/history/trades/{symbol}",
            summary="Archived trades of one symbol, paginated",
            description=(
                "Trades from the Parquet archive with trade time in [from, to), in trade id "
                "order. Follow `next` for the following page. A range without trades is an "
                "empty list."
            ),
            responses={200: {"model": HistoryPageOut}, 400: BAD_INPUT},
        )
        async def history_trades(
            symbol: Annotated[
                str,
                Path(
                    description="Trading pair, 2-20 ASCII letters or digits",
                    examples=["BTCUSDT"],
                    json_schema_extra={"pattern": inputs.SYMBOL_PATTERN},
                ),
            ],
            from_: Annotated[
                str | None, Query(alias="from", description=TIME_DOC, json_schema_extra=TIME_SCHEMA)
            ] = None,
            to: Annotated[
                str | None,
                Query(description=TIME_DOC + " (exclusive)", json_schema_extra=TIME_SCHEMA),
            ] = None,
            limit: Annotated[int, Query(ge=1, le=max_rows, description="Trades per page")] = min(
                1000, max_rows
            ),
            after: Annotated[
                int, Query(ge=-1, description="Continue after this trade id (from `next`)")
            ] = -1,
        ) -> Response:
            sym = normalize_symbol(symbol)
            try:
                start, end = parse_range(from_, to, int(time.time() * 1000))
            except RangeError as exc:
                return error_response(400, str(exc))
            page = await asyncio.to_thread(self.history.trades, sym, start, end, after, limit)
            nxt = None
            if page.next_after is not None:
                nxt = (
                    f"/history/trades/{sym}?from={start}&to={end}&limit={limit}"
                    f"&after={page.next_after}"
                )
            return JSONBytes(
                orjson.dumps(
                    {
                        "symbol": sym,
                        "trades": page.trades,
                        "next": nxt,
                        "skipped_files": [p for p, _ in page.skipped],
                    }
                )
            )


def _ceil(t_ms: int, width: int) -> int:
    return -(-t_ms // width) * width


def _candles_answer(
    symbol: str,
    interval: str,
    candles: list[Candle],
    minutes: int,
    skipped: list[tuple[str, str]],
    nxt: str | None,
) -> Response:
    doc: dict[str, Any] = {
        "symbol": symbol,
        "interval": interval,
        "candles": [candle_math.candle_json(c, minutes) for c in candles],
    }
    if nxt is not None:
        doc["next"] = nxt
    if skipped:
        doc["skipped_files"] = [p for p, _ in skipped]
    return JSONBytes(orjson.dumps(doc))
