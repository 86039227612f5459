"""Which archive files a query may read: the uncovered, intact data files of a range.

A file is checked once (its Parquet footer and schema, cached by path, size and mtime) before
any query reads it: a partial write or a truncated upload has no valid footer and is reported
with its path and skipped, never served. Corruption the footer cannot show (a damaged page) is
caught when DuckDB reads the file: :meth:`ArchiveFiles.condemn` then marks it bad.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cryptostream.archive import layout
from cryptostream.archive.core import DAY_MS

log = logging.getLogger("cryptostream.history")

REQUIRED = {"trade_id", "price", "quantity", "trade_time", "buyer_is_maker"}


@dataclass
class Listing:
    files: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def days_between(from_ms: int, to_ms: int) -> set[str] | None:
    """The UTC days a [from, to) range touches (None: too many to list, read every folder)."""
    if to_ms <= from_ms:
        return set()
    first = from_ms // DAY_MS
    last = (to_ms - 1) // DAY_MS
    if last - first > 20_000:
        return None
    epoch = dt.date(1970, 1, 1)
    return {(epoch + dt.timedelta(days=d)).isoformat() for d in range(first, last + 1)}


class ArchiveFiles:
    """Lists and checks the archive's files; thread-safe (the API runs queries in threads)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._checked: dict[str, tuple[int, int, str | None]] = {}  # path -> (size, mtime, err)
        self._lock = threading.Lock()

    def list(
        self, symbol: str | None = None, from_ms: int | None = None, to_ms: int | None = None
    ) -> Listing:
        days = None if from_ms is None or to_ms is None else days_between(from_ms, to_ms)
        listing = Listing()
        try:
            date_dirs = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return listing
        for date_entry in date_dirs:
            day = layout.parse_date_dir(date_entry.name)
            if day is None or not date_entry.is_dir() or (days is not None and day not in days):
                continue
            for sym_entry in sorted(os.scandir(date_entry.path), key=lambda e: e.name):
                sym = layout.parse_symbol_dir(sym_entry.name)
                if sym is None or not sym_entry.is_dir() or (symbol is not None and sym != symbol):
                    continue
                names = os.listdir(sym_entry.path)
                for name in layout.uncovered(names):
                    path = os.path.join(sym_entry.path, name)
                    reason = self.check(path)
                    if reason is None:
                        listing.files.append(path)
                    else:
                        listing.bad.append((path, reason))
        return listing

    def check(self, path: str) -> str | None:
        """None if the file is a readable archive file, else why not (cached per version)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "file vanished"
        with self._lock:
            known = self._checked.get(path)
        if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[2]
        reason: str | None = None
        try:
            meta = pq.read_schema(path)
            missing = REQUIRED - set(meta.names)
            if missing:
                reason = f"not an archive file: no column(s) {sorted(missing)}"
            elif not pa.types.is_decimal(meta.field("price").type):
                reason = "not an archive file: price is not a decimal"
        except (pa.ArrowException, OSError) as exc:
            reason = f"unreadable Parquet: {exc}"
        if reason is not None:
            log.error(
                "archive file skipped", extra={"fields": {"file.path": path, "reason": reason}}
            )
        with self._lock:
            self._checked[path] = (st.st_size, st.st_mtime_ns, reason)
        return reason

    def condemn(self, path: str, reason: str) -> None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        log.error("archive file skipped", extra={"fields": {"file.path": path, "reason": reason}})
        with self._lock:
            self._checked[path] = (st.st_size, st.st_mtime_ns, reason)

    def verify(self, path: str) -> str | None:
        """Read the whole file (every page): None if it decodes, else why not."""
        try:
            pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            return f"corrupt Parquet: {exc}"
        return None
