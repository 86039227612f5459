"""Recovery-time measurement (pure: callers pass the clock readings and the observations).

A fault episode starts when the fault is injected. The pipeline has recovered when every record
that existed in Kafka at that moment has been applied to Redis: the last applied offset of every
partition (Redis's bookkeeping, the source of truth) reached the end offset seen at injection.
New records keep arriving meanwhile; they do not move the goal.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def caught_up(applied: Mapping[K, int], ends: Mapping[K, int]) -> bool:
    """Whether every partition's last applied offset reached ``end - 1`` (``ends`` are Kafka's
    high watermarks: the offset the next record will get). Keys may be anything with such a
    monotonic position, e.g. symbol -> last trade id + 1 for faults upstream of Kafka."""
    return all(applied.get(p, -1) >= end - 1 for p, end in ends.items() if end > 0)


def total_lag(applied: Mapping[K, int], ends: Mapping[K, int]) -> int:
    """Records in Kafka not yet applied to Redis, summed over partitions."""
    return sum(max(0, end - 1 - applied.get(p, -1)) for p, end in ends.items() if end > 0)


@dataclass
class RecoveryTimer(Generic[K]):
    """Times fault episodes: ``start(t, ends)`` at injection, ``observe(t, applied)`` while
    polling; ``durations`` collects one figure per episode that recovered."""

    durations: list[float] = field(default_factory=list)
    _started: float | None = None
    _goal: dict[K, int] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        return self._started is not None

    def start(self, now: float, ends: Mapping[K, int]) -> None:
        if self._started is not None:  # a new fault before recovery: the episode goes on
            self._goal = {p: max(e, self._goal.get(p, 0)) for p, e in ends.items()}
            return
        self._started = now
        self._goal = dict(ends)

    def observe(self, now: float, applied: Mapping[K, int]) -> bool:
        """Feed the applied offsets; returns True when this observation ends the episode."""
        if self._started is None or not caught_up(applied, self._goal):
            return False
        self.durations.append(max(0.0, now - self._started))
        self._started = None
        self._goal = {}
        return True
