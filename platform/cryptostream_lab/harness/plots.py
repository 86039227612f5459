"""The report's PNG figures (matplotlib, Agg): :func:`plot_all` draws every plot the results
support into the report folder and records each on the :class:`~rendering.Report`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from cryptostream_lab.harness import stats
from cryptostream_lab.harness.analysis import (
    _kind,
    _rates,
    _role,
    _shown_trials,
    _varying,
    ceiling,
    group_fixed,
    merged_histogram,
    trials_of,
)
from cryptostream_lab.harness.rendering import (
    Report,
    fmt_rate,
)
from cryptostream_lab.harness.verdicts import scaling_verdicts

COLORS: list[Any] = [plt.get_cmap("tab10")(i) for i in range(10)]


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


def _searched(search: dict[str, Any]) -> bool:
    """Whether any trial of a search kept its time series (trimmed results have none)."""
    return any(t.get("series") for t in [*search["trials"], *(search.get("confirmations") or [])])


def plot_search(r: dict[str, Any], folder: Path) -> str | None:
    groups = [
        g
        for g in r["groups"]
        if g["repetition"] == 0 and g.get("search") and _searched(g["search"])
    ]
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
        trials = [t for t in [*search["trials"], *confirmations] if t.get("series")]
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
