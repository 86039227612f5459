"""results.json -> PNG plots, report.md and report.html (``csp report <folder>``).

Everything here is computed from results.json alone, so a report can be regenerated (or
restyled) without re-running anything. Repeated figures show median and spread; a spread above
10 % is flagged in the tables and listed under "Flagged".
"""

from __future__ import annotations

import html
import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from cryptostream_lab.harness import stats
from cryptostream_lab.harness.results import load_results
from cryptostream_lab.harness.verdicts import CountVerdict, efficiency, scaling_verdicts

FLAG = "⚠"
COLORS: list[Any] = [plt.get_cmap("tab10")(i) for i in range(10)]


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


@dataclass
class Report:
    results: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file, caption)
    summary: list[str] = field(default_factory=list)  # sentences, then caveats (markdown)
    caveats: list[str] = field(default_factory=list)


# --- numbers ------------------------------------------------------------------------------------


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def cell(s: stats.Summary | None, fmt: Any, what: str, flagged: list[str]) -> str:
    """``median`` or ``median ±spread%`` for repeated figures, flagged above 10 %."""
    if s is None:
        return "-"
    text = str(fmt(s.median))
    if s.n > 1:
        text += f" ±{s.spread * 100:.0f}%"
        if s.flagged:
            text += f" {FLAG}"
            flagged.append(
                f"{what}: spread {s.spread * 100:.0f}% over {s.n} runs "
                f"(min {fmt(s.low)}, max {fmt(s.high)})"
            )
    return text


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


# --- tables -------------------------------------------------------------------------------------


