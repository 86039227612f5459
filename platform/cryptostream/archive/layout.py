"""Where the archive keeps what (pure: names and their parsing, no I/O).

::

    <root>/date=2026-12-01/symbol=BTCUSDT/raw.trades-p003-00000000000000001000-00000000000000001999.parquet
    <root>/_sink/raw.trades/p003/00000000000000001999.json      # the partition's commit marker
    <root>/depth/date=2026-12-01/symbol=BTCUSDT/raw.depth-p003-...-....parquet  # order books
    <root>/_sink/raw.depth/p003/00000000000000000999.json

A data file's name says which Kafka partition and which offset range its rows come from (the
flush's range; the file holds that range's trades of one day and symbol). A compacted file
covers the union of its sources' ranges, so when a crash leaves both a compacted file and a
source behind, the source is recognisably *covered* and never read (:func:`uncovered`): a row
is never served twice. Temporary files start with ``.`` and end in ``.tmp``; no reader globs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SINK_DIR = "_sink"
DEPTH = "depth"  # raw.depth's files: <root>/depth/date=.../symbol=.../raw.depth-pNNN-....parquet
SCHEMA_VERSION = 1
_NAME_RE = re.compile(
    r"\A(?P<topic>.+)-p(?P<p>\d{3,})-(?P<first>\d{20})-(?P<last>\d{20})\.parquet\Z"
)
_DATE_RE = re.compile(r"\Adate=(\d{4}-\d{2}-\d{2})\Z")
_SYMBOL_RE = re.compile(r"\Asymbol=([A-Z0-9]{2,20})\Z")


@dataclass(frozen=True, slots=True, order=True)
class FileRange:
    topic: str
    partition: int
    first: int
    last: int


def data_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}-p{partition:03d}-{first:020d}-{last:020d}.parquet"


def parse_name(name: str) -> FileRange | None:
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return FileRange(m["topic"], int(m["p"]), int(m["first"]), int(m["last"]))


def marker_name(last: int) -> str:
    return f"{last:020d}.json"


def tmp_name(name: str) -> str:
    return f".{name}.tmp"


def date_dir(day: str) -> str:
    return f"date={day}"


def symbol_dir(symbol: str) -> str:
    return f"symbol={symbol}"


def parse_date_dir(name: str) -> str | None:
    m = _DATE_RE.match(name)
    return m[1] if m else None


def parse_symbol_dir(name: str) -> str | None:
    m = _SYMBOL_RE.match(name)
    return m[1] if m else None


def uncovered(names: Iterable[str]) -> list[str]:
    """The data files of one folder that no other file covers (same topic and partition, an
    offset range that contains theirs); names that are not data files are left out."""
    ranges = sorted(
        ((r, n) for n in names if (r := parse_name(n)) is not None),
        key=lambda rn: (rn[0].topic, rn[0].partition, rn[0].first, -rn[0].last),
    )
    out: list[str] = []
    reach: dict[tuple[str, int], int] = {}
    for r, name in ranges:
        key = (r.topic, r.partition)
        # sorted by first offset, widest first: a range ending within the reach so far is covered
        if key in reach and r.last <= reach[key]:
            continue
        reach[key] = max(reach.get(key, -1), r.last)
        out.append(name)
    return sorted(out)


def committed(names: Iterable[str], marks: dict[tuple[str, int], int]) -> list[str]:
    """The data files among ``names`` whose offset range ends at or before their partition's
    newest commit marker (``marks``: (topic, partition) -> its last offset); on an object store
    only those are read (archive/objects.py)."""
    out = []
    for name in names:
        r = parse_name(name)
        if r is not None and r.last <= marks.get((r.topic, r.partition), -1):
            out.append(name)
    return out


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What a sink resuming a partition on an object store does (archive/objects.py)."""

    resume_at: int | None  # the first offset not archived (None: nothing archived yet)
    uncommitted: list[int]  # intents above the newest marker: delete their objects, then them
    finished: list[int]  # intents at or below it: committed flushes, delete the intent only
    old_markers: list[int]  # markers older than the newest: delete


def resume_plan(markers: Iterable[int], intents: Iterable[int]) -> ResumePlan:
    """The plan from a partition's marker and intent offsets (pure)."""
    ms, its = sorted(markers), sorted(intents)
    committed = ms[-1] if ms else -1
    return ResumePlan(
        committed + 1 if ms else None,
        [i for i in its if i > committed],
        [i for i in its if i <= committed],
        ms[:-1],
    )
