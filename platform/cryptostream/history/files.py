"""Which archive files a query may read: the uncovered, intact data files of a range.

On an object store (archive/objects.py) a data object is also read only if its partition's
newest commit marker covers its range: a listing there may show the objects of a flush that was
killed before its commit point, and those are never read. Paths are local paths, or ``s3://``
URLs on an object store (:meth:`ArchiveFiles.fs_path` gives the filesystem's path).

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cryptostream.archive import layout
from cryptostream.archive.core import DAY_MS
from cryptostream.archive.objects import ObjectRoot

log = logging.getLogger("cryptostream.history")

REQUIRED = {"trade_id", "price", "quantity", "trade_time", "buyer_is_maker"}
DEPTH_REQUIRED = {"kind", "final_id", "bids", "asks", "ingest_time_us", "kafka_offset"}
# the hive columns of the ad-hoc view `trades` (what DuckDB's hive_partitioning infers locally)
HIVE = pa.schema([("date", pa.date32()), ("symbol", pa.string())])
# a range touching more days than this is listed in one pass over the whole object store
MAX_DAY_LISTINGS = 31


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

    def __init__(self, root: Path | ObjectRoot, dataset: str = "") -> None:
        """``dataset``: "" for the trades (at the root), ``layout.DEPTH`` for the depth files."""
        self.root = root
        self.dataset = dataset
        self.depth = dataset == layout.DEPTH
        self.objects = root if isinstance(root, ObjectRoot) else None
        # path -> (size, mtime, why unreadable, the decimals' scale)
        self._checked: dict[str, tuple[int, int, str | None, int]] = {}
        self._lock = threading.Lock()

    def _rel(self, *parts: str) -> str:
        return "/".join((self.dataset, *parts) if self.dataset else parts)

    def fs_path(self, path: str) -> str:
        """A listed path as its filesystem spells it (``bucket/key`` for an ``s3://`` URL)."""
        if self.objects is not None:
            return path.removeprefix(self.objects.scheme + "://")
        return path

    def list(
        self, symbol: str | None = None, from_ms: int | None = None, to_ms: int | None = None
    ) -> Listing:
        days = None if from_ms is None or to_ms is None else days_between(from_ms, to_ms)
        if isinstance(self.root, ObjectRoot):
            return self._list_objects(self.root, symbol, days)
        listing = Listing()
        try:
            date_dirs = sorted(os.scandir(self.root / self.dataset), key=lambda e: e.name)
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

    def _list_objects(self, root: ObjectRoot, symbol: str | None, days: set[str] | None) -> Listing:
        marks = root.committed()  # before the listing: a later commit is simply not seen yet
        if days is not None and len(days) <= MAX_DAY_LISTINGS:
            prefixes = [
                self._rel(
                    layout.date_dir(d),
                    *([] if symbol is None else [layout.symbol_dir(symbol)]),
                )
                for d in sorted(days)
            ]
        else:
            prefixes = [self.dataset]
        skip = 1 if self.dataset else 0
        folders: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
        for prefix in prefixes:
            for info in root.files(prefix):
                parts = root.rel(info.path).split("/")
                if len(parts) != 3 + skip or (skip and parts[0] != self.dataset):
                    continue
                parts = parts[skip:]
                day, sym = layout.parse_date_dir(parts[0]), layout.parse_symbol_dir(parts[1])
                if day is None or sym is None:
                    continue
                if (days is not None and day not in days) or (symbol is not None and sym != symbol):
                    continue
                stat = (int(info.size or 0), int(info.mtime_ns or 0))
                folders.setdefault((parts[0], parts[1]), {})[parts[2]] = stat
        listing = Listing()
        for (day_dir, sym_dir), names in sorted(folders.items()):
            for name in layout.uncovered(layout.committed(names, marks)):
                path = root.url(root.key(self._rel(day_dir, sym_dir, name)))
                reason = self.check(path, names[name])
                if reason is None:
                    listing.files.append(path)
                else:
                    listing.bad.append((path, reason))
        return listing

    def _stat(self, path: str) -> tuple[int, int] | None:
        if self.objects is None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
            return st.st_size, st.st_mtime_ns
        info = self.objects.fs.get_file_info(self.fs_path(path))
        if info.type != pafs.FileType.File:
            return None
        return int(info.size or 0), int(info.mtime_ns or 0)

    def check(self, path: str, stat: tuple[int, int] | None = None) -> str | None:
        """None if the file is a readable archive file, else why not (cached per version;
        ``stat``: its size and mtime, if the listing knows them)."""
        stat = stat or self._stat(path)
        if stat is None:
            return "file vanished"
        with self._lock:
            known = self._checked.get(path)
        if known is not None and known[:2] == stat:
            return known[2]
        reason: str | None = None
        scale = 0
        try:
            fs = None if self.objects is None else self.objects.fs
            meta = pq.read_schema(self.fs_path(path), filesystem=fs)
            missing = (DEPTH_REQUIRED if self.depth else REQUIRED) - set(meta.names)
            if missing:
                reason = f"not an archive file: no column(s) {sorted(missing)}"
            else:
                dec = _decimal_type(meta)
                if dec is None:
                    reason = "not an archive file: prices are not decimals"
                else:
                    scale = dec.scale
        except (pa.ArrowException, OSError) as exc:
            reason = f"unreadable Parquet: {exc}"
        if reason is not None:
            log.error(
                "archive file skipped", extra={"fields": {"file.path": path, "reason": reason}}
            )
        with self._lock:
            self._checked[path] = (*stat, reason, scale)
        return reason

    def unified(self, files: Sequence[str]) -> pa.Schema | None:
        """None if the (checked) files share one decimal scale, else the schema to read them
        all exactly: their decimals at the widest scale among them. DuckDB's ``read_parquet``
        reads every file as the first one's type, so a wider scale would be rounded there."""
        with self._lock:
            scales = {self._checked[f][3] for f in files if f in self._checked}
        if len(scales) <= 1:
            return None
        from cryptostream.archive.store import depth_schema, schema

        return (depth_schema if self.depth else schema)(max(scales))

    def condemn(self, path: str, reason: str) -> None:
        stat = self._stat(path)
        if stat is None:
            return
        log.error("archive file skipped", extra={"fields": {"file.path": path, "reason": reason}})
        with self._lock:
            self._checked[path] = (*stat, reason, 0)

    def verify(self, path: str) -> str | None:
        """Read the whole file (every page): None if it decodes, else why not."""
        try:
            fs = None if self.objects is None else self.objects.fs
            pq.read_table(self.fs_path(path), filesystem=fs)
        except (pa.ArrowException, OSError) as exc:
            return f"corrupt Parquet: {exc}"
        return None

    def arrow_dataset(
        self, files: Sequence[str], *, hive: bool = False, schema: pa.Schema | None = None
    ) -> pads.Dataset:
        """The files as one Arrow dataset (how DuckDB reads an object store here: pyarrow's S3
        client, no httpfs extension to download, and files of several scales: ``schema``, see
        :meth:`unified`); ``hive``: with ``date`` and ``symbol``."""
        fs = None if self.objects is None else self.objects.fs
        paths = [self.fs_path(f) for f in files]
        if not hive:
            return pads.dataset(paths, schema=schema, filesystem=fs, format="parquet")
        base = self.objects.root if self.objects is not None else str(self.root)
        if self.dataset:
            base = f"{base}/{self.dataset}"
        if schema is not None:
            schema = pa.schema([*schema, *HIVE], metadata=schema.metadata)
        return pads.dataset(
            paths,
            schema=schema,
            filesystem=fs,
            format="parquet",
            partitioning=pads.partitioning(HIVE, flavor="hive"),
            partition_base_dir=base,
        )


def _decimal_type(meta: pa.Schema) -> pa.Decimal128Type | None:
    """The type of a trade file's ``price``, or of a depth file's level prices."""
    t = meta.field("price").type if "price" in meta.names else meta.field("bids").type
    if pa.types.is_list(t) and pa.types.is_struct(t.value_type):
        struct = t.value_type
        t = struct.field("price").type if struct.get_field_index("price") >= 0 else None
    return t if t is not None and pa.types.is_decimal128(t) else None
