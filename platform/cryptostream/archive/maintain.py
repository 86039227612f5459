"""Compaction of small files and retention by age (``csp archive compact`` / ``retain``).

Compaction merges one folder's files of one Kafka partition into a single file named for the
union of their offset ranges, written atomically (temporary name, fsync, rename), and only then
deletes the sources. A crash in between leaves sources that the merged file *covers*: readers
never read a covered file (archive/layout.py), and the next compaction deletes them. So a row is
never served twice and never lost. A folder holding an unreadable file is not compacted (the
merged range would hide it); the file is reported instead.

On an object store the same holds with a PUT for the write-and-rename (atomic there); only
committed objects are compacted (a range its partition's marker covers, archive/objects.py):
the leftovers of a flush killed before its commit point are left to the sink's resume, which
deletes them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cryptostream.archive import layout
from cryptostream.archive.objects import ObjectRoot
from cryptostream.archive.store import depth_schema, fsync_dir, schema, write_parquet
from cryptostream.history.files import ArchiveFiles

log = logging.getLogger("cryptostream.archive")


@dataclass
class CompactReport:
    merged: int = 0  # source files merged
    written: int = 0  # merged files written
    removed_covered: int = 0  # leftovers of an earlier compaction that crashed
    bad: list[tuple[str, str]] = field(default_factory=list)


def _merge(tables: list[pa.Table]) -> pa.Table:
    """One table of the sources, sorted (trades by trade id, depth records by Kafka offset:
    their order is the book's); sources of several decimal scales are cast to the widest
    (exact: a wider scale only adds zeros)."""
    depth = "kind" in tables[0].column_names
    scales = {_scale(t.schema, depth) for t in tables}
    if len(scales) > 1:
        target = (depth_schema if depth else schema)(max(scales))
        tables = [t.select(target.names).cast(target) for t in tables]
    merged = pa.concat_tables(tables)
    key = "kafka_offset" if depth else "trade_id"
    merged = merged.take(pc.sort_indices(merged, [(key, "ascending")]))
    return merged.replace_schema_metadata(tables[0].schema.metadata)


def _scale(s: pa.Schema, depth: bool) -> int:
    t = s.field("bids").type.value_type.field("price").type if depth else s.field("price").type
    return int(t.scale)


def compact(root: Path | ObjectRoot, min_files: int, row_group_rows: int) -> CompactReport:
    if isinstance(root, ObjectRoot):
        return compact_objects(root, min_files, row_group_rows)
    report = CompactReport()
    checkers = {"": ArchiveFiles(root), layout.DEPTH: ArchiveFiles(root, layout.DEPTH)}
    folders = [
        (dataset, folder)
        for dataset in checkers
        for folder in sorted((root / dataset).glob("date=*/symbol=*"))
    ]
    for dataset, folder in folders:
        checker = checkers[dataset]
        if not folder.is_dir():
            continue
        names = os.listdir(folder)
        live = set(layout.uncovered(names))
        for name in names:  # covered leftovers: their rows are in a merged file already
            if layout.parse_name(name) is not None and name not in live:
                (folder / name).unlink()
                report.removed_covered += 1
        groups: dict[tuple[str, int], list[tuple[layout.FileRange, str]]] = {}
        for name in live:
            r = layout.parse_name(name)
            assert r is not None
            groups.setdefault((r.topic, r.partition), []).append((r, name))
        for (topic, partition), members in sorted(groups.items()):
            if len(members) < min_files:
                continue
            bad = [
                (str(folder / n), why)
                for _, n in members
                if (why := checker.check(str(folder / n)) or checker.verify(str(folder / n)))
            ]
            if bad:
                report.bad += bad
                continue
            members.sort()
            merged = _merge([pq.read_table(folder / n) for _, n in members])
            target = folder / layout.data_name(
                topic, partition, members[0][0].first, max(r.last for r, _ in members)
            )
            tmp = folder / layout.tmp_name(target.name)
            write_parquet(tmp, merged, row_group_rows)
            os.replace(tmp, target)
            fsync_dir(folder)
            for _, n in members:
                if n != target.name:
                    (folder / n).unlink()
            fsync_dir(folder)
            report.merged += len(members)
            report.written += 1
    for path, reason in report.bad:
        log.error(
            "archive file not compacted", extra={"fields": {"file.path": path, "reason": reason}}
        )
    return report


def compact_objects(root: ObjectRoot, min_files: int, row_group_rows: int) -> CompactReport:
    """:func:`compact` on an object store (one listing; committed objects only)."""
    report = CompactReport()
    checkers = {"": ArchiveFiles(root), layout.DEPTH: ArchiveFiles(root, layout.DEPTH)}
    marks = root.committed()
    folders: dict[str, dict[str, tuple[int, int]]] = {}
    for info in root.files():
        parts = root.rel(info.path).split("/")
        if len(parts) == 4 and parts[0] == layout.DEPTH:
            parts = [f"{parts[0]}/{parts[1]}", *parts[2:]]
        if (
            len(parts) == 3
            and layout.parse_date_dir(parts[0].removeprefix(layout.DEPTH + "/")) is not None
            and layout.parse_symbol_dir(parts[1]) is not None
        ):
            stat = (int(info.size or 0), int(info.mtime_ns or 0))
            folders.setdefault(f"{parts[0]}/{parts[1]}", {})[parts[2]] = stat
    for folder, stats in sorted(folders.items()):
        checker = checkers[layout.DEPTH if folder.startswith(layout.DEPTH + "/") else ""]
        names = layout.committed(stats, marks)
        live = set(layout.uncovered(names))
        for name in names:  # covered leftovers: their rows are in a merged object already
            if name not in live:
                root.delete(f"{folder}/{name}")
                report.removed_covered += 1
        groups: dict[tuple[str, int], list[tuple[layout.FileRange, str]]] = {}
        for name in live:
            r = layout.parse_name(name)
            assert r is not None
            groups.setdefault((r.topic, r.partition), []).append((r, name))
        for (topic, partition), members in sorted(groups.items()):
            if len(members) < min_files:
                continue
            urls = {n: root.url(root.key(f"{folder}/{n}")) for _, n in members}
            bad = [
                (urls[n], why)
                for _, n in members
                if (why := checker.check(urls[n], stats[n]) or checker.verify(urls[n]))
            ]
            if bad:
                report.bad += bad
                continue
            members.sort()
            merged = _merge(
                [pq.read_table(root.key(f"{folder}/{n}"), filesystem=root.fs) for _, n in members]
            )
            target = layout.data_name(
                topic, partition, members[0][0].first, max(r.last for r, _ in members)
            )
            root.write_parquet(f"{folder}/{target}", merged, row_group_rows)  # atomic PUT
            for _, n in members:
                if n != target:
                    root.delete(f"{folder}/{n}")
            report.merged += len(members)
            report.written += 1
    for path, reason in report.bad:
        log.error(
            "archive file not compacted", extra={"fields": {"file.path": path, "reason": reason}}
        )
    return report


def retain(root: Path | ObjectRoot, days: int, today: dt.date | None = None) -> list[str]:
    """Delete the ``date=`` folders (of the trades and of ``depth/``) older than ``days`` days
    (0 = keep everything); return them (paths, or ``s3://`` URLs)."""
    if days <= 0:
        return []
    today = today or dt.datetime.now(dt.UTC).date()
    oldest_kept = (today - dt.timedelta(days=days - 1)).isoformat()
    if isinstance(root, ObjectRoot):
        gone = set()
        for info in root.files():
            parts = root.rel(info.path).split("/")
            top = "/".join(parts[:2]) if parts[0] == layout.DEPTH else parts[0]
            day = layout.parse_date_dir(top.removeprefix(layout.DEPTH + "/"))
            if day is not None and day < oldest_kept:
                gone.add(top)
        for top in sorted(gone):
            root.fs.delete_dir(root.key(top))
        return [root.url(root.key(top)) for top in sorted(gone)]
    removed = []
    for base in (root, root / layout.DEPTH):
        gone_here = False
        for folder in sorted(base.glob("date=*")):
            day = layout.parse_date_dir(folder.name)
            if day is not None and day < oldest_kept and folder.is_dir():
                shutil.rmtree(folder)
                removed.append(str(folder))
                gone_here = True
        if gone_here:
            fsync_dir(base)
    return removed
