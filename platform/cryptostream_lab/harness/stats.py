"""Statistics over repetitions and latency histograms (sans-I/O).

Repeated runs are summarised by median and spread; the spread is the relative range
``(max - min) / median``, and a figure whose spread exceeds ``SPREAD_FLAG`` (10 %) is flagged in
the report. Latencies go into HDR histograms (µs, 3 significant digits) kept in results.json in
HDR's own compressed encoding, so percentiles can be recomputed from the raw data.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

SPREAD_FLAG = 0.10
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
HIGHEST_US = 3_600_000_000  # one hour


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @property
    def spread(self) -> float:
        if self.n < 2 or self.median == 0:
            return 0.0
        return (self.high - self.low) / abs(self.median)

    @property
    def flagged(self) -> bool:
        return self.spread > SPREAD_FLAG

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "n": self.n,
            "spread": self.spread,
            "flagged": self.flagged,
        }


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarise")
    return Summary(statistics.median(values), min(values), max(values), len(values))


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, 3)


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    histogram.record_value(min(HIGHEST_US, max(1, round(seconds * 1e6))))


def percentile_summary(histogram: HdrHistogram) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds, plus the count."""
    count = histogram.get_total_count()
    out: dict[str, float] = {"count": float(count)}
    for q in PERCENTILES:
        out[f"p{q:g}"] = histogram.get_value_at_percentile(q) / 1e3 if count else 0.0
    out["max"] = histogram.get_max_value() / 1e3 if count else 0.0
    out["mean"] = histogram.get_mean_value() / 1e3 if count else 0.0
    return out


def encode(histogram: HdrHistogram) -> str:
    encoded: bytes = histogram.encode()
    return encoded.decode()


def decode(text: str) -> HdrHistogram:
    histogram: HdrHistogram = HdrHistogram.decode(text.encode())
    return histogram


def cdf_points(histogram: HdrHistogram) -> list[tuple[float, float]]:
    """(latency ms, cumulative fraction) at each recorded value bucket, for a CDF plot."""
    total = histogram.get_total_count()
    if not total:
        return []
    points = []
    for item in histogram.get_recorded_iterator():
        points.append((item.value_iterated_to / 1e3, item.total_count_to_this_value / total))
    return points
