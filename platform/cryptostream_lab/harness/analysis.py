"""The figures a report is made of, computed from results.json alone (sans-I/O, no plotting).

Which trials count, grouped how (repetition, processors, rate), their merged latency histograms,
the measured ceilings, CPU per processor, the series a plot shows. ``rendering`` turns them into
tables and words, ``plots`` into figures; the verdicts of a scaling run are ``verdicts.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from cryptostream_lab.harness import stats


def _summary(values: Iterable[float | None]) -> stats.Summary | None:
    present = [v for v in values if v is not None]
    return stats.summarize(present) if present else None


def trials_of(results: dict[str, Any], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    return [t for g in results["groups"] for t in g["trials"] if t["kind"] in kinds]


def group_fixed(results: dict[str, Any]) -> dict[tuple[int, int, float], list[dict[str, Any]]]:
    """Fixed-rate trials by (processors, symbols, rate), one entry per repetition."""
    out: dict[tuple[int, int, float], list[dict[str, Any]]] = defaultdict(list)
    for t in trials_of(results, ("fixed",)):
        out[(t["processors"], t["symbols"], t["rate"])].append(t)
    return dict(sorted(out.items()))


def merged_histogram(trials: list[dict[str, Any]]) -> Any:
    histogram = stats.new_histogram()
    for t in trials:
        if t.get("latency_hdr"):
            histogram.add(stats.decode(t["latency_hdr"]))
    return histogram


def ceiling(results: dict[str, Any], which: str) -> float | None:
    kafka = results.get("ceilings", {}).get("kafka")
    if not kafka:
        return None
    return float(kafka[which]["records_per_s"])


def processor_cpu(trial: dict[str, Any]) -> float:
    return float(
        sum(v for k, v in trial.get("cpu_percent_mean", {}).items() if k.startswith("proc"))
    )


def _varying(fixed: dict[tuple[int, int, float], list[dict[str, Any]]]) -> tuple[int, str]:
    """Which dimension the fixed trials vary along: (index in the key, axis label)."""
    keys = list(fixed)
    for index, label in ((2, "input rate (trades/s)"), (1, "symbols"), (0, "processors")):
        if len({k[index] for k in keys}) > 1:
            return index, label
    return 2, "input rate (trades/s)"


def _shown_trials(r: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Repetition 1's fixed-rate, replay and at-capacity trials that kept their time series (at
    most 8): a results.json trimmed of its series still renders, without these plots."""
    return [
        (g, t)
        for g in r["groups"]
        if g["repetition"] == 0
        for t in [*g["trials"], (g.get("search") or {}).get("capacity")]
        if t and t["kind"] in ("fixed", "replay", "capacity") and t.get("series")
    ][:8]


def _kind(t: dict[str, Any]) -> str:
    """A trial's name in titles; a confirmation says whether it confirmed (never 'capacity')."""
    if t["kind"] == "capacity":
        return "confirmation (sustained)" if t["sustained"] else "failed confirmation"
    return str(t["kind"])


def _rates(t: list[float], totals: list[int]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i in range(1, len(t)):
        dt = t[i] - t[i - 1]
        if dt > 0:
            xs.append(t[i])
            ys.append((totals[i] - totals[i - 1]) / dt)
    return xs, ys


def _role(name: str) -> str:
    return name.rsplit("-", 1)[0] if name[-1].isdigit() else name
