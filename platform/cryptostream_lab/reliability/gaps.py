"""What ingest's gap records on ``raw.trades.gaps`` mean for the checker.

The record and its codec are ingest's (:mod:`cryptostream.ingest.gaps`); this reads them with its
lenient decode, so a record that breaks the contract is counted and shown, not fatal. A
"detected" record is followed by final records ("backfilled"/"unrecoverable") with its symbol and
``detected_at_us`` covering the same range exactly, possibly split. Only the unrecoverable trades
are excused: the checker expects everything the exchange sent minus them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from cryptostream.core.idranges import subtract as _subtract
from cryptostream.ingest.gaps import (
    DepthBreakRecord,
    GapDecodeError,
    GapRecord,
    decode_gap_lenient,
)


class HasTradeId(Protocol):
    @property
    def symbol(self) -> str: ...

    @property
    def trade_id(self) -> int: ...


T = TypeVar("T", bound=HasTradeId)


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
        record = decode_gap_lenient(value)
        if isinstance(record, DepthBreakRecord):
            continue  # an order-book resync shares the topic: no trade lost
        if isinstance(record, GapDecodeError):
            invalid(f"not a valid gap record ({record}): {value[:120]!r}")
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
