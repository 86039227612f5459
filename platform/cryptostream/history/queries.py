"""Questions to the archive, answered by embedded DuckDB over the checked file list.

Every query reads exactly the files :class:`~cryptostream.history.files.ArchiveFiles` lists for
its range (intact, uncovered), so a corrupt or duplicate file is never served. When DuckDB still
fails on a file (a damaged page behind a valid footer), each file is read once in full, the bad
ones are condemned (logged with their path) and the query runs again without them. No data in a
range is an empty answer, never an error.

On an object store the files are read through one Arrow dataset per query (pyarrow's own S3
client, registered with DuckDB as a relation; DuckDB pushes the projection and the
``trade_time`` filter into the scan): DuckDB's httpfs extension would have to be downloaded,
and an fsspec filesystem registered with DuckDB would add s3fs and its aiobotocore stack for
what pyarrow already does. Locally DuckDB reads the files itself (``read_parquet``), as before.

Decimals stay exact: the archive's decimal128 columns sum as DuckDB DECIMALs and arrive here as
:class:`~decimal.Decimal`. Depth records (``depth/``) have their own file list and view;
:meth:`History.book` rebuilds an order book at a time from them.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from cryptostream.archive import layout
from cryptostream.archive.objects import ObjectRoot
from cryptostream.archive.store import depth_schema
from cryptostream.core.decimals import EXACT, fmt
from cryptostream.core.depth import DepthRecord, DiffRecord, SnapshotRecord, TopicBook
from cryptostream.core.orderbook import Book, DepthDiff, DepthSnapshot
from cryptostream.core.views import MINUTE_MS, Candle
from cryptostream.history.files import HIVE, ArchiveFiles, Listing

T = TypeVar("T")


@dataclass
class Page:
    trades: list[dict[str, Any]]
    next_after: int | None  # the trade id to continue after, None when this is the last page
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class SqlResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    skipped: list[tuple[str, str]] = field(default_factory=list)


_CANDLES_SQL = """
SELECT trade_time - trade_time % $width AS t,
       arg_min(price, trade_id) AS o, max(price) AS h, min(price) AS l,
       arg_max(price, trade_id) AS c, sum(quantity) AS v, {qv} AS qv,
       count(*) AS n, min(trade_id) AS ft, max(trade_id) AS lt
FROM {source}
WHERE trade_time >= $from AND trade_time < $to
GROUP BY 1 ORDER BY 1
"""

# The exact quote volume when DuckDB's DECIMAL(38) product overflows (a file at a wide scale:
# two scale-18 factors leave 2 integer digits), summed here with Python's exact decimals.
_QUOTE_SQL = """
SELECT trade_time - trade_time % $width AS t, price, quantity
FROM {source}
WHERE trade_time >= $from AND trade_time < $to
"""

_TRADES_SQL = """
SELECT trade_id, price, quantity, trade_time, event_time, buyer_is_maker
FROM {source}
WHERE trade_time >= $from AND trade_time < $to AND trade_id > $after
ORDER BY trade_id LIMIT $limit
"""


def _canonical(value: Decimal) -> Decimal:
    """Without trailing zeros, as Redis's candles are (the exact context: 38 digits never round)."""
    return value.normalize(EXACT)


