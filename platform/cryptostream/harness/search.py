"""Sustainable-rate search (sans-I/O), after Theodolite's load-capacity metric.

A rate is *sustained* by a topology when the consumer lag measured over a trial (after warm-up)
does not keep growing: the slope of a least-squares line through (time, total lag) stays below a
small fraction of the input rate. The search doubles the rate from a start value until a trial
fails, then bisects between the highest sustained and the lowest failed rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


@dataclass(frozen=True)
class LagVerdict:
    sustained: bool
    slope: float  # records/s the lag grows by
    threshold: float


def lag_verdict(
    points: Sequence[tuple[float, float]], rate: float, tolerance: float = 0.05
) -> LagVerdict:
    """Is the lag flat enough? ``points`` = (seconds, total lag) after warm-up."""
    threshold = max(tolerance * rate, 50.0)  # the floor keeps tiny rates from failing on noise
    s = slope(points)
    return LagVerdict(s <= threshold, s, threshold)


@dataclass
class RateSearch:
    """Exponential then binary search for the highest sustained rate.

    ``next_rate()`` proposes the next trial's rate (None when done); ``record()`` takes its verdict.
    """

    start: float
    maximum: float
    max_trials: int = 5
    resolution: float = 0.1
    best: float | None = None  # highest sustained rate so far
    failed: float | None = None  # lowest failed rate so far
    trials: list[tuple[float, bool]] = field(default_factory=list)

    def next_rate(self) -> float | None:
        if len(self.trials) >= self.max_trials:
            return None
        if not self.trials:
            return min(self.start, self.maximum)
        if self.failed is None:  # still climbing
            assert self.best is not None
            if self.best >= self.maximum:
                return None
            return min(self.best * 2, self.maximum)
        if self.best is None:  # even the start failed: halve
            rate = self.failed / 2
            return rate if rate >= 1 else None
        if self.failed / self.best - 1 < self.resolution:
            return None
        return round((self.best + self.failed) / 2, 1)

    def record(self, rate: float, sustained: bool) -> None:
        self.trials.append((rate, sustained))
        if sustained:
            self.best = rate if self.best is None else max(self.best, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)
