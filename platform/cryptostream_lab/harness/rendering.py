"""A report in words and tables: :func:`build` (results.json -> :class:`Report`), and the
Report as Markdown (:func:`markdown`) and HTML (:func:`to_html`). Sans-I/O, no plotting.

Repeated figures show median and spread; a spread above 10 % is flagged in the tables and listed
under "Flagged".
"""

from __future__ import annotations

import html
import itertools
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptostream_lab.harness import stats
from cryptostream_lab.harness.analysis import (
    _summary,
    ceiling,
    group_fixed,
    processor_cpu,
    trials_of,
)
from cryptostream_lab.harness.verdicts import CountVerdict, efficiency, scaling_verdicts

FLAG = "⚠"


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