class History:
    """One per process; each call may run in its own thread (one DuckDB cursor per call)."""

    def __init__(self, root: Path | ObjectRoot, *, threads: int = 2) -> None:
        self.files = ArchiveFiles(root)
        self.depth_files = ArchiveFiles(root, layout.DEPTH)
        self._db = duckdb.connect(":memory:", config={"threads": threads})
        self._lock = threading.Lock()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._db.cursor()

    def _source(
        self,
        cur: duckdb.DuckDBPyConnection,
        files: list[str],
        *,
        hive: bool = False,
        inline: bool = False,
        depth: bool = False,
    ) -> tuple[str, dict[str, Any]]:
        """What a query reads ``files`` as, and the parameter that takes: a ``read_parquet``
        of the local paths, or the Arrow dataset of the objects registered on ``cur`` (one
        cursor per call: no name clash). ``hive``: with ``date`` and ``symbol``; ``inline``: no
        parameter (a view's definition or a COPY cannot hold one); ``depth``: depth files.

        Files of several decimal scales (archive/store.py) are read as one Arrow dataset at
        the widest, locally too: ``read_parquet`` would cast them all to the first one's."""
        checked = self.depth_files if depth else self.files
        unified = checked.unified(files)
        if checked.objects is None and unified is None:
            if hive or inline:
                return f"read_parquet({_sql_list(files)}, hive_partitioning = {hive})", {}
            return "read_parquet($files, hive_partitioning = false)", {"files": files}
        name = "depth_files" if depth else "archive_files"
        cur.register(name, checked.arrow_dataset(files, hive=hive, schema=unified))
        return name, {}

    def _run(self, listing: Listing, query: Callable[[list[str]], T], empty: T) -> T:
        files = list(listing.files)
        while files:
            try:
                return query(files)
            except duckdb.Error:
                bad = [(f, r) for f in files if (r := self.files.verify(f)) is not None]
                if not bad:
                    raise
                for path, reason in bad:
                    self.files.condemn(path, reason)
                    listing.bad.append((path, reason))
                    files.remove(path)
        return empty

    def candles(
        self, symbol: str, from_ms: int, to_ms: int, minutes: int = 1
    ) -> tuple[list[Candle], list[tuple[str, str]]]:
        """Candles of ``minutes`` width opening in [from, to) (aligned to the epoch)."""
        listing = self.files.list(symbol, from_ms, to_ms)
        width = minutes * MINUTE_MS

        def query(files: list[str]) -> list[Candle]:
            cur = self._cursor()
            source, params = self._source(cur, files)
            params |= {"width": width, "from": from_ms, "to": to_ms}
            try:
                sql = _CANDLES_SQL.format(source=source, qv="sum(price * quantity)")
                rows = cur.execute(sql, params).fetchall()
            except duckdb.OutOfRangeException:
                sql = _CANDLES_SQL.format(source=source, qv="NULL")
                quote: dict[int, Decimal] = {}
                for t, p, q in cur.execute(_QUOTE_SQL.format(source=source), params).fetchall():
                    quote[t] = EXACT.add(quote.get(t, Decimal(0)), EXACT.multiply(p, q))
                rows = [
                    (t, o, h, lo, c, v, quote[t], n, ft, lt)
                    for t, o, h, lo, c, v, _, n, ft, lt in cur.execute(sql, params).fetchall()
                ]
            return [
                Candle(
                    int(t),
                    fmt(o),
                    _canonical(h),
                    _canonical(lo),
                    fmt(c),
                    _canonical(v),
                    _canonical(qv),
                    int(n),
                    int(ft),
                    int(lt),
                )
                for t, o, h, lo, c, v, qv, n, ft, lt in rows
            ]

        none: list[Candle] = []
        out = self._run(listing, query, none)
        return out, listing.bad

    def trades(self, symbol: str, from_ms: int, to_ms: int, after_id: int, limit: int) -> Page:
        """Trades in [from, to) with ids above ``after_id``, in id order, ``limit`` at most."""
        listing = self.files.list(symbol, from_ms, to_ms)

        def query(files: list[str]) -> list[tuple[Any, ...]]:
            cur = self._cursor()
            source, params = self._source(cur, files)
            sql = _TRADES_SQL.format(source=source)
            params |= {"from": from_ms, "to": to_ms, "after": after_id, "limit": limit + 1}
            return cur.execute(sql, params).fetchall()

        no_rows: list[tuple[Any, ...]] = []
        rows = self._run(listing, query, no_rows)
        more = len(rows) > limit
        rows = rows[:limit]
        trades = [
            {
                "trade_id": tid,
                "price": fmt(p),
                "quantity": fmt(q),
                "trade_time": tt,
                "event_time": et,
                "buyer_is_maker": m,
            }
            for tid, p, q, tt, et, m in rows
        ]
        return Page(trades, rows[-1][0] if more and rows else None, listing.bad)

    def sql(self, statement: str, params: Sequence[Any] = ()) -> SqlResult:
        """An ad-hoc query; the view ``trades`` holds every intact trade and ``depth`` every
        intact depth record (both with ``date`` and ``symbol`` columns from the folder names)."""
        trades, depth = self.files.list(), self.depth_files.list()
        while True:
            cur = self._cursor()
            self._view(cur, "trades", trades.files, depth=False)
            self._view(cur, "depth", depth.files, depth=True)
            try:
                cur.execute(statement, list(params))
            except duckdb.Error:
                if not self._condemn(self.files, trades) + self._condemn(self.depth_files, depth):
                    raise
                continue
            columns = [d[0] for d in cur.description or []]
            return SqlResult(columns, cur.fetchall(), trades.bad + depth.bad)

    def _condemn(self, checked: ArchiveFiles, listing: Listing) -> int:
        """Read each listed file in full; drop (and report) those that do not decode."""
        bad = [(f, r) for f in listing.files if (r := checked.verify(f)) is not None]
        for path, reason in bad:
            checked.condemn(path, reason)
            listing.bad.append((path, reason))
            listing.files.remove(path)
        return len(bad)

    def _view(
        self, cur: duckdb.DuckDBPyConnection, name: str, files: list[str], *, depth: bool
    ) -> None:
        if files:
            source, _ = self._source(cur, files, hive=True, inline=True, depth=depth)
        elif depth:  # no file yet: an empty view of the right columns
            empty = depth_schema(8)
            cur.register("no_depth", pa.schema([*empty, *HIVE]).empty_table())
            source = "no_depth"
        else:
            source = (
                "(SELECT * FROM (VALUES "
                "(NULL::BIGINT, NULL::DECIMAL(38,8), NULL::DECIMAL(38,8), NULL::BIGINT, "
                "NULL::BIGINT, NULL::BOOLEAN, NULL::BIGINT, NULL::VARCHAR, NULL::BIGINT, "
                "NULL::DATE, NULL::VARCHAR)) t(trade_id, price, quantity, trade_time, "
                "event_time, buyer_is_maker, ingest_time_us, exchange, kafka_offset, date, "
                "symbol) WHERE false)"
            )
        cur.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {source}")

    def book(self, symbol: str, at_ms: int) -> BookAt:
        """The order book of ``symbol`` as the archive's depth records make it at ``at_ms``
        (ingest receive time): the nearest snapshot at or before it, then every record after
        it up to the last one received by then, applied in Kafka offset order (a symbol is one
        partition) exactly as a consumer of ``raw.depth`` applies them (core/depth.py)."""
        listing = self.depth_files.list(symbol)

        def query(files: list[str]) -> pa.Table:
            cur = self._cursor()
            source, params = self._source(cur, files, depth=True)
            params |= {"at_us": at_ms * 1000 + 999}
            return cur.sql(_BOOK_SQL.format(source=source), params=params).to_arrow_table()

        rows = self._run(listing, query, depth_schema(8).empty_table())
        result = BookAt(symbol, at_ms, skipped=listing.bad)
        if rows.num_rows == 0 or rows.column("kind")[0].as_py() != "snapshot":
            result.problem = "no snapshot archived at or before that time"
            return result
        topic_book = TopicBook()
        outcome = ""
        for row in rows.to_pylist():
            outcome = topic_book.apply(_record(symbol, row))
            if outcome == "break":
                result.breaks += 1
        result.records = rows.num_rows
        result.as_of_us = int(rows.column("ingest_time_us")[-1].as_py())
        result.last_update_id = topic_book.book.last_update_id
        if not topic_book.synced:
            result.problem = f"the update-id chain broke after the snapshot ({outcome})"
            return result
        result.book = topic_book.book
        return result