def build(results: dict[str, Any]) -> Report:
    report = Report(results)
    flagged = report.flagged
    produce_ceiling, consume_ceiling = ceiling(results, "produce"), ceiling(results, "consume")
    fixed = group_fixed(results)
    if fixed:
        table = Table(
            "Fixed-rate trials (open-model load; latency = event -> visible in Redis, from each "
            "record's intended send time)",
            [
                "processors",
                "symbols",
                "target /s",
                "processed /s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "drain s",
                "processor CPU %",
            ],
        )
        for (procs, symbols, rate), trials in fixed.items():
            what = f"{procs} processor(s), {symbols} symbols, {rate:,.0f}/s"
            lat = [t.get("latency_ms", {}) for t in trials]

            def pct(key: str, lat: list[dict[str, float]] = lat, what: str = what) -> str:
                return cell(
                    _summary(x.get(key) for x in lat if x.get("count")),
                    fmt_ms,
                    f"{what}: {key} latency",
                    flagged,
                )

            table.rows.append(
                [
                    str(procs),
                    f"{symbols:,}",
                    fmt_rate(rate),
                    cell(
                        _summary(t["processed_rate"] for t in trials),
                        fmt_rate,
                        f"{what}: processed rate",
                        flagged,
                    ),
                    pct("p50"),
                    pct("p90"),
                    pct("p99"),
                    pct("p99.9"),
                    pct("max"),
                    _median_text(t.get("drain_s") for t in trials),
                    f"{sum(processor_cpu(t) for t in trials) / len(trials):.0f}",
                ]
            )
        report.tables.append(table)
    verdicts = scaling_verdicts(results)
    if verdicts:
        report.tables.insert(0, _summary_table(results, verdicts, report))
        report.tables.append(_search_table(verdicts, results, produce_ceiling, consume_ceiling))
    replays = trials_of(results, ("replay",))
    if replays:
        table = Table(
            "Replay through the full path (simulator -> ingest -> Kafka -> processors -> Redis)",
            [
                "speed",
                "records",
                "applied",
                "seconds",
                "records/s",
                "p50 ms",
                "p99 ms",
                "complete",
                "checksum",
            ],
        )
        checks = {g["trials"][0]["speed"]: g.get("checksum", "")[:12] for g in results["groups"]}
        for t in replays:
            lat = t.get("latency_ms", {})
            table.rows.append(
                [
                    f"x{t['speed']:g}" if t["speed"] else "max",
                    f"{t['records']:,}",
                    f"{t['applied']:,}",
                    f"{t['seconds']:.1f}",
                    fmt_rate(t["replay_rate"]),
                    fmt_ms(lat.get("p50")) if lat.get("count") else "-",
                    fmt_ms(lat.get("p99")) if lat.get("count") else "-",
                    "yes" if t["complete"] else "no",
                    checks.get(t["speed"], ""),
                ]
            )
        table.note = (
            "Replay latency counts from each trade's event time as the simulator "
            "stamps it; paced replays cover at most the trial's duration."
        )
        report.tables.append(table)
    query = [t for t in trials_of(results, ("fixed",)) if t.get("query_load")]
    if query:
        table = Table(
            "Query API under Locust (closed-loop users, Zipf symbols + unknown symbols)",
            ["endpoint", "requests", "failures", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        )
        for row in query[0]["query_load"]["stats"]:
            table.rows.append(
                [
                    row["Name"],
                    row["Request Count"],
                    row["Failure Count"],
                    f"{float(row['Requests/s']):,.0f}",
                    row["50%"],
                    row["90%"],
                    row["99%"],
                    f"{float(row['Max Response Time']):.0f}",
                ]
            )
        failures = query[0]["query_load"].get("failures") or []
        table.note = (
            "Failures: "
            + (
                "; ".join(f"{f['Name']}: {f['Error']} x{f['Occurrences']}" for f in failures)
                or "none"
            )
            + (". Unknown symbols answered 404 with the contract's body count as successes.")
        )
        table.note += " " + _query_accounting(query[0])
        report.tables.append(table)
    if results.get("ceilings"):
        report.tables.append(_ceiling_table(results["ceilings"]))
    report.tables.append(_checksum_table(results))
    return report


def _query_accounting(trial: dict[str, Any]) -> str:
    """Server-side req/s beside Locust's, the CPU of both, and which one was the bottleneck."""
    q = trial["query_load"]
    agg = next((row for row in q.get("stats", []) if row["Name"] == "Aggregated"), None)
    parts = []
    locust_rps = float(agg["Requests/s"]) if agg else None
    if q.get("server_requests") is not None and q.get("server_seconds"):
        server_rps = q["server_requests"] / q["server_seconds"]
        parts.append(
            f"The query API counted {server_rps:,.0f} req/s itself (its /metrics, all "
            f"workers) against Locust's {fmt_rate(locust_rps)} req/s."
        )
    cpu = trial.get("cpu_percent_mean", {})
    what = "the trial"
    series, window = trial.get("series") or {}, q.get("window_s")
    if window and series.get("t"):  # over Locust's own run: the load it generated
        inside = [i for i, t in enumerate(series["t"]) if window[0] < t <= window[1]]
        if inside:
            cpu = {
                name: sum(values[i] for i in inside if i < len(values)) / len(inside)
                for name, values in series["cpu_percent"].items()
            }
            what = "Locust's run"
    server = sum(v for k, v in cpu.items() if k.startswith("query"))
    locust = cpu.get("locust")
    if cpu:
        parts.append(
            f"Mean CPU over {what}: query API {server:.0f} % (workers included), "
            f"Locust {'-' if locust is None else f'{locust:.0f}'} % (100 = one core)."
        )
    if locust is not None and locust >= 85:
        parts.append(
            "Locust used a whole core: the load generator was the bottleneck, the API "
            "may serve more."
        )
    return " ".join(parts)


def _median_text(values: Iterable[float | None]) -> str:
    s = _summary(values)
    return "-" if s is None else f"{s.median:.1f}"


def _fraction(value: stats.Summary | None, ceiling_rate: float | None) -> str:
    if value is None or not ceiling_rate:
        return "-"
    return f"{value.median / ceiling_rate * 100:.0f} %"


def capacity_text(v: CountVerdict) -> str:
    """The capacity cell: median (±spread), '>=' for lower bounds, or why there is none."""
    if v.capacity is None:
        return "not confirmed" + (" (generator-limited)" if v.generator_limited else "")
    text = ("≥ " if v.lower_bound else "") + fmt_rate(v.capacity)
    caps = v.capacities
    if len(caps) > 1:
        spread = stats.summarize(caps).spread
        text += f" ±{spread * 100:.0f}%"
    if v.unconfirmed:
        text += f" ({len(caps)} of {len(v.groups)} confirmed)"
    if v.generator_limited:
        text += " (generator-limited)"
    return text


def tried_text(values: list[float]) -> str:
    """Tried rates across repetitions: the median and range of rates that were actually run."""
    if not values:
        return "none failed"
    if len(values) == 1:
        return fmt_rate(values[0])
    lo, hi = min(values), max(values)
    med = statistics.median(values)
    if lo == hi:
        return fmt_rate(lo)
    return f"{fmt_rate(med)} ({fmt_rate(lo)} to {fmt_rate(hi)})"


def _cpu_cell(cpu: dict[str, float], cores: int) -> str:
    if not cpu:
        return "-"
    parts = [
        f"{name} {cpu[key]:.0f}"
        for key, name in (
            ("processor", "processors"),
            ("kafka", "Kafka"),
            ("redis", "Redis"),
            ("loadgen", "generator"),
        )
        if key in cpu
    ]
    total = sum(v for k, v in cpu.items())
    return ", ".join(parts) + f"; all {total:.0f} of {100 * cores}"


def _us_per_trade(v: CountVerdict) -> str:
    """The processors' CPU per trade at capacity: what one more processor adds depends on it."""
    cpu = v.cpu_at_capacity().get("processor")
    if not cpu or not v.capacity:
        return "-"
    return f"{cpu / 100 / v.capacity * 1e6:.1f}"


def _summary_table(
    results: dict[str, Any], verdicts: dict[int, CountVerdict], report: Report
) -> Table:
    env = results.get("environment", {})
    cores = int(env.get("cores") or 1)
    eff = efficiency(verdicts)
    table = Table(
        "Summary",
        [
            "processors",
            "capacity /s",
            "x 1 processor",
            "efficiency",
            "lowest failed /s (tried)",
            "p99 at capacity ms",
            "processor CPU µs per trade",
            "CPU at capacity (% of a core)",
            "limit just above capacity",
        ],
    )
    for n, v in verdicts.items():
        e = eff.get(n)
        p99 = [g.p99_ms for g in v.groups if g.p99_ms is not None]
        table.rows.append(
            [
                str(n),
                capacity_text(v),
                "-" if e is None else f"{e[0]:.2f}",
                "-" if e is None else f"{e[1]:.2f}",
                tried_text(v.lowest_failed),
                fmt_ms(statistics.median(p99)) if p99 else "-",
                _us_per_trade(v),
                _cpu_cell(v.cpu_at_capacity(), cores),
                v.limit or "-",
            ]
        )
    table.note = (
        "Capacity: the highest rate that was tried, kept the consumer lag flat, and did "
        "so again in a longer confirmation trial (median over repetitions, ±: spread); "
        "'≥': nothing above it failed, the true capacity is higher. Lowest failed: the "
        "lowest tried rate whose lag grew. Efficiency = capacity(N) / (N x "
        "capacity(1))."
    )
    report.summary = _story(verdicts, eff)
    report.caveats = _caveats(results, verdicts)
    return table


def _story(
    verdicts: dict[int, CountVerdict], eff: dict[int, tuple[float, float] | None]
) -> list[str]:
    """The summary in words, from the same verdicts as the table."""
    parts = []
    for n, v in verdicts.items():
        cap = v.capacity
        if cap is None:
            searched = [g.best_search for g in v.groups if g.best_search is not None]
            parts.append(
                f"no confirmed capacity with {n}"
                + (
                    f" (short search trials sustained up to {max(searched):,.0f}/s, unconfirmed"
                    + ("; the load generator could not deliver more" if v.generator_limited else "")
                    + ")"
                    if searched
                    else ""
                )
            )
            continue
        text = f"{'at least ' if v.lower_bound else ''}{cap:,.0f}/s with {n}"
        e = eff.get(n)
        if e is not None and n != 1:
            text += f" (x{e[0]:.2f}, efficiency {e[1]:.2f})"
        parts.append(text)
    lines = ["Capacity (the highest confirmed sustainable rate): " + "; ".join(parts) + "."]
    known = [(n, v.capacity) for n, v in verdicts.items() if v.capacity is not None]
    if len(known) > 1:
        stops = [b for (_, x), (b, y) in itertools.pairwise(known) if y <= x]
        if not stops:
            lines.append(
                f"Capacity rises at every step from {known[0][0]} to {known[-1][0]} processors."
            )
        else:
            lines.append(
                f"Capacity stops rising at {stops[0]} processors: "
                f"{verdicts[stops[0]].limit or 'limit not identified'}."
            )
    superlinear = [n for n, e in eff.items() if e is not None and e[1] > 1.1]
    base = verdicts.get(1)
    if superlinear and base is not None:
        per_trade = {n: _us_per_trade(verdicts[n]) for n in (1, *superlinear)}
        lines.append(
            "Efficiency above 1 means each processor did more at N than one processor alone: "
            "the processors' CPU per trade at capacity fell ("
            + ", ".join(f"{t} µs at {n}" for n, t in per_trade.items())
            + "), consistent with each processor folding fewer symbols, with more trades per "
            "symbol, per batch (batch composition is not measured here)."
        )
    limits = [f"{n}: {v.limit}" for n, v in verdicts.items() if v.limit]
    if limits:
        lines.append("What ran out just above each capacity — " + "; ".join(limits) + ".")
    return lines


def _caveats(results: dict[str, Any], verdicts: dict[int, CountVerdict]) -> list[str]:
    env = results.get("environment", {})
    out = []
    cores = env.get("cores")
    load = env.get("load_average") or []
    out.append(
        f"{cores} cores for everything: Kafka, Redis, the processors, the load generator "
        "and the harness share them"
        + (f" (load average {load[0]:.2f} at the start, other jobs included)" if load else "")
        + "."
    )
    budgets = results.get("budgets") or {}
    named = {k: v for k, v in budgets.items() if k.endswith("_cpu") and v}
    if named:
        what = ", ".join(f"{k.removesuffix('_cpu')} {v:g} core" for k, v in named.items())
        out.append(
            f"CPU budgets (a cgroup v{budgets.get('cgroup_version')} CFS quota per "
            f"process, like Kubernetes CPU limits): {what}; the rest unbudgeted."
        )
    else:
        out.append(
            "No CPU budgets: every processor competes for the same cores, so beyond the "
            "machine's cores more processors measure the machine, not the design."
        )
    limited = [n for n, v in verdicts.items() if v.generator_limited]
    if limited:
        bounds = [str(n) for n in limited if verdicts[n].lower_bound]
        out.append(
            f"Generator-limited at {', '.join(map(str, limited))} processor(s): the load "
            "generator could not deliver some tried rates here (under 90 % of them)"
            + (
                f"; nothing failed above the capacity at {', '.join(bounds)}, so it is a lower "
                "bound there."
                if bounds
                else "; tried rates above the capacity still failed "
                "with growing lag, so the capacity is not a lower bound."
            )
        )
    unconfirmed = [
        f"{n} processor(s) repetition {g.repetition + 1} (confirmation failed at "
        f"{', '.join(fmt_rate(r) for r, ok in g.confirmations if not ok) or '-'}/s)"
        for n, v in verdicts.items()
        for g in v.groups
        if g.capacity is None
    ]
    if unconfirmed:
        out.append("No confirmed capacity: " + "; ".join(unconfirmed) + ".")
    refuted = [
        f"{n}: {fmt_rate(r)}/s"
        for n, v in verdicts.items()
        for g in v.groups
        for r, ok in g.confirmations
        if not ok and g.capacity is not None
    ]
    if refuted:
        out.append(
            "Confirmations that failed and sent the search lower: " + "; ".join(refuted) + "."
        )
    resolution = results.get("experiment", {}).get("search", {}).get("resolution")
    unresolved = [
        f"{n} processor(s) repetition {g.repetition + 1}: in "
        f"[{fmt_rate(g.capacity)}, {fmt_rate(g.upper)})"
        for n, v in verdicts.items()
        for g in v.groups
        if g.capacity and g.upper and resolution and g.upper / g.capacity - 1 > resolution + 1e-9
    ]
    if unresolved:
        out.append(
            f"Not resolved to {resolution * 100:.0f} % within the trial budget: "
            + "; ".join(unresolved)
            + "."
        )
    commit = env.get("git_commit")
    if env.get("git_dirty"):
        out.append(f"Run from a tree with uncommitted changes (commit {commit}).")
    return out


def _search_table(
    verdicts: dict[int, CountVerdict],
    results: dict[str, Any],
    produce: float | None,
    consume: float | None,
) -> Table:
    table = Table(
        "Sustainable-rate search per repetition (Theodolite load capacity: doubling, bisection, "
        "confirmation)",
        [
            "processors",
            "repetition",
            "capacity /s",
            "confirmations",
            "lowest failed /s",
            "of Kafka produce ceiling",
            "of Kafka consume ceiling",
            "search trials (rate: lag slope /s)",
        ],
    )
    by_group = {(g["processors"], g["repetition"]): g for g in results["groups"] if g.get("search")}
    for n, v in verdicts.items():
        for gv in v.groups:
            g = by_group[(n, gv.repetition)]
            listed = "; ".join(
                f"{t['rate']:,.0f}: generator delivered {t['produced_rate']:,.0f}/s"
                f"{'' if t['sustained'] else ', lag grows ✗'}"
                if t.get("generator_limited")
                else f"{t['rate']:,.0f}: {t['lag_slope']:+,.0f}{'' if t['sustained'] else ' ✗'}"
                for t in g["search"]["trials"]
            )
            confirmations = (
                "; ".join(f"{fmt_rate(r)} {'✓' if ok else '✗'}" for r, ok in gv.confirmations)
                or "-"
            )
            cap = gv.capacity
            table.rows.append(
                [
                    str(n),
                    str(gv.repetition + 1),
                    "not confirmed"
                    if cap is None
                    else ("≥ " if gv.lower_bound else "") + fmt_rate(cap),
                    confirmations,
                    fmt_rate(gv.lowest_failed),
                    f"{cap / produce * 100:.0f} %" if cap and produce else "-",
                    f"{cap / consume * 100:.0f} %" if cap and consume else "-",
                    listed,
                ]
            )
    table.note = (
        "A trial is sustained when the least-squares slope of the total lag after "
        "warm-up stays below 5 % of its rate (✗ = lag growing). Confirmations are "
        "longer trials at the best rate (✓ sustained, ✗ failed: the search went on "
        "below it)."
    )
    return table


def _ceiling_table(c: dict[str, Any]) -> Table:
    table = Table("Ceilings of this machine, measured in the same run", ["what", "rate", "tool"])
    if "kafka" in c:
        k = c["kafka"]
        size = k["record_size"]
        table.rows += [
            [
                "Kafka produce (acks=all, lz4)",
                f"{k['produce']['records_per_s']:,.0f} records/s "
                f"({k['produce']['mb_per_s']:.1f} MB/s, {size} B)",
                "ProducerPerformance",
            ],
            [
                "Kafka consume",
                f"{k['consume']['records_per_s']:,.0f} records/s "
                f"({k['consume']['mb_per_s']:.1f} MB/s)",
                "ConsumerPerformance",
            ],
        ]
    if "redis" in c:
        r = c["redis"]
        for name, value in r["requests_per_s"].items():
            table.rows.append(
                [f"Redis {name}", f"{value:,.0f} requests/s", "redis-benchmark -c 16"]
            )
        table.rows.append(
            [
                "Redis SET, pipelined 16",
                f"{r['set_pipelined_16_per_s']:,.0f} requests/s",
                "redis-benchmark -c 16 -P 16",
            ]
        )
    return table


def _checksum_table(results: dict[str, Any]) -> Table:
    table = Table(
        "Final Redis state (SHA-256 of prices, candles and totals after the fixed-rate "
        "trials drained)",
        ["group", "repetition", "processors", "checksum"],
    )
    compared = []
    for g in results["groups"]:
        if "checksum" not in g:
            continue
        partial = any(t["kind"] == "replay" and not t["complete"] for t in g["trials"])
        table.rows.append(
            [
                str(g["index"]),
                str(g["repetition"] + 1),
                str(g["processors"]),
                f"`{g['checksum'][:16]}`" + (" (partial replay)" if partial else ""),
            ]
        )
        if not partial:
            compared.append(g["checksum"])
    distinct = set(compared)
    verdict = "yes, identical" if len(distinct) == 1 else f"NO: {len(distinct)} distinct"
    table.note = (
        "Every group feeds the same seeded records into empty views, so all checksums must be "
        f"equal: {verdict if compared else 'nothing to compare'}."
    )
    if len(compared) < len(table.rows):
        table.note += " Partial replays (cut off by the trial duration) are not compared."
    return table


# --- plots --------------------------------------------------------------------------------------


def _save(fig: Figure, folder: Path, name: str) -> str:
    top = 1.0 if not fig.get_suptitle() else 1 - 0.35 / fig.get_figheight()  # room for it
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    return name


def plot_all(report: Report, folder: Path) -> None:
    r = report.results
    plots = [
        (
            plot_throughput_vs_processors,
            "Throughput against processor count: processed rate at "
            "the fixed rate and the highest sustained rate (bars: min-max over repetitions), with "
            "the Kafka ceilings measured in the same run.",
        ),
        (
            plot_latency_percentiles,
            "Event -> visible latency percentiles (median over repetitions).",
        ),
        (plot_latency_cdf, "Latency distribution (HDR percentile plot, all repetitions merged)."),
        (
            plot_lag,
            "Consumer lag per partition over time during the fixed-rate (and at-capacity) "
            "trials of repetition 1. The grey band is the warm-up.",
        ),
        (
            plot_search,
            "Sustainable-rate search: total lag over time for each trial rate; a "
            "growing line is an unsustained rate.",
        ),
        (
            plot_throughput_over_time,
            "Produced and applied records per second over time "
            "(fixed-rate and at-capacity trials of repetition 1).",
        ),
        (
            plot_resources,
            "Mean CPU and peak memory per process (children included) during the "
            "fixed-rate trials and, per processor count, the confirmed capacity trial.",
        ),
        (plot_query, "Query API latency and throughput under Locust."),
    ]
    for plot, caption in plots:
        name = plot(r, folder)
        if name:
            report.figures.append((name, caption))


def _plain(ax: Any, axis: str = "y") -> None:
    """Plain numbers (1,000 / 20,000) on a log axis instead of 10^3 powers."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    target.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot_throughput_vs_processors(r: dict[str, Any], folder: Path) -> str | None:
    verdicts = scaling_verdicts(r)
    counts = list(verdicts)
    if len(counts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5))
    one = verdicts[counts[0]].capacity
    if one:  # perfect scaling from the smallest count: N / N0 x capacity(N0)
        ideal = [one * n / counts[0] for n in counts]
        ax.plot(
            counts,
            ideal,
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"linear: N x capacity({counts[0]})",
        )
    xs, meds, lo, hi = [], [], [], []
    for n, v in verdicts.items():
        caps = v.capacities
        if not caps:
            ax.annotate(
                "not confirmed",
                (n, ax.get_ylim()[0] or 1),
                fontsize=8,
                ha="center",
                color="firebrick",
            )
            continue
        summary = stats.summarize(caps)
        xs.append(n)
        meds.append(summary.median)
        lo.append(summary.median - summary.low)
        hi.append(summary.high - summary.median)
    ax.errorbar(
        xs,
        meds,
        yerr=[lo, hi],
        color=COLORS[0],
        linewidth=2,
        capsize=4,
        zorder=3,
        label="capacity (confirmed; bars: min-max over repetitions)",
    )
    for n, m in zip(xs, meds, strict=True):
        v = verdicts[n]
        marker, face = ("^", "white") if v.lower_bound else ("o", COLORS[0])
        if v.generator_limited:
            marker = "X"
        ax.plot(
            [n], [m], marker=marker, markersize=9, markerfacecolor=face, color=COLORS[0], zorder=4
        )
        text = ("≥ " if v.lower_bound else "") + f"{m:,.0f}"
        if v.generator_limited:
            text += "\n(generator-limited)"
        ax.annotate(
            text,
            (n, m),
            textcoords="offset points",
            xytext=(0, 9),
            ha="center",
            fontsize=8,
            color=COLORS[0],
        )
    failed = [(n, f) for n, v in verdicts.items() for f in v.lowest_failed]
    if failed:
        ax.scatter(
            [n for n, _ in failed],
            [f for _, f in failed],
            marker="v",
            color="firebrick",
            s=30,
            alpha=0.7,
            label="lowest failed (tried rate, each repetition)",
            zorder=2,
        )
    top = max([*meds, *(f for _, f in failed)], default=0)
    off_chart = []
    for which, style in (("produce", "-."), ("consume", ":")):
        value = ceiling(r, which)
        if value and value <= 3 * top:
            ax.axhline(value, color="dimgrey", linestyle=style, linewidth=1.2)
            ax.annotate(
                f"Kafka {which} ceiling {value:,.0f}/s",
                (counts[-1], value),
                textcoords="offset points",
                xytext=(0, 4),
                ha="right",
                fontsize=8,
                color="dimgrey",
            )
        elif value:
            off_chart.append(f"{which} {value:,.0f}/s")
    if off_chart:  # far above the data: named, not drawn, so the data keeps the axis
        ax.annotate(
            "Kafka ceilings (same run): " + ", ".join(off_chart),
            (0.99, 0.02),
            xycoords="axes fraction",
            ha="right",
            fontsize=8,
            color="dimgrey",
        )
    # Hollow triangle = lower bound (nothing above it failed); X = generator-limited.
    ax.plot([], [], "^", color=COLORS[0], markerfacecolor="white", label="≥: lower bound")
    ax.plot([], [], "X", color=COLORS[0], label="generator-limited")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    _plain(ax)
    ax.set_xlabel("processors (log scale)")
    ax.set_ylabel("trades / s (log scale)")
    budget = (r.get("budgets") or {}).get("processor_cpu")
    ax.set_title(
        "Capacity against processor count"
        + (f" ({budget:g} core per processor)" if budget else " (no CPU budgets)")
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, folder, "throughput_vs_processors.png")


def _varying(fixed: dict[tuple[int, int, float], list[dict[str, Any]]]) -> tuple[int, str]:
    """Which dimension the fixed trials vary along: (index in the key, axis label)."""
    keys = list(fixed)
    for index, label in ((2, "input rate (trades/s)"), (1, "symbols"), (0, "processors")):
        if len({k[index] for k in keys}) > 1:
            return index, label
    return 2, "input rate (trades/s)"


def plot_latency_percentiles(r: dict[str, Any], folder: Path) -> str | None:
    fixed = {k: v for k, v in group_fixed(r).items() if any(t.get("latency_ms") for t in v)}
    if not fixed:
        return None
    index, label = _varying(fixed)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    xs = [k[index] for k in fixed]
    for q, color in zip(("p50", "p90", "p99", "p99.9", "max"), COLORS, strict=False):
        ys = [stats.summarize([t["latency_ms"][q] for t in v]).median for v in fixed.values()]
        ax.plot(xs, ys, marker="o", label=q, color=color, linewidth=2)
    ax.set_yscale("log")
    if index in (1, 2) and max(xs) / max(min(xs), 1) >= 20:
        ax.set_xscale("log")
    if index == 0:
        ax.set_xticks(xs, [str(x) for x in xs])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(label)
    ax.set_ylabel("event -> visible latency (ms, log)")
    ax.set_title(f"Latency percentiles against {label.split(' (')[0]}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    return _save(fig, folder, "latency_percentiles.png")


def plot_latency_cdf(r: dict[str, Any], folder: Path) -> str | None:
    fixed = {k: v for k, v in group_fixed(r).items() if any(t.get("latency_hdr") for t in v)}
    replays = [t for t in trials_of(r, ("replay",)) if t.get("latency_ms", {}).get("count")]
    if not fixed and not replays:
        return None
    index, _ = _varying(fixed) if fixed else (0, "")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    curves: list[tuple[str, list[dict[str, Any]]]] = []
    for key, trials in fixed.items():
        label = {0: f"{key[0]} processor(s)", 1: f"{key[1]:,} symbols", 2: f"{key[2]:,.0f}/s"}[
            index
        ]
        curves.append((label, trials))
    curves += [(f"replay x{t['speed']:g}" if t["speed"] else "replay max", [t]) for t in replays]
    for (label, trials), color in zip(curves, _cycle(len(curves)), strict=True):
        points = stats.cdf_points(merged_histogram(trials))
        points = [(ms, q) for ms, q in points if q < 1.0] + points[-1:]
        xs = [1 / max(1 - q, 1e-6) for _, q in points]
        ax.plot(xs, [ms for ms, _ in points], label=label, color=color, linewidth=1.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    ax.set_xticks(ticks, ["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_xlim(1, 20000)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title("Latency by percentile (HDR)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2 if len(curves) > 5 else 1)
    return _save(fig, folder, "latency_cdf.png")


def _cycle(n: int) -> list[Any]:
    cmap = plt.get_cmap("viridis" if n > 10 else "tab10")
    if n > 10:
        return [cmap(i / max(n - 1, 1)) for i in range(n)]
    return [COLORS[i] for i in range(n)]


def _grid(n: int) -> tuple[Figure, list[Any]]:
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols + 1, 3.6 * rows + 0.6), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _shown_trials(r: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Repetition 1's fixed-rate, replay and at-capacity trials (at most 8)."""
    return [
        (g, t)
        for g in r["groups"]
        if g["repetition"] == 0
        for t in [*g["trials"], (g.get("search") or {}).get("capacity")]
        if t and t["kind"] in ("fixed", "replay", "capacity")
    ][:8]


def _kind(t: dict[str, Any]) -> str:
    """A trial's name in titles; a confirmation says whether it confirmed (never 'capacity')."""
    if t["kind"] == "capacity":
        return "confirmation (sustained)" if t["sustained"] else "failed confirmation"
    return str(t["kind"])


def plot_lag(r: dict[str, Any], folder: Path) -> str | None:
    shown = _shown_trials(r)
    if not shown:
        return None
    warmup = r["experiment"]["workload"]["warmup_s"]
    fig, axes = _grid(len(shown))
    for (g, t), ax in zip(shown, axes, strict=True):
        series = t["series"]
        for p, lag in sorted(series["lag_per_partition"].items(), key=lambda kv: int(kv[0])):
            ax.plot(series["t"], lag, linewidth=1.2, label=f"p{p}")
        ax.axvspan(min(series["t"] or [0]), warmup, color="grey", alpha=0.15)
        what = (
            (f"replay x{t['speed']:g}" if t["speed"] else "replay max")
            if t["kind"] == "replay"
            else f"{_kind(t)} {t['rate']:,.0f}/s, {t['symbols']:,} symbols"
        )
        ax.set_title(f"{g['processors']} processor(s), {what}", fontsize=10)
        _load_end(ax, t)
        _thousands(ax)
        ax.set_xlabel("s since load start (dashed: load ends, drain follows)")
        ax.set_ylabel("lag (records)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2, title="partition", title_fontsize=7)
    fig.suptitle("Consumer lag per partition", fontsize=12)
    return _save(fig, folder, "lag_over_time.png")


def plot_search(r: dict[str, Any], folder: Path) -> str | None:
    groups = [g for g in r["groups"] if g["repetition"] == 0 and g.get("search")]
    if not groups:
        return None
    verdicts = scaling_verdicts(r)
    fig, axes = _grid(len(groups))
    for g, ax in zip(groups, axes, strict=True):
        gv = next(x for x in verdicts[g["processors"]].groups if x.repetition == 0)
        search = g["search"]
        confirmations = search.get("confirmations")
        if confirmations is None:
            confirmations = [search["capacity"]] if search.get("capacity") else []
        trials = [*search["trials"], *confirmations]
        for t, color in zip(trials, _cycle(len(trials)), strict=True):
            s = t["series"]
            total = [sum(v[i] for v in s["lag_per_partition"].values()) for i in range(len(s["t"]))]
            mark = "sustained" if t["sustained"] else "lag grows"
            if t.get("generator_limited"):
                mark = f"generator delivered only {t['produced_rate']:,.0f}/s, " + mark
            kind = "confirmation " if t["kind"] == "capacity" else ""
            ax.plot(
                s["t"],
                total,
                color=color,
                linewidth=1.5,
                linestyle="--" if t["kind"] == "capacity" else "-",
                label=f"{kind}{t['rate']:,.0f}/s: {mark}",
            )
        if gv.capacity is None:
            title = f"{g['processors']} processor(s): no confirmed capacity"
        else:
            title = (
                f"{g['processors']} processor(s): capacity {'≥ ' if gv.lower_bound else ''}"
                f"{fmt_rate(gv.capacity)}/s (confirmed)"
            )
        ax.set_title(title, fontsize=10)
        ax.axvline(
            r["experiment"]["search"]["trial_s"],
            color="black",
            linestyle="--",
            linewidth=0.8,
            alpha=0.6,
        )
        _thousands(ax)
        ax.set_xlabel("s since load start (dashed line: a search trial's load ends)")
        ax.set_ylabel("total lag (records)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Sustainable-rate search: total consumer lag per trial (dashed: confirmations)", fontsize=12
    )
    return _save(fig, folder, "search_lag.png")


def _thousands(ax: Any) -> None:
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _load_end(ax: Any, t: dict[str, Any]) -> None:
    ax.axvline(t["duration_s"], color="black", linestyle="--", linewidth=0.8, alpha=0.6)


def _rates(t: list[float], totals: list[int]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i in range(1, len(t)):
        dt = t[i] - t[i - 1]
        if dt > 0:
            xs.append(t[i])
            ys.append((totals[i] - totals[i - 1]) / dt)
    return xs, ys


def plot_throughput_over_time(r: dict[str, Any], folder: Path) -> str | None:
    shown = _shown_trials(r)
    if not shown:
        return None
    fig, axes = _grid(len(shown))
    for (g, t), ax in zip(shown, axes, strict=True):
        s = t["series"]
        for key, color in (("produced", COLORS[0]), ("applied", COLORS[1])):
            xs, ys = _rates(s["t"], s[key])
            ax.plot(xs, ys, color=color, linewidth=1.2, label=key)
        what = (
            (f"replay x{t['speed']:g}" if t["speed"] else "replay max")
            if t["kind"] == "replay"
            else f"{_kind(t)} {t['rate']:,.0f}/s"
        )
        ax.set_title(f"{g['processors']} processor(s), {what}", fontsize=10)
        ax.set_xlabel("s since load start")
        ax.set_ylabel("records / s")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "Throughput over time (Kafka high watermarks vs offsets applied in Redis)", fontsize=12
    )
    return _save(fig, folder, "throughput_over_time.png")


def _role(name: str) -> str:
    return name.rsplit("-", 1)[0] if name[-1].isdigit() else name


def plot_resources(r: dict[str, Any], folder: Path) -> str | None:
    # The fixed-rate trials, then each count's confirmed capacity trial: CPU where it matters.
    groups = [
        (g, t)
        for g in r["groups"]
        if g["repetition"] == 0
        for t in g["trials"]
        if t["kind"] in ("fixed", "replay") and t.get("cpu_percent_mean")
    ]
    groups += [
        (g, g["search"]["capacity"])
        for g in r["groups"]
        if g["repetition"] == 0
        and (g.get("search") or {}).get("capacity")
        and g["search"]["capacity"]["sustained"]
        and g["search"]["capacity"].get("cpu_percent_mean")
    ]
    if not groups:
        return None
    labels = [
        f"{g['processors']}p\n{t['rate']:,.0f}/s"
        if t["kind"] == "fixed"
        else f"{g['processors']}p cap.\n{t['rate']:,.0f}/s"
        if t["kind"] == "capacity"
        else f"{g['processors']}p\nx{t['speed'] or 0:g}"
        for g, t in groups
    ]
    roles = sorted({_role(n) for _, t in groups for n in t["cpu_percent_mean"]})
    fig, (cpu_ax, mem_ax) = plt.subplots(1, 2, figsize=(12, 4.6))
    bottom = [0.0] * len(groups)
    for role, color in zip(roles, _cycle(len(roles)), strict=True):
        values = [
            sum(v for n, v in t["cpu_percent_mean"].items() if _role(n) == role) for _, t in groups
        ]
        cpu_ax.bar(labels, values, bottom=bottom, label=role, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        mem = [sum(v for n, v in t["rss_mb_max"].items() if _role(n) == role) for _, t in groups]
        mem_ax.plot(labels, mem, marker="o", label=role, color=color)
    machine = [(t.get("machine_cpu_percent") or {}).get("mean") for _, t in groups]
    if any(m is not None for m in machine):  # everything on the machine, other users included
        cpu_ax.plot(
            labels,
            [math.nan if m is None else m for m in machine],
            "k_",
            markersize=28,
            markeredgewidth=2,
            label="whole machine",
        )
    cores = r.get("environment", {}).get("cores") or 1
    cpu_ax.axhline(100 * cores, color="grey", linestyle="--", linewidth=1)
    cpu_ax.annotate(
        f"{cores} cores",
        (len(groups) - 0.5, 100 * cores),
        fontsize=8,
        ha="right",
        va="bottom",
        color="dimgrey",
    )
    cpu_ax.set_ylabel("mean CPU % (100 = one core)")
    cpu_ax.set_title(
        "CPU per process with its children, at fixed rates and at capacity", fontsize=10
    )
    cpu_ax.legend(fontsize=8)
    mem_ax.set_ylabel("peak RSS (MiB, summed per role)")
    mem_ax.set_title("Memory per process", fontsize=10)
    mem_ax.set_ylim(bottom=0)
    mem_ax.grid(alpha=0.3)
    mem_ax.legend(fontsize=8)
    for ax in (cpu_ax, mem_ax):
        ax.tick_params(axis="x", labelsize=8)
    return _save(fig, folder, "resources.png")


def plot_query(r: dict[str, Any], folder: Path) -> str | None:
    trials = [t for t in trials_of(r, ("fixed",)) if t.get("query_load", {}).get("stats")]
    if not trials:
        return None
    q = trials[0]["query_load"]
    fig, (bar_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.6))
    rows = [row for row in q["stats"] if row["Name"] != "Aggregated"] + [
        row for row in q["stats"] if row["Name"] == "Aggregated"
    ]
    width = 0.2
    for i, (key, color) in enumerate(zip(("50%", "90%", "99%", "99.9%"), COLORS, strict=False)):
        xs = [j + (i - 1.5) * width for j in range(len(rows))]
        bar_ax.bar(
            xs, [float(row.get(key) or 0) for row in rows], width, label=f"p{key[:-1]}", color=color
        )
    bar_ax.set_xticks(range(len(rows)), [row["Name"] for row in rows], fontsize=8)
    bar_ax.set_yscale("log")
    bar_ax.set_ylabel("response time (ms, log)")
    bar_ax.set_title("Query latency percentiles (Locust)", fontsize=10)
    bar_ax.legend(fontsize=8)
    history = q.get("history") or []
    if history:
        t0 = float(history[0]["Timestamp"])
        ts = [float(h["Timestamp"]) - t0 for h in history]
        time_ax.plot(
            ts, [float(h["Requests/s"]) for h in history], color=COLORS[0], label="requests/s"
        )
        time_ax.set_ylabel("requests / s")
        twin = time_ax.twinx()
        for key, color in (("50%", COLORS[1]), ("95%", COLORS[2])):
            twin.plot(
                ts,
                [float(h[key]) if h[key] not in ("N/A", "") else math.nan for h in history],
                color=color,
                label=f"p{key[:-1]} ms",
            )
        twin.set_ylabel("response time (ms)")
        lines = time_ax.get_lines() + twin.get_lines()
        time_ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="lower right")
        time_ax.set_xlabel("s since Locust start")
        time_ax.set_title("Throughput and latency over time", fontsize=10)
    return _save(fig, folder, "query_latency.png")


# --- documents ----------------------------------------------------------------------------------


def _env_lines(env: dict[str, Any]) -> list[tuple[str, str]]:
    libs = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items())
    return [
        ("CPU", f"{env.get('cpu_model')} ({env.get('cores')} cores)"),
        ("Memory", f"{env.get('memory_gb')} GiB"),
        ("OS", f"{env.get('os')} ({env.get('kernel')})"),
        ("Python / Java", f"{env.get('python')} / {env.get('java')}"),
        ("Kafka / Redis", f"{env.get('kafka')} / {env.get('redis')}"),
        ("Libraries", libs),
        ("Git commit", f"{env.get('git_commit')}{' (dirty)' if env.get('git_dirty') else ''}"),
        ("Load average at start", ", ".join(f"{x:.2f}" for x in env.get("load_average", []))),
    ]


