"""Compaction of small files and retention by age (``csp archive compact`` / ``retain``).

Compaction merges one folder's files of one Kafka partition into a single file named for the
union of their offset ranges, written atomically (temporary name, fsync, rename), and only then
deletes the sources. A crash in between leaves sources that the merged file *covers*: readers
never read a covered file (archive/layout.py), and the next compaction deletes them. So a row is
never served twice and never lost. A folder holding an unreadable file is not compacted (the
merged range would hide it); the file is reported instead.
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
from cryptostream.archive.store import fsync_dir, write_parquet
from cryptostream.history.files import ArchiveFiles

log = logging.getLogger("cryptostream.archive")


@dataclass
class CompactReport:
    merged: int = 0  # source files merged
    written: int = 0  # merged files written
    removed_covered: int = 0  # leftovers of an earlier compaction that crashed
    bad: list[tuple[str, str]] = field(default_factory=list)


def compact(root: Path, min_files: int, row_group_rows: int) -> CompactReport:
    report = CompactReport()
    checker = ArchiveFiles(root)
    for folder in sorted(root.glob("date=*/symbol=*")):
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
            tables = [pq.read_table(folder / n) for _, n in members]
            merged = pa.concat_tables(tables)
            merged = merged.take(pc.sort_indices(merged, [("trade_id", "ascending")]))
            target = folder / layout.data_name(
                topic, partition, members[0][0].first, max(r.last for r, _ in members)
            )
            tmp = folder / layout.tmp_name(target.name)
            write_parquet(
                tmp, merged.replace_schema_metadata(tables[0].schema.metadata), row_group_rows
            )
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


def retain(root: Path, days: int, today: dt.date | None = None) -> list[Path]:
    """Delete the ``date=`` folders older than ``days`` days (0 = keep everything)."""
    if days <= 0:
        return []
    today = today or dt.datetime.now(dt.UTC).date()
    oldest_kept = (today - dt.timedelta(days=days - 1)).isoformat()
    removed = []
    for folder in sorted(root.glob("date=*")):
        day = layout.parse_date_dir(folder.name)
        if day is not None and day < oldest_kept and folder.is_dir():
            shutil.rmtree(folder)
            removed.append(folder)
    if removed:
        fsync_dir(root)
    return removed
