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
:class:`~decimal.Decimal`.
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

from cryptostream.archive.objects import ObjectRoot
from cryptostream.core.decimals import EXACT, fmt
from cryptostream.core.views import MINUTE_MS, Candle
from cryptostream.history.files import ArchiveFiles, Listing

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
       arg_max(price, trade_id) AS c, sum(quantity) AS v, sum(price * quantity) AS qv,
       count(*) AS n, min(trade_id) AS ft, max(trade_id) AS lt
FROM {source}
WHERE trade_time >= $from AND trade_time < $to
GROUP BY 1 ORDER BY 1
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
    ) -> tuple[str, dict[str, Any]]:
        """What a query reads ``files`` as, and the parameter that takes: a ``read_parquet``
        of the local paths, or the Arrow dataset of the objects registered on ``cur`` (one
        cursor per call: no name clash). ``hive``: with ``date`` and ``symbol``; ``inline``: no
        parameter (a view's definition or a COPY cannot hold one)."""
        if self.files.objects is None:
            if hive or inline:
                return f"read_parquet({_sql_list(files)}, hive_partitioning = {hive})", {}
            return "read_parquet($files, hive_partitioning = false)", {"files": files}
        cur.register("archive_files", self.files.dataset(files, hive=hive))
        return "archive_files", {}

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
            sql = _CANDLES_SQL.format(source=source)
            params |= {"width": width, "from": from_ms, "to": to_ms}
            rows = cur.execute(sql, params).fetchall()
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
        """An ad-hoc query; the view ``trades`` holds every intact trade (with ``date`` and
        ``symbol`` columns from the folder names)."""
        listing = self.files.list()

        def query(files: list[str]) -> SqlResult:
            cur = self._cursor()
            source, _ = self._source(cur, files, hive=True, inline=True)
            cur.execute(f"CREATE OR REPLACE TEMP VIEW trades AS SELECT * FROM {source}")
            cur.execute(statement, list(params))
            columns = [d[0] for d in cur.description or []]
            return SqlResult(columns, cur.fetchall())

        if not listing.files:
            cur = self._cursor()
            cur.execute(
                "CREATE OR REPLACE TEMP VIEW trades AS SELECT * FROM (VALUES "
                "(NULL::BIGINT, NULL::DECIMAL(38,8), NULL::DECIMAL(38,8), NULL::BIGINT, "
                "NULL::BIGINT, NULL::BOOLEAN, NULL::BIGINT, NULL::VARCHAR, NULL::BIGINT, "
                "NULL::DATE, NULL::VARCHAR)) t(trade_id, price, quantity, trade_time, "
                "event_time, buyer_is_maker, ingest_time_us, exchange, kafka_offset, date, "
                "symbol) WHERE false"
            )
            cur.execute(statement, list(params))
            return SqlResult([d[0] for d in cur.description or []], cur.fetchall())
        result = self._run(listing, query, SqlResult([], []))
        result.skipped = listing.bad
        return result


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
