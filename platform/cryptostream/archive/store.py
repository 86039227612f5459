"""The archive on disk: Parquet files written atomically, one commit marker per Kafka partition.

Two stores share the :class:`Store` interface: :class:`ArchiveStore` (a local folder, below) and
:class:`~cryptostream.archive.objects.ObjectStore` (an S3-compatible object store, which has no
rename: its own protocol, same guarantee). :func:`archive_root` and :func:`open_store` pick one
from the settings (``CSP_ARCHIVE_URL`` set: the object store).

A flush of Kafka partition ``p`` over offsets ``first..last`` (archive/core.py) is committed in
this order, each step durable before the next:

1. every file is written under ``_sink/<topic>/pNNN/staging/`` and fsynced;
2. the marker ``_sink/<topic>/pNNN/<last>.json`` (listing the staged files and where they go) is
   written to a temporary name, fsynced and renamed: **this is the commit point**;
3. the staged files are renamed into ``date=.../symbol=.../`` and those folders fsynced;
4. (the shell then commits ``last + 1`` to Kafka, for lag tooling only) and the previous marker
   is deleted.

On (re)assignment :meth:`ArchiveStore.resume` reads the newest marker, finishes step 3 for it
(roll forward), deletes staged files no marker names (a flush that crashed before its commit
point) and returns ``last + 1``, where consumption resumes. So after a SIGKILL at any moment,
every record is in the archive exactly once: a record is in a file iff its range is committed,
and a committed range is never read again. The archive, not Kafka's committed offset, is the
source of truth for where to resume (as Redis is for the processor).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cryptostream.archive import layout
from cryptostream.archive.core import Columns, DepthColumns, Flush

if TYPE_CHECKING:
    from cryptostream.archive.objects import ObjectRoot
    from cryptostream.config import Settings

log = logging.getLogger("cryptostream.archive")

# 38 digits is what decimal128 and DuckDB's DECIMAL hold. A file's decimals are written at
# CSP_ARCHIVE_SCALE unless one of its values has more fractional digits: then the whole file is
# written at the scale its values need (readers unify the files' scales, history/files.py).
PRECISION = 38


def schema(scale: int) -> pa.Schema:
    dec = pa.decimal128(PRECISION, scale)
    return pa.schema(
        [
            ("trade_id", pa.int64()),
            ("price", dec),
            ("quantity", dec),
            ("trade_time", pa.int64()),  # ms since the epoch, UTC
            ("event_time", pa.int64()),
            ("buyer_is_maker", pa.bool_()),
            ("ingest_time_us", pa.int64()),
            ("exchange", pa.string()),
            ("kafka_offset", pa.int64()),
        ],
        metadata={b"cryptostream.archive.schema": str(layout.SCHEMA_VERSION).encode()},
    )


def levels_type(scale: int) -> pa.DataType:
    dec = pa.decimal128(PRECISION, scale)
    return pa.list_(pa.struct([("price", dec), ("quantity", dec)]))


def depth_schema(scale: int) -> pa.Schema:
    """One row per ``raw.depth`` record; each side a list of (price, quantity) decimal structs
    in the record's order (a diff's quantity 0 removes its level)."""
    return pa.schema(
        [
            ("kind", pa.string()),  # "diff" or "snapshot"
            ("first_id", pa.int64()),  # a diff's U; null for a snapshot
            ("final_id", pa.int64()),  # a diff's u; a snapshot's lastUpdateId
            ("event_time", pa.int64()),  # a diff's E (ms); null for a snapshot
            ("bids", levels_type(scale)),
            ("asks", levels_type(scale)),
            ("ingest_time_us", pa.int64()),  # the archive's clock for both kinds (core.py)
            ("exchange", pa.string()),
            ("kafka_offset", pa.int64()),
        ],
        metadata={b"cryptostream.archive.schema": str(layout.SCHEMA_VERSION).encode()},
    )


def fits(text: str, scale: int) -> bool:
    """Whether a schema-valid decimal string is exact in decimal128(38, ``scale``)."""
    whole, _, frac = text.partition(".")
    return len(frac.rstrip("0")) <= scale and len(whole.lstrip("0")) + scale <= PRECISION


def file_scale(texts: Iterable[list[str]], scale: int) -> int:
    """The scale a file's decimals are written at: ``scale``, or more if a value has more
    fractional digits -- as many as the longest has, while every integer part still fits the
    38 digits (a value needing more than 38 significant digits fits no decimal128)."""
    frac = whole = 0
    for column in texts:
        for text in column:
            w, _, f = text.partition(".")
            frac = max(frac, len(f.rstrip("0")))
            whole = max(whole, len(w.lstrip("0")))
    return max(scale, min(frac, PRECISION - whole))


def _cast(texts: list[str], scale: int) -> pa.Array:
    return pc.cast(pa.array(texts, pa.string()), pa.decimal128(PRECISION, scale))


def to_table(cols: Columns, scale: int) -> tuple[pa.Table, list[int]]:
    """The rows as an Arrow table, exact: at ``scale``, or at the wider scale their values need
    (:func:`file_scale`); also the offsets of rows no decimal128 holds exactly (more than 38
    significant digits: Arrow refuses to round, and so do we)."""
    keep = None
    try:
        price, qty = _cast(cols.price, scale), _cast(cols.quantity, scale)
    except pa.ArrowInvalid:
        scale = file_scale((cols.price, cols.quantity), scale)
        mask = [
            fits(p, scale) and fits(q, scale)
            for p, q in zip(cols.price, cols.quantity, strict=True)
        ]
        if not all(mask):
            keep = pa.array(mask)
        price_s = pa.array(cols.price, pa.string())
        qty_s = pa.array(cols.quantity, pa.string())
        if keep is not None:
            price_s, qty_s = pc.filter(price_s, keep), pc.filter(qty_s, keep)
        dec = pa.decimal128(PRECISION, scale)
        price, qty = pc.cast(price_s, dec), pc.cast(qty_s, dec)
    dropped = (
        []
        if keep is None
        else [o for o, ok in zip(cols.kafka_offset, keep.to_pylist(), strict=True) if not ok]
    )
    arrays: list[pa.Array] = [
        pa.array(cols.trade_id, pa.int64()),
        price,
        qty,
        pa.array(cols.trade_time, pa.int64()),
        pa.array(cols.event_time, pa.int64()),
        pa.array(cols.buyer_is_maker, pa.bool_()),
        pa.array(cols.ingest_time_us, pa.int64()),
        pa.array(cols.exchange, pa.string()),
        pa.array(cols.kafka_offset, pa.int64()),
    ]
    if keep is not None:
        arrays = [a if i in (1, 2) else pc.filter(a, keep) for i, a in enumerate(arrays)]
    return pa.Table.from_arrays(arrays, schema=schema(scale)), dropped


def _levels(counts: list[int], prices: list[str], qtys: list[str], scale: int) -> pa.Array:
    offsets = [0]
    for n in counts:
        offsets.append(offsets[-1] + n)
    values = pa.StructArray.from_arrays(
        [_cast(prices, scale), _cast(qtys, scale)], names=["price", "quantity"]
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, levels_type(scale))


def depth_table(cols: DepthColumns, scale: int) -> tuple[pa.Table, list[int]]:
    """One depth file's rows as an Arrow table, exact as :func:`to_table`'s; the offsets of
    records with a level no decimal128 holds (left out whole: half a record is no record)."""
    texts = (cols.bid_price, cols.bid_qty, cols.ask_price, cols.ask_qty)
    try:
        return _depth_arrays(cols, scale), []
    except pa.ArrowInvalid:
        scale = file_scale(texts, scale)
    dropped: list[int] = []
    keep: list[bool] = []
    b = a = 0
    for nb, na, offset in zip(cols.bid_count, cols.ask_count, cols.kafka_offset, strict=True):
        ok = all(
            fits(t, scale)
            for t in (
                *cols.bid_price[b : b + nb],
                *cols.bid_qty[b : b + nb],
                *cols.ask_price[a : a + na],
                *cols.ask_qty[a : a + na],
            )
        )
        keep.append(ok)
        if not ok:
            dropped.append(offset)
        b, a = b + nb, a + na
    if dropped:
        cols = _select(cols, keep)
    return _depth_arrays(cols, scale), dropped


def _select(cols: DepthColumns, keep: list[bool]) -> DepthColumns:
    out = DepthColumns()
    b = a = 0
    for i, ok in enumerate(keep):
        nb, na = cols.bid_count[i], cols.ask_count[i]
        if ok:
            for name in ("kind", "first_id", "final_id", "event_time", "bid_count", "ask_count"):
                getattr(out, name).append(getattr(cols, name)[i])
            for name in ("ingest_time_us", "exchange", "kafka_offset"):
                getattr(out, name).append(getattr(cols, name)[i])
            out.bid_price += cols.bid_price[b : b + nb]
            out.bid_qty += cols.bid_qty[b : b + nb]
            out.ask_price += cols.ask_price[a : a + na]
            out.ask_qty += cols.ask_qty[a : a + na]
        b, a = b + nb, a + na
    return out


def _depth_arrays(cols: DepthColumns, scale: int) -> pa.Table:
    arrays: list[pa.Array] = [
        pa.array(cols.kind, pa.string()),
        pa.array(cols.first_id, pa.int64()),
        pa.array(cols.final_id, pa.int64()),
        pa.array(cols.event_time, pa.int64()),
        _levels(cols.bid_count, cols.bid_price, cols.bid_qty, scale),
        _levels(cols.ask_count, cols.ask_price, cols.ask_qty, scale),
        pa.array(cols.ingest_time_us, pa.int64()),
        pa.array(cols.exchange, pa.string()),
        pa.array(cols.kafka_offset, pa.int64()),
    ]
    return pa.Table.from_arrays(arrays, schema=depth_schema(scale))


DICTIONARY = ("exchange", "price", "kind")


def parquet_options(row_group_rows: int, table: pa.Table) -> dict[str, object]:
    """zstd, dictionary-encoded, statistics on (DuckDB prunes row groups by trade_time)."""
    return {
        "compression": "zstd",
        "compression_level": 3,
        "row_group_size": row_group_rows,
        "use_dictionary": [c for c in DICTIONARY if c in table.column_names],
        "write_statistics": True,
    }


def write_parquet(path: Path, table: pa.Table, row_group_rows: int) -> None:
    pq.write_table(table, str(path), **parquet_options(row_group_rows, table))
    fsync_file(path)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(layout.tmp_name(path.name))
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Store(Protocol):
    """The sink's side of the archive for one topic: a local folder (:class:`ArchiveStore`) or
    an object store (:class:`~cryptostream.archive.objects.ObjectStore`), each with the commit
    protocol its medium makes exact."""

    topic: str
    dataset: str  # "" (trades: the root) or layout.DEPTH (depth: its own folder)
    scale: int
    unrepresentable: int

    def resume(self, partition: int) -> int | None: ...

    def commit(self, flush: Flush) -> Sequence[Path | str]: ...


def prepare(store: Store, flush: Flush) -> list[tuple[str, pa.Table]]:
    """The flush's files: (final name under the root, rows), in name order. A file is written
    at the store's scale, or wider if its values need it; records no decimal128 can hold (more
    than 38 significant digits) are counted on the store and logged; empty files left out."""
    out: list[tuple[str, pa.Table]] = []
    for (day, symbol), cols in sorted(flush.groups.items()):
        if isinstance(cols, DepthColumns):
            table, dropped = depth_table(cols, store.scale)
        else:
            table, dropped = to_table(cols, store.scale)
        if dropped:
            store.unrepresentable += len(dropped)
            log.error(
                "archive: records with a decimal of more than 38 significant digits "
                "are not archived",
                extra={
                    "fields": {
                        "partition": flush.partition,
                        "offsets": dropped[:20],
                        "count": len(dropped),
                        "topic": store.topic,
                    }
                },
            )
        if table.num_rows == 0:
            continue
        final = "/".join(
            (
                *([store.dataset] if store.dataset else []),
                layout.date_dir(day),
                layout.symbol_dir(symbol),
                layout.data_name(store.topic, flush.partition, flush.first, flush.last),
            )
        )
        out.append((final, table))
    return out


def archive_root(settings: Settings) -> Path | ObjectRoot:
    """Where the archive is: ``CSP_ARCHIVE_URL`` (an object store) if set, else the folder
    ``CSP_ARCHIVE_DIR``."""
    if not settings.archive_url:
        return settings.archive_dir
    from cryptostream.archive.objects import object_root

    return object_root(
        settings.archive_url,
        endpoint=settings.archive_s3_endpoint,
        region=settings.archive_s3_region,
        access_key_id=settings.archive_s3_access_key_id,
        secret_access_key=settings.archive_s3_secret_access_key.get_secret_value(),
    )


def open_store(
    settings: Settings, root: Path | ObjectRoot | None = None, *, depth: bool = False
) -> Store:
    """The store for ``settings``' archive (``root``: one already opened) of ``raw.trades``, or
    with ``depth`` of ``raw.depth`` (its own folder ``depth/``, its own markers)."""
    root = archive_root(settings) if root is None else root
    topic = settings.depth_topic if depth else settings.topic
    args = (topic, settings.archive_scale, settings.archive_row_group_rows)
    dataset = layout.DEPTH if depth else ""
    if isinstance(root, Path):
        return ArchiveStore(root, *args, dataset=dataset)
    from cryptostream.archive.objects import ObjectStore

    return ObjectStore(root, *args, dataset=dataset)


class ArchiveStore:
    """The sink's side of an archive in a local folder, for one topic (one instance per sink
    process)."""

    def __init__(
        self, root: Path, topic: str, scale: int, row_group_rows: int, *, dataset: str = ""
    ) -> None:
        self.root = root
        self.topic = topic
        self.dataset = dataset
        self.scale = scale
        self.row_group_rows = row_group_rows
        self.unrepresentable = 0

    def partition_dir(self, partition: int) -> Path:
        return self.root / layout.SINK_DIR / self.topic / f"p{partition:03d}"

    def _markers(self, partition: int) -> list[Path]:
        folder = self.partition_dir(partition)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix == ".json" and p.stem.isdigit())

    def resume(self, partition: int) -> int | None:
        """Finish the partition's last committed flush, clean up uncommitted ones, and return
        the first offset not yet archived (None: nothing archived, start at the beginning)."""
        folder = self.partition_dir(partition)
        staging = folder / "staging"
        markers = self._markers(partition)
        named: set[str] = set()
        resume_at: int | None = None
        if markers:
            doc = orjson.loads(markers[-1].read_bytes())
            resume_at = int(doc["last"]) + 1
            moved = self._place(staging, doc["files"])
            named = {staged for staged, _ in doc["files"]}
            if moved:
                log.info(
                    "archive: finished a committed flush",
                    extra={"fields": {"partition": partition, "files": moved}},
                )
            for old in markers[:-1]:
                old.unlink(missing_ok=True)
        if staging.is_dir():
            for leftover in staging.iterdir():
                if leftover.name not in named:
                    leftover.unlink()
                    log.warning(
                        "archive: removed an uncommitted file (its records are read again)",
                        extra={"fields": {"file.path": str(leftover)}},
                    )
        return resume_at

    def _place(self, staging: Path, files: Iterable[list[str]]) -> int:
        moved = 0
        folders: set[Path] = set()
        for staged, final in files:
            src = staging / staged
            dst = self.root / final
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                folders.add(dst.parent)
                moved += 1
        for folder in folders:
            fsync_dir(folder)
        if moved:
            fsync_dir(staging)
        return moved

    def commit(self, flush: Flush) -> list[Path]:
        """Write one flush durably (see the module docstring); return the files' paths."""
        folder = self.partition_dir(flush.partition)
        staging = folder / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        files: list[list[str]] = []
        for i, (final, table) in enumerate(prepare(self, flush)):
            staged = f"{flush.last:020d}-{i:05d}.parquet.tmp"
            write_parquet(staging / staged, table, self.row_group_rows)
            files.append([staged, final])
        fsync_dir(staging)
        previous = self._markers(flush.partition)
        marker = {
            "v": layout.SCHEMA_VERSION,
            "topic": self.topic,
            "partition": flush.partition,
            "first": flush.first,
            "last": flush.last,
            "rows": flush.rows,
            "files": files,
        }
        write_atomic(folder / layout.marker_name(flush.last), orjson.dumps(marker))
        self._place(staging, files)
        for old in previous:
            if old.name != layout.marker_name(flush.last):
                old.unlink(missing_ok=True)
        return [self.root / final for _, final in files]
