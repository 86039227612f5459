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
from cryptostream.archive.core import Columns, Flush

if TYPE_CHECKING:
    from cryptostream.archive.objects import ObjectRoot
    from cryptostream.config import Settings

log = logging.getLogger("cryptostream.archive")

# 38 digits is what decimal128 and DuckDB's DECIMAL hold; at scale <= 18 every schema-valid
# integer part (<= 20 digits) fits, so only extra fractional digits can be unrepresentable.
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


def fits(text: str, scale: int) -> bool:
    """Whether a schema-valid decimal string is exact at ``scale`` fractional digits."""
    _, _, frac = text.partition(".")
    return len(frac.rstrip("0")) <= scale


def to_table(cols: Columns, scale: int) -> tuple[pa.Table, list[int]]:
    """The rows as an Arrow table; also the offsets of rows dropped for more fractional digits
    than ``scale`` (Arrow refuses to round, and so do we)."""
    dec = pa.decimal128(PRECISION, scale)
    dropped: list[int] = []
    price_s = pa.array(cols.price, pa.string())
    qty_s = pa.array(cols.quantity, pa.string())
    try:
        price = pc.cast(price_s, dec)
        qty = pc.cast(qty_s, dec)
        keep = None
    except pa.ArrowInvalid:
        mask = [
            fits(p, scale) and fits(q, scale)
            for p, q in zip(cols.price, cols.quantity, strict=True)
        ]
        dropped = [o for o, ok in zip(cols.kafka_offset, mask, strict=True) if not ok]
        keep = pa.array(mask)
        price = pc.cast(pc.filter(price_s, keep), dec)
        qty = pc.cast(pc.filter(qty_s, keep), dec)
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


def parquet_options(row_group_rows: int) -> dict[str, object]:
    """zstd, dictionary-encoded, statistics on (DuckDB prunes row groups by trade_time)."""
    return {
        "compression": "zstd",
        "compression_level": 3,
        "row_group_size": row_group_rows,
        "use_dictionary": ["exchange", "price"],
        "write_statistics": True,
    }


def write_parquet(path: Path, table: pa.Table, row_group_rows: int) -> None:
    pq.write_table(table, str(path), **parquet_options(row_group_rows))
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
    scale: int
    unrepresentable: int

    def resume(self, partition: int) -> int | None: ...

    def commit(self, flush: Flush) -> Sequence[Path | str]: ...


def prepare(store: Store, flush: Flush) -> list[tuple[str, pa.Table]]:
    """The flush's files: (final name under the root, rows), in name order; trades with more
    fractional digits than the scale are counted on the store and logged, and empty files left
    out."""
    out: list[tuple[str, pa.Table]] = []
    for (day, symbol), cols in sorted(flush.groups.items()):
        table, dropped = to_table(cols, store.scale)
        if dropped:
            store.unrepresentable += len(dropped)
            log.error(
                "archive: trades with more fractional digits than CSP_ARCHIVE_SCALE "
                "are not archived",
                extra={
                    "fields": {
                        "partition": flush.partition,
                        "offsets": dropped[:20],
                        "count": len(dropped),
                        "scale": store.scale,
                    }
                },
            )
        if table.num_rows == 0:
            continue
        final = "/".join(
            (
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


def open_store(settings: Settings, root: Path | ObjectRoot | None = None) -> Store:
    """The store for ``settings``' archive (``root``: one already opened)."""
    root = archive_root(settings) if root is None else root
    args = (settings.topic, settings.archive_scale, settings.archive_row_group_rows)
    if isinstance(root, Path):
        return ArchiveStore(root, *args)
    from cryptostream.archive.objects import ObjectStore

    return ObjectStore(root, *args)


class ArchiveStore:
    """The sink's side of an archive in a local folder, for one topic (one instance per sink
    process)."""

    def __init__(self, root: Path, topic: str, scale: int, row_group_rows: int) -> None:
        self.root = root
        self.topic = topic
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
