"""Gap records on ``raw.trades.gaps`` (ingest's contract) and what they mean for the checker.

Record: ``{"v": 1, "symbol", "first_id", "last_id", "count", "status": "detected" | "backfilled"
| "unrecoverable", "cause", "detected_at_us", "reported_at_us"}``. A "detected" record is followed
by final records ("backfilled"/"unrecoverable") covering the same range, possibly split. Only
the unrecoverable trades are excused: the checker expects everything the exchange sent minus them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson


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

    def excused(self, symbol: str, trade_id: int) -> bool:
        return any(a <= trade_id <= b for a, b in self.unrecoverable.get(symbol, ()))


def parse_gap_record(value: bytes) -> GapRecord | None:
    try:
        doc: Any = orjson.loads(value)
        if not isinstance(doc, dict) or doc.get("v") != 1:
            return None
        first, last = doc["first_id"], doc["last_id"]
        if not (isinstance(first, int) and isinstance(last, int)) or last < first:
            return None
        status = doc["status"]
        if status not in ("detected", "backfilled", "unrecoverable"):
            return None
        return GapRecord(str(doc["symbol"]), first, last, status, str(doc.get("cause", "")))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def summarize(values: Iterable[bytes]) -> GapSummary:
    summary = GapSummary()
    finals: dict[str, list[tuple[int, int]]] = {}
    detected: list[GapRecord] = []
    for value in values:
        record = parse_gap_record(value)
        if record is None:
            summary.invalid += 1
            continue
        if record.status == "detected":
            summary.detected += record.count
            detected.append(record)
            continue
        finals.setdefault(record.symbol, []).append((record.first_id, record.last_id))
        if record.status == "backfilled":
            summary.backfilled += record.count
        else:
            summary.unrecoverable_count += record.count
            summary.unrecoverable.setdefault(record.symbol, []).append(
                (record.first_id, record.last_id)
            )
    for record in detected:
        covered = sum(
            min(b, record.last_id) - max(a, record.first_id) + 1
            for a, b in finals.get(record.symbol, ())
            if a <= record.last_id and b >= record.first_id
        )
        if covered < record.count:
            summary.unresolved.append(record)
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
