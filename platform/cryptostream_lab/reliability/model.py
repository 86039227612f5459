"""The outcome of one fault scenario: what was injected, what the checker found, how long
recovery took."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ScenarioResult:
    scenario: str
    variant: str = "fast"
    faults: dict[str, int] = field(default_factory=dict)  # kind -> how many were injected
    records_checked: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0  # view entries that differ from the expected ones
    gaps_reported: int = 0  # trades ingest reported as unrecoverable (excluded from expected)
    recovery_s: list[float] = field(default_factory=list)  # one per fault episode
    lag_zero: bool = False
    unexpected_exits: list[str] = field(default_factory=list)  # "name: rc"
    # upstream of Kafka (scenarios with ingest): raw.trades against the simulator's truth
    topic_missing: int = 0  # sent, not excused by an unrecoverable gap, never in the topic
    topic_duplicated: int = 0  # extra copies in the topic
    topic_unexpected: int = 0  # in the topic, but never sent or reported unrecoverable
    gaps_unresolved: int = 0  # detected gap records without final records covering them
    gaps_invalid: int = 0  # gap records that break the contract (see reliability.gaps)
    unrecovered: bool = False  # the last fault episode never recovered
    settle_timeout: bool = False  # gaps / views did not settle after the load ended
    duration_s: float = 0.0
    notes: str = ""

    def add_fault(self, kind: str, count: int = 1) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + count

    @property
    def ok(self) -> bool:
        return not self.problems()

    def upstream_problems(self) -> list[str]:
        """What the topic audit, the gap records and the recovery timing found (upstream)."""
        problems = []
        if self.topic_missing:
            problems.append(f"{self.topic_missing} missing from raw.trades")
        if self.topic_duplicated:
            problems.append(f"{self.topic_duplicated} duplicated in raw.trades")
        if self.topic_unexpected:
            problems.append(f"{self.topic_unexpected} unexpected in raw.trades")
        if self.gaps_unresolved:
            problems.append(f"{self.gaps_unresolved} gaps detected but never resolved")
        if self.gaps_invalid:
            problems.append(f"{self.gaps_invalid} gap records break the contract")
        if self.unrecovered:
            problems.append("the last fault episode never recovered")
        if self.settle_timeout:
            problems.append("gaps and views did not settle")
        return problems

    def problems(self) -> list[str]:
        problems = []
        if self.records_checked == 0:
            problems.append("no records checked")
        if self.lost:
            problems.append(f"{self.lost} lost")
        if self.duplicated:
            problems.append(f"{self.duplicated} duplicated")
        if self.wrong:
            problems.append(f"{self.wrong} wrong view entries")
        if not self.lag_zero:
            problems.append("consumer lag did not return to zero")
        if self.unexpected_exits:
            problems.append(f"unexpected exits: {', '.join(self.unexpected_exits)}")
        return problems + self.upstream_problems()

    @property
    def recovery_max_s(self) -> float | None:
        return max(self.recovery_s) if self.recovery_s else None

    @property
    def recovery_median_s(self) -> float | None:
        return statistics.median(self.recovery_s) if self.recovery_s else None

    def verdict(self) -> str:
        """One line for assertion messages."""
        problems = self.problems()
        state = "OK" if not problems else "FAILED: " + "; ".join(problems)
        return f"{self.scenario}[{self.variant}] {state} ({self.records_checked} records)"

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ok"] = self.ok
        doc["recovery_max_s"] = self.recovery_max_s
        doc["recovery_median_s"] = self.recovery_median_s
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ScenarioResult:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in names})
