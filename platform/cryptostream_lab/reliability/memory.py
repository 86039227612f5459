"""Memory-growth verdict for soak runs (pure): least-squares slope of RSS over time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptostream_lab.harness.search import slope

__all__ = ["MemoryVerdict", "memory_verdict", "slope"]


@dataclass(frozen=True)
class MemoryVerdict:
    process: str
    start_mb: float
    end_mb: float
    peak_mb: float
    slope_mb_per_hour: float
    growing: bool


def memory_verdict(
    process: str,
    samples: Sequence[tuple[float, int]],
    *,
    warmup_fraction: float = 0.2,
    max_mb_per_hour: float = 20.0,
    max_relative_growth: float = 0.25,
) -> MemoryVerdict:
    """Judge RSS samples ``(seconds, bytes)`` of one process after a warm-up.

    Growing means both a slope above ``max_mb_per_hour`` and, projected over one hour, more than
    ``max_relative_growth`` of the post-warm-up level: start-up allocation and small steady
    slopes of big processes (the JVM) are not flagged; a leak is.
    """
    if not samples:
        return MemoryVerdict(process, 0.0, 0.0, 0.0, 0.0, False)
    t0 = samples[0][0]
    span = samples[-1][0] - t0
    steady = [(t - t0, rss / 2**20) for t, rss in samples if t - t0 >= warmup_fraction * span]
    if len(steady) < 2:
        steady = [(t - t0, rss / 2**20) for t, rss in samples]
    per_hour = slope(steady) * 3600
    base = steady[0][1] or 1.0
    growing = per_hour > max_mb_per_hour and per_hour / base > max_relative_growth
    return MemoryVerdict(
        process,
        round(samples[0][1] / 2**20, 1),
        round(samples[-1][1] / 2**20, 1),
        round(max(rss for _, rss in samples) / 2**20, 1),
        round(per_hour, 2),
        growing,
    )
