"""Gap records on ``raw.trades.gaps`` (ingest's contract) and what they mean for the checker.

Record: ``{"v": 1, "symbol", "first_id", "last_id", "count", "status": "detected" | "backfilled"
| "unrecoverable", "cause", "detected_at_us", "reported_at_us"}``. A "detected" record is followed
by final records ("backfilled"/"unrecoverable") with its symbol and ``detected_at_us`` covering
the same range exactly, possibly split. Only the unrecoverable trades are excused: the checker
expects everything the exchange sent minus them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from cryptostream.core.idranges import subtract as _subtract


class HasTradeId(Protocol):
    @property
    def symbol(self) -> str: ...

    @property
    def trade_id(self) -> int: ...


T = TypeVar("T", bound=HasTradeId)


@dataclass(frozen=True, slots=True)
class GapRecord:
    symbol: str
    first_id: int
    last_id: int
    status: str
    cause: str = ""
    detected_at_us: int = 0  # with the symbol, ties final records to their detected record(s)

    @property
    def count(self) -> int:
        return self.last_id - self.first_id + 1


@dataclass
class GapSummary:
    unrecoverable: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    detected: int = 0  # trades in "detected" records
    backfilled: int = 0
    unrecoverable_count: int = 0
    unresolved: list[GapRecord] = field(default_factory=list)  # detected, never finalised
    invalid: int = 0  # records that do not follow the contract
    problems: list[str] = field(default_factory=list)  # why, for the first few invalid ones

    def excused(self, symbol: str, trade_id: int) -> bool:
        return any(a <= trade_id <= b for a, b in self.unrecoverable.get(symbol, ()))


STATUSES = ("detected", "backfilled", "unrecoverable")
CAUSES = ("stream", "reconnect", "buffer_overflow", "tail", "restart")


def parse_gap_record(value: bytes) -> GapRecord | None:
    """A record as the contract has it (every field present and typed, ``count`` consistent),
    or None."""
    try:
        doc: Any = orjson.loads(value)
        if not isinstance(doc, dict) or doc.get("v") != 1:
            return None
        first, last, count = doc["first_id"], doc["last_id"], doc["count"]
        detected_at, reported_at = doc["detected_at_us"], doc["reported_at_us"]
        if not all(type(x) is int for x in (first, last, count, detected_at, reported_at)):
            return None
        if last < first or count != last - first + 1 or detected_at <= 0:
            return None
        status, cause, symbol = doc["status"], doc["cause"], doc["symbol"]
        if status not in STATUSES or cause not in CAUSES or not isinstance(symbol, str):
            return None
        return GapRecord(symbol, first, last, status, cause, detected_at)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def summarize(values: Iterable[bytes]) -> GapSummary:
    """Totals, the unrecoverable ranges, and the contract: the final records of a detection
    (same symbol and ``detected_at_us``) cover exactly its detected ranges, each id once.
    Detected ids never covered are unresolved; a final record outside its detection, or
    covering an id twice, or with no detection at all, is invalid."""
    summary = GapSummary()
    detected: dict[tuple[str, int], list[GapRecord]] = {}
    finals: list[GapRecord] = []

    def invalid(why: str) -> None:
        summary.invalid += 1
        if len(summary.problems) < 5:
            summary.problems.append(why)

    for value in values:
        record = parse_gap_record(value)
        if record is None and b'"status":"depth_break"' in value:
            continue  # an order-book resync (ingest/gaps.py) shares the topic: no trade lost
        if record is None:
            invalid(f"not a valid gap record: {value[:120]!r}")
            continue
        if record.status == "detected":
            summary.detected += record.count
            detected.setdefault((record.symbol, record.detected_at_us), []).append(record)
            continue
        finals.append(record)
        if record.status == "backfilled":
            summary.backfilled += record.count
        else:
            summary.unrecoverable_count += record.count
            summary.unrecoverable.setdefault(record.symbol, []).append(
                (record.first_id, record.last_id)
            )
    open_ids = {
        key: [(r.first_id, r.last_id) for r in records] for key, records in detected.items()
    }
    for record in finals:
        key = (record.symbol, record.detected_at_us)
        if key not in open_ids:
            invalid(f"final record without a detected one: {record}")
            continue
        before = open_ids[key]
        after = _subtract(before, (record.first_id, record.last_id))
        removed = sum(b - a + 1 for a, b in before) - sum(b - a + 1 for a, b in after)
        if removed != record.count:
            invalid(f"final record outside its detection or repeated: {record}")
        open_ids[key] = after
    for key, records in detected.items():
        left = open_ids[key]
        summary.unresolved += [
            r for r in records if any(a <= r.last_id and b >= r.first_id for a, b in left)
        ]
    return summary


def expected_trades(sent: Iterable[T], gaps: GapSummary) -> list[T]:
    """What should reach the views: every sent trade except the unrecoverable ones."""
    return [t for t in sent if not gaps.excused(t.symbol, t.trade_id)]


def id_audit(
    expected: Mapping[str, Iterable[int]], seen: Iterable[tuple[str, int]]
) -> tuple[int, int, int]:
    """Compare trade ids seen (e.g. in a topic) with the expected ids per symbol.

    Returns (missing, duplicated, unexpected): ids never seen, extra copies of seen ids, and ids
    that were not expected at all (e.g. inside a range reported as unrecoverable).
    """
    want = {(s, i) for s, ids in expected.items() for i in ids}
    counts: dict[tuple[str, int], int] = {}
    for key in seen:
        counts[key] = counts.get(key, 0) + 1
    missing = sum(1 for key in want if key not in counts)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    unexpected = sum(1 for key in counts if key not in want)
    return missing, duplicated, unexpected