@dataclass
class BookAt:
    """:meth:`History.book`'s answer: ``book`` is None when there is none to give
    (``problem`` says why)."""

    symbol: str
    at_ms: int
    book: Book | None = None
    last_update_id: int = -1
    records: int = 0  # the snapshot and the records applied after it
    breaks: int = 0
    as_of_us: int = 0  # ingest time of the last record applied
    problem: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)


_BOOK_SQL = """
WITH cut AS (SELECT max(kafka_offset) AS o FROM {source} WHERE ingest_time_us <= $at_us),
snap AS (
  SELECT max(kafka_offset) AS o FROM {source}, cut
  WHERE kind = 'snapshot' AND kafka_offset <= cut.o
)
SELECT kind, first_id, final_id, event_time, bids, asks, ingest_time_us, exchange
FROM {source}, cut, snap
WHERE kafka_offset >= snap.o AND kafka_offset <= cut.o
ORDER BY kafka_offset
"""


def _levels(side: list[dict[str, Decimal]] | None) -> tuple[tuple[str, str], ...]:
    return tuple((fmt(level["price"]), fmt(level["quantity"])) for level in side or ())


def _record(symbol: str, row: dict[str, Any]) -> DepthRecord:
    """An archived row as the record it was (decimals in their canonical text)."""
    bids, asks = _levels(row["bids"]), _levels(row["asks"])
    exchange = row["exchange"] or "binance"
    if row["kind"] == "snapshot":
        snapshot = DepthSnapshot(row["final_id"], bids, asks)
        return SnapshotRecord(symbol, snapshot, row["ingest_time_us"], exchange)
    diff = DepthDiff(symbol, row["first_id"], row["final_id"], bids, asks, row["event_time"] or 0)
    return DiffRecord(symbol, diff, row["ingest_time_us"], exchange)


_EXPORT_SQL = """
COPY (
  SELECT trade_id, CAST(price AS VARCHAR), CAST(quantity AS VARCHAR),
         CAST(price * quantity AS VARCHAR), trade_time,
         CASE WHEN buyer_is_maker THEN 'True' ELSE 'False' END, 'True'
  FROM {source}
  WHERE trade_time >= {start} AND trade_time < {end}
  ORDER BY trade_id
) TO {out} (FORMAT csv, HEADER false, QUOTE '')
"""


def export_day(
    history: History, symbol: str, day: str, out: Path
) -> tuple[int, list[tuple[str, str]]]:
    """One UTC day of a symbol as Binance's archive CSV (``id,price,qty,quoteQty,time,
    isBuyerMaker,isBestMatch``, no header, times in ms): the format data.binance.vision serves
    and ``csp simulator --replay`` reads. The archive does not keep isBestMatch: always True,
    as on every Binance spot trade. Returns the rows written and the files skipped."""
    start = int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp() * 1000)
    end = start + 86_400_000
    listing = history.files.list(symbol, start, end)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")

    def query(files: list[str]) -> int:
        cur = history._cursor()
        source, _ = history._source(cur, files, inline=True)
        cur.execute(
            _EXPORT_SQL.format(source=source, start=start, end=end, out=_sql_list([str(tmp)])[1:-1])
        )
        row = cur.fetchone()
        return int(row[0]) if row else 0

    rows = history._run(listing, query, 0)
    if not tmp.exists():  # no data that day: an empty file, not an error
        tmp.write_bytes(b"")
    os.replace(tmp, out)
    return rows, listing.bad


def _sql_list(files: list[str]) -> str:
    """A SQL list literal of paths (a view's definition cannot hold parameters)."""
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
