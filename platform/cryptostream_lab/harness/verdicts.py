"""What a scaling run concluded, per processor count, from results.json alone (sans-I/O).

The report's summary, its charts' titles and ``csp report --compare`` all read these verdicts,
so they cannot disagree with each other or with the data. The rules:

- A group's capacity is a rate that was tried, sustained, and sustained again in its
  confirmation trial (``kind = capacity``); a group whose confirmation failed has none.
- "Lowest failed" is the lowest *tried* rate whose trial failed, per repetition; across
  repetitions only medians and ranges of tried rates are reported, never means.
- A capacity is a lower bound (>=) when nothing above it failed: the search reached its maximum
  or the load generator could not deliver more (generator-limited).
- Efficiency at N processors = capacity(N) / (N x capacity(1)), from the medians.
- The limiting ceiling is named from what was measured in the failed trial just above the
  capacity: the processors' CPU budget (throttled), the machine's cores, the load generator's
  core, Redis's single thread, or the busiest partition.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

THROTTLED = 0.5  # share of CFS periods a budgeted process hit its quota in: "CPU-bound"
BUSY = 0.85  # share of a resource (cores, one core) that counts as its ceiling


@dataclass(frozen=True)
class GroupVerdict:
    """One repetition of one processor count."""

    repetition: int
    processors: int
    capacity: float | None  # confirmed
    lower_bound: bool
    lowest_failed: float | None  # a tried rate
    upper: float | None  # lowest failed or generator-limited tried rate
    confirmations: list[tuple[float, bool]]  # (rate, sustained) of every confirmation trial
    generator_limited: bool
    cpu_at_capacity: dict[str, float]  # mean CPU % by role during the confirmation trial
    limit: str  # what ran out just above the capacity
    p99_ms: float | None
    best_search: float | None = None  # highest sustained search rate (NOT a capacity by itself)


@dataclass
class CountVerdict:
    """Every repetition of one processor count, summarised."""

    processors: int
    groups: list[GroupVerdict] = field(default_factory=list)

    @property
    def capacities(self) -> list[float]:
        return [g.capacity for g in self.groups if g.capacity is not None]

    @property
    def capacity(self) -> float | None:
        """Median of the confirmed capacities (None if no repetition confirmed one)."""
        return statistics.median(self.capacities) if self.capacities else None

    @property
    def unconfirmed(self) -> int:
        return sum(1 for g in self.groups if g.capacity is None)

    @property
    def lower_bound(self) -> bool:
        return any(g.lower_bound for g in self.groups if g.capacity is not None)

    @property
    def lowest_failed(self) -> list[float]:
        return [g.lowest_failed for g in self.groups if g.lowest_failed is not None]

    @property
    def generator_limited(self) -> bool:
        return any(g.generator_limited for g in self.groups)

    @property
    def limit(self) -> str:
        """The ceiling in words: in full when every repetition names the same kind."""
        limits = [g.limit for g in self.groups if g.limit]
        kinds = sorted({x.split(" (")[0] for x in limits})
        return limits[0] if len(kinds) == 1 else " / ".join(kinds)

    def cpu_at_capacity(self) -> dict[str, float]:
        """Mean over the repetitions with a capacity of the CPU % by role."""
        rows = [g.cpu_at_capacity for g in self.groups if g.capacity is not None]
        roles = sorted({k for row in rows for k in row})
        return {k: sum(row.get(k, 0.0) for row in rows) / len(rows) for k in roles} if rows else {}


def role(name: str) -> str:
    """``processor-3`` -> ``processor``; ``kafka`` -> ``kafka``."""
    return name.rsplit("-", 1)[0] if name[-1:].isdigit() and "-" in name else name


def cpu_by_role(trial: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for name, value in (trial.get("cpu_percent_mean") or {}).items():
        out[role(name)] += float(value)
    return dict(out)


def _search_trials(search: dict[str, Any]) -> list[dict[str, Any]]:
    return list(search.get("trials") or [])


def _confirmations(search: dict[str, Any]) -> list[dict[str, Any]]:
    if "confirmations" in search:
        return list(search["confirmations"] or [])
    return [search["capacity"]] if search.get("capacity") else []  # results of the 1st version


def _delivered(t: dict[str, Any]) -> bool:
    return bool(t.get("produced_rate", 0) >= 0.9 * t["rate"])


def group_verdict(
    group: dict[str, Any], budgets: dict[str, Any], cores: int, produce: float | None = None
) -> GroupVerdict:
    search = group["search"]
    trials, confirmations = _search_trials(search), _confirmations(search)
    everything = trials + confirmations
    failed = [t["rate"] for t in everything if not t["sustained"]]
    limited = [t["rate"] for t in trials if t["sustained"] and not _delivered(t)]
    lowest_failed = min(failed) if failed else None
    uppers = failed + limited
    upper = min(uppers) if uppers else None
    confirmed = [
        t
        for t in confirmations
        if t["sustained"] and _delivered(t) and (upper is None or t["rate"] < upper)
    ]
    best = max(confirmed, key=lambda t: t["rate"]) if confirmed else None
    capacity = float(best["rate"]) if best else None
    above = [
        t
        for t in everything
        if not t["sustained"] and capacity is not None and t["rate"] > capacity
    ] or [t for t in everything if not t["sustained"]]
    limit_trial = min(above, key=lambda t: t["rate"]) if above else None
    if limit_trial is None and limited:
        limit = "load generator (could not deliver the next rate)"
    elif limit_trial is not None:
        limit = name_limit(limit_trial, group["processors"], budgets, cores, produce)
    else:
        limit = "none reached (search maximum)"
    searched = [
        t["rate"]
        for t in trials
        if t["sustained"] and _delivered(t) and (upper is None or t["rate"] < upper)
    ]
    lat = (best or {}).get("latency_ms") or {}
    return GroupVerdict(
        repetition=group["repetition"],
        processors=group["processors"],
        capacity=capacity,
        lower_bound=capacity is not None and not [f for f in failed if f > capacity],
        lowest_failed=lowest_failed,
        upper=upper,
        confirmations=[(float(t["rate"]), bool(t["sustained"])) for t in confirmations],
        generator_limited=bool(limited),
        cpu_at_capacity=cpu_by_role(best) if best else {},
        limit=limit,
        p99_ms=lat.get("p99") if lat.get("count") else None,
        best_search=max(searched) if searched else None,
    )


def name_limit(
    trial: dict[str, Any],
    processors: int,
    budgets: dict[str, Any],
    cores: int,
    produce_ceiling: float | None = None,
) -> str:
    """Which ceiling the measurements of a failed trial point at, most specific first; other
    budgets that were throttled too are named after it."""
    primary = _primary_limit(trial, processors, budgets, cores, produce_ceiling)
    throttled = trial.get("throttled_share") or {}
    also = [
        f"{role} budget throttled {share * 100:.0f} % of periods"
        for role, share in sorted(throttled.items())
        if share >= THROTTLED and "processor" not in role and role not in primary
    ]
    return primary + (f"; also {', '.join(also)}" if also else "")


def _primary_limit(
    trial: dict[str, Any],
    processors: int,
    budgets: dict[str, Any],
    cores: int,
    produce_ceiling: float | None,
) -> str:
    cpu = cpu_by_role(trial)
    throttled = trial.get("throttled_share") or {}
    procs = [v for k, v in throttled.items() if "processor" in k]
    budget = budgets.get("processor_cpu")
    if not _delivered(trial):
        delivered = trial.get("produced_rate", 0.0)
        if throttled.get("loadgen", 0) >= THROTTLED:
            return f"load generator CPU budget ({budgets.get('loadgen_cpu'):g} core)"
        if produce_ceiling and delivered >= BUSY * produce_ceiling:
            return (
                f"Kafka produce ceiling (delivered {delivered:,.0f}/s; ProducerPerformance "
                f"{produce_ceiling:,.0f}/s in this run)"
            )
        return f"load generator (delivered {delivered:,.0f}/s of {trial['rate']:,.0f}/s)"
    if budget and procs and statistics.median(procs) >= THROTTLED:
        return f"processor CPU budget ({processors} x {budget:g} core)"
    for other in ("loadgen", "kafka", "redis"):
        if throttled.get(other, 0) >= THROTTLED:
            return f"{other} CPU budget ({budgets.get(f'{other}_cpu'):g} core)"
    total = sum(v for k, v in cpu.items() if k != "machine")
    machine = (trial.get("machine_cpu_percent") or {}).get("mean")
    if machine is not None and machine >= BUSY * 100 * cores:
        return f"machine's {cores} cores ({machine:.0f} % of {100 * cores} % in use)"
    if total >= BUSY * 100 * cores:
        return f"machine's {cores} cores (run's processes {total:.0f} % of {100 * cores} %)"
    if cpu.get("loadgen", 0) >= BUSY * 100:
        return "load generator (one core)"
    if cpu.get("redis", 0) >= BUSY * 100:
        return "Redis (one thread)"
    if cpu.get("kafka", 0) >= BUSY * 100 * cores:
        return "Kafka broker"
    share = trial.get("partition_share") or {}
    if share and processors > 1 and max(share.values()) * min(processors, len(share)) > 1.3:
        return f"busiest partition ({max(share.values()) * 100:.0f} % of the trades)"
    if budget and procs:
        return (
            f"processor CPU budget ({processors} x {budget:g} core, throttled "
            f"{statistics.median(procs) * 100:.0f} % of periods)"
        )
    return "not identified (no resource near its limit)"


def scaling_verdicts(results: dict[str, Any]) -> dict[int, CountVerdict]:
    """Per processor count, in order; only groups that ran a search."""
    budgets = results.get("budgets") or results.get("experiment", {}).get("budgets") or {}
    cores = int(results.get("environment", {}).get("cores") or 1)
    kafka = (results.get("ceilings") or {}).get("kafka") or {}
    produce = kafka.get("produce", {}).get("records_per_s")
    out: dict[int, CountVerdict] = {}
    for g in results["groups"]:
        if g.get("search"):
            count = out.setdefault(g["processors"], CountVerdict(g["processors"]))
            count.groups.append(group_verdict(g, budgets, cores, produce))
    return dict(sorted(out.items()))


def efficiency(verdicts: dict[int, CountVerdict]) -> dict[int, tuple[float, float] | None]:
    """Per count: (capacity / capacity(1), capacity / (N x capacity(1))), None if unknown."""
    base = verdicts.get(1)
    one = base.capacity if base else None
    out: dict[int, tuple[float, float] | None] = {}
    for n, v in verdicts.items():
        cap = v.capacity
        out[n] = None if cap is None or not one else (cap / one, cap / (n * one))
    return out