def markdown(report: Report) -> str:
    r = report.results
    x = r["experiment"]
    out = [f"# Experiment `{x['name']}`", "", x.get("description", ""), ""]
    out.append(
        f"Started {r['started_at']}, finished {r.get('finished_at', '?')}; seed "
        f"{r['seed']}; {x['repetitions']} repetition(s)"
        f"{'' if r.get('complete') else ' — **INCOMPLETE RUN**'}."
    )
    out.append("")
    for table in report.tables:
        out += [f"## {table.title}", ""]
        if table.title == "Summary":
            out += [" ".join(report.summary), ""]
        out += ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
        out += ["| " + " | ".join(row) + " |" for row in table.rows]
        if table.note:
            out += ["", table.note]
        if table.title == "Summary" and report.caveats:
            out += ["", "Caveats:", ""] + [f"- {line}" for line in report.caveats]
        out.append("")
    out += ["## Flagged (spread over repetitions > 10 %)", ""]
    out += [f"- {FLAG} {line}" for line in report.flagged] or ["- none"]
    out.append("")
    for name, caption in report.figures:
        out += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    out += ["## Environment", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in _env_lines(r.get("environment", {}))]
    out += ["", "## Experiment file", "", "```toml", r["experiment_file"].rstrip(), "```", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.flag{color:#b35900}.note{color:#555;font-size:13px}pre{background:#f6f6f6;padding:1em}"""


def to_html(report: Report) -> str:
    r = report.results
    x = r["experiment"]
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(x['name'])}</title>"
        f"<style>{_CSS}</style></head><body><h1>Experiment <code>{e(x['name'])}</code></h1>",
        f"<p>{e(x.get('description', ''))}</p>",
        f"<p>Started {e(r['started_at'])}, finished {e(str(r.get('finished_at')))}; seed "
        f"{r['seed']}; {x['repetitions']} repetition(s)"
        f"{'' if r.get('complete') else ' — <b>INCOMPLETE RUN</b>'}.</p>",
    ]
    for table in report.tables:
        parts.append(f"<h2>{e(table.title)}</h2>")
        if table.title == "Summary":
            parts.append(f"<p><b>{e(' '.join(report.summary))}</b></p>")
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.header) + "</tr>")
        for row in table.rows:
            cells = "".join(
                f"<td class='flag'>{e(c)}</td>" if FLAG in c else f"<td>{e(c.strip('`'))}</td>"
                for c in row
            )
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
        if table.note:
            parts.append(f"<p class='note'>{e(table.note)}</p>")
        if table.title == "Summary" and report.caveats:
            parts.append(
                "<p>Caveats:</p><ul>"
                + "".join(f"<li>{e(c)}</li>" for c in report.caveats)
                + "</ul>"
            )
    parts.append("<h2>Flagged (spread over repetitions &gt; 10 %)</h2><ul>")
    parts += [f"<li class='flag'>{e(line)}</li>" for line in report.flagged] or ["<li>none</li>"]
    parts.append("</ul>")
    for name, caption in report.figures:
        parts.append(
            f"<figure><img src='{e(name)}' alt='{e(caption)}'><figcaption>{e(caption)}"
            "</figcaption></figure>"
        )
    parts.append("<h2>Environment</h2><table>")
    parts += [
        f"<tr><td>{e(k)}</td><td style='text-align:left'>{e(v)}</td></tr>"
        for k, v in _env_lines(r.get("environment", {}))
    ]
    parts.append(f"</table><h2>Experiment file</h2><pre>{e(r['experiment_file'])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(folder: Path) -> list[str]:
    """Regenerate every plot, report.md and report.html; returns what it wrote, for printing."""
    results = load_results(folder).as_dict()  # ValueError if it does not fit the model
    for old in folder.glob("*.png"):
        old.unlink()
    report = build(results)
    plot_all(report, folder)
    (folder / "report.md").write_text(markdown(report))
    (folder / "report.html").write_text(to_html(report))
    lines = [f"report: {folder / 'report.md'} and report.html, {len(report.figures)} plot(s)"]
    first = report.tables[0] if report.tables else None
    if first is not None:
        lines += [first.title, *report.summary, " | ".join(first.header)]
        lines += [" | ".join(row) for row in first.rows]
        lines += [f"- {c}" for c in report.caveats]
    lines += [f"{FLAG} {line}" for line in report.flagged]
    return lines


def write_comparison(a: Path, b: Path) -> str:
    """``csp report --compare A B``: the comparison page, also written to B/compare-<A>.md."""
    from cryptostream_lab.harness.compare import markdown as compare_markdown

    ra, rb = load_results(a).as_dict(), load_results(b).as_dict()
    text = compare_markdown(ra, rb, a.name or str(a), b.name or str(b))
    (b / f"compare-{a.resolve().name}.md").write_text(text)
    return text
