"""Two results.json of one experiment side by side (``csp report --compare A B``), sans-I/O.

Each headline figure of A and B, the ratio B / A, and whether the difference exceeds what was
measured to vary: the figures' spread over repetitions (max - min) on either side, and for
capacities also the search's resolution (a capacity is only known to lie in [capacity, the
lowest failed rate)). A difference within that is reported as "within spread", never as a change.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptostream_lab.harness.verdicts import efficiency, scaling_verdicts


@dataclass(frozen=True)
class Figure:
    """One headline figure: the values over repetitions and the uncertainty known besides."""

    name: str
    values: list[float]
    resolution: float = 0.0  # relative: e.g. the search's 5 %
    higher_is_better: bool = True

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def spread(self) -> float:
        """Absolute: the range over repetitions, or the resolution if that is wider."""
        rng = max(self.values) - min(self.values) if len(self.values) > 1 else 0.0
        return max(rng, self.resolution * self.median)


@dataclass(frozen=True)
class Row:
    name: str
    a: Figure | None
    b: Figure | None

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.a.median == 0:
            return None
        return self.b.median / self.a.median

    @property
    def verdict(self) -> str:
        a, b = self.a, self.b
        if a is None or b is None:
            return "only in " + ("B" if a is None else "A")
        if len(a.values) < 2 and len(b.values) < 2 and not (a.resolution or b.resolution):
            return "unknown (one run each: no measured spread)"
        diff = b.median - a.median
        if abs(diff) <= max(a.spread, b.spread):
            return "within spread"
        better = (diff > 0) == a.higher_is_better
        return "B better, beyond spread" if better else "B worse, beyond spread"


def headline(results: dict[str, Any]) -> dict[str, Figure]:
    """The figures a scaling / rate / latency experiment is read by, keyed by name."""
    out: dict[str, Figure] = {}
    resolution = float(results.get("experiment", {}).get("search", {}).get("resolution") or 0)
    verdicts = scaling_verdicts(results)
    for n, v in verdicts.items():
        if v.capacities:
            out[f"capacity /s, {n} processor(s)"] = Figure(
                f"capacity /s, {n} processor(s)", v.capacities, resolution
            )
        p99 = [g.p99_ms for g in v.groups if g.p99_ms is not None]
        if p99:
            out[f"p99 ms at capacity, {n} processor(s)"] = Figure(
                f"p99 ms at capacity, {n} processor(s)", p99, higher_is_better=False
            )
    for n, e in efficiency(verdicts).items():
        if e is not None and n != 1:
            name = f"scaling efficiency, {n} processors"
            out[name] = Figure(name, [e[1]], 2 * resolution)
    fixed: dict[tuple[int, int, float], list[dict[str, Any]]] = {}
    for g in results["groups"]:
        for t in g["trials"]:
            if t["kind"] == "fixed":
                fixed.setdefault((t["processors"], t["symbols"], t["rate"]), []).append(t)
    for (procs, symbols, rate), trials in sorted(fixed.items()):
        what = f"{procs} processor(s), {symbols:,} symbols, {rate:,.0f}/s"
        p99 = [t["latency_ms"]["p99"] for t in trials if t.get("latency_ms", {}).get("count")]
        if p99:
            out[f"p99 ms, {what}"] = Figure(f"p99 ms, {what}", p99, higher_is_better=False)
    kafka = (results.get("ceilings") or {}).get("kafka")
    if kafka:
        for which in ("produce", "consume"):
            name = f"Kafka {which} ceiling records/s"
            out[name] = Figure(name, [float(kafka[which]["records_per_s"])])
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    ha, hb = headline(a), headline(b)
    names = list(ha) + [n for n in hb if n not in ha]
    return [Row(n, ha.get(n), hb.get(n)) for n in names]


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _cell(f: Figure | None, fmt: Callable[[float], str] = _fmt) -> str:
    if f is None:
        return "-"
    text = fmt(f.median)
    if len(f.values) > 1:
        text += f" ({fmt(min(f.values))} to {fmt(max(f.values))})"
    return text


def markdown(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    """The comparison as a markdown page; refuses results of two different experiments."""
    xa, xb = a["experiment"]["name"], b["experiment"]["name"]
    if xa != xb:
        raise ValueError(f"A is experiment {xa!r} and B is {xb!r}: compare runs of one experiment")
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    out = [f"# `{xa}`: A = {name_a}, B = {name_b}", ""]
    for label, r, env in (("A", a, env_a), ("B", b, env_b)):
        budgets = r.get("budgets") or {}
        named = (
            ", ".join(
                f"{k.removesuffix('_cpu')} {v:g}"
                for k, v in budgets.items()
                if k.endswith("_cpu") and v
            )
            or "none"
        )
        out.append(
            f"- {label}: started {r.get('started_at')}, commit "
            f"{str(env.get('git_commit'))[:12]}{' (dirty)' if env.get('git_dirty') else ''}"
            f", {env.get('cores')} cores, CPU budgets (cores): {named}, "
            f"{r['experiment']['repetitions']} repetition(s)"
        )
    if a["experiment"] != b["experiment"]:
        out.append("- The experiment files differ (see each results.json): compare with care.")
    out += ["", "| figure | A | B | B / A | difference |", "|---|---|---|---|---|"]
    for row in compare(a, b):
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        out.append(f"| {row.name} | {_cell(row.a)} | {_cell(row.b)} | {ratio} | {row.verdict} |")
    out += [
        "",
        "Values are medians over repetitions (range in brackets). A difference counts "
        "only beyond the larger side's spread over repetitions, or for capacities beyond the "
        "search's resolution.",
        "",
    ]
    return "\n".join(out)
