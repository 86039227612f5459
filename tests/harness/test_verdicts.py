"""Every verdict in report.md agrees with results.json.

The checker below reads the report's tables as text and recomputes each claim from the raw
trials in results.json on its own (not through ``harness.verdicts``): a capacity must be a rate
that was tried and sustained in a confirmation trial, below every failed rate of its group; a
"lowest failed" figure must be a tried rate that failed; '>=' only where nothing above failed;
the efficiencies follow from the capacities. It runs on reports generated from several results
files (two of the first harness version, whose reference report contradicted its own data, and
one of the current search), and it must reject that old reference report.
"""

from __future__ import annotations

import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import orjson
import pytest

from cryptostream_lab.harness import rendering

DATA = Path(__file__).parent / "data"
OLD_RESULTS = DATA / "scaling-3-results.json"  # reports/2026-11-25-scaling-3, series trimmed
OLD_REPORT = DATA / "scaling-3-report.md"  # what the first report generator made of it
NEW_RESULTS = DATA / "scaling-budgeted-results.json"  # reports/2026-12-01-scaling, trimmed


class Disagreement(AssertionError):
    pass


def number(text: str) -> float:
    match = re.search(r"\d[\d,]*(?:\.\d+)?", text)
    if match is None:
        raise Disagreement(f"no number in {text!r}")
    return float(match.group().replace(",", ""))


def same(shown: float, value: float) -> bool:
    """Equal at the report's precision (rates are shown as whole numbers)."""
    return f"{shown:,.0f}" == f"{value:,.0f}"


def numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*(?:\.\d+)?", text)]


def table(md: str, title_start: str) -> list[dict[str, str]]:
    """The rows of the markdown table under the first heading starting with ``title_start``."""
    lines = md.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"## {title_start}")), None)
    if start is None:
        return []
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            block.append(line)
    rows = block
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))
        for row in rows[2:]
    ]


def raw_truth(results: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Per processor count, per repetition: what the raw trials say."""
    out: dict[int, list[dict[str, Any]]] = {}
    for g in results["groups"]:
        search = g.get("search")
        if not search:
            continue
        trials = list(search["trials"])
        confirmations = search.get("confirmations")
        if confirmations is None:  # the first version kept its one confirmation as "capacity"
            confirmations = [search["capacity"]] if search.get("capacity") else []
        everything = trials + confirmations
        failed = [t["rate"] for t in everything if not t["sustained"]]
        limited = [
            t["rate"] for t in trials if t["sustained"] and t["produced_rate"] < 0.9 * t["rate"]
        ]
        ceiling = min(failed + limited, default=float("inf"))
        confirmed = [
            t["rate"]
            for t in confirmations
            if t["sustained"] and t["produced_rate"] >= 0.9 * t["rate"] and t["rate"] < ceiling
        ]
        out.setdefault(g["processors"], []).append(
            {
                "capacity": max(confirmed) if confirmed else None,
                "failed": failed,
                "lowest_failed": min(failed) if failed else None,
                "tried": {t["rate"] for t in everything},
                "confirmations": [(t["rate"], t["sustained"]) for t in confirmations],
            }
        )
    return out


def check(md: str, results: dict[str, Any]) -> None:
    """Raise Disagreement at the first claim of ``md`` that results.json does not support."""
    truth = raw_truth(results)
    summary = table(md, "Summary")
    legacy = table(md, "Sustainable rate per processor count")
    rows = summary or legacy
    if not rows:
        raise Disagreement("no capacity table in the report")
    capacities: dict[int, float] = {}
    for row in rows:
        n = int(row["processors"])
        reps = truth[n]
        cap_cell = row.get("capacity /s") or row["max sustained /s"]
        confirmed = [r["capacity"] for r in reps if r["capacity"] is not None]
        if "not confirmed" in cap_cell:
            if confirmed:
                raise Disagreement(f"{n}: says not confirmed, but {confirmed} were")
        else:
            claimed = number(cap_cell.replace("≥", "").replace(">=", ""))
            if not confirmed:
                raise Disagreement(f"{n}: claims {claimed:,.0f}/s, no confirmation sustained")
            if not same(claimed, statistics.median(confirmed)):
                raise Disagreement(f"{n}: claims {claimed:,.0f}/s, confirmed {confirmed}")
            if len(confirmed) == 1 and not any(same(claimed, t) for r in reps for t in r["tried"]):
                raise Disagreement(f"{n}: {claimed:,.0f}/s was never tried")
            lower = "≥" in cap_cell or ">=" in cap_cell
            # '>=' when some confirmed repetition had no failure above its capacity.
            open_ended = any(
                not any(f > c for f in r["failed"])
                for r in reps
                if (c := r["capacity"]) is not None
            )
            if lower != open_ended:
                raise Disagreement(f"{n}: '≥' shown: {lower}; nothing failed above: {open_ended}")
            capacities[n] = claimed
        failed_cell = row.get("lowest failed /s (tried)") or row["lowest failed /s"]
        lowest = [r["lowest_failed"] for r in reps if r["lowest_failed"] is not None]
        if failed_cell in ("none failed", "-"):
            if lowest:
                raise Disagreement(f"{n}: says nothing failed, but {lowest} did")
        else:
            shown = numbers(failed_cell)
            if not lowest:
                raise Disagreement(f"{n}: shows lowest failed {shown}, nothing failed")
            if not same(shown[0], statistics.median(lowest)):
                raise Disagreement(
                    f"{n}: lowest failed {shown[0]:,.0f} is not the median of "
                    f"the tried rates {lowest}"
                )
            for value in shown[1:]:
                if not any(same(value, x) for x in lowest):
                    raise Disagreement(f"{n}: {value:,.0f} is not a tried failed rate")
    if summary:
        one = capacities.get(1)
        for row in summary:
            n = int(row["processors"])
            if one and n in capacities:
                want = capacities[n] / (n * one)
                if abs(float(row["efficiency"]) - want) > 0.005:
                    raise Disagreement(f"{n}: efficiency {row['efficiency']}, data {want:.2f}")
            elif row["efficiency"] != "-":
                raise Disagreement(f"{n}: an efficiency without two capacities")
        words = md.split("## Summary", 1)[1].split("|", 1)[0]
        for n, cap in capacities.items():
            if f"{cap:,.0f}/s with {n}" not in words:
                raise Disagreement(f"the summary's words miss {cap:,.0f}/s with {n}")
    for row in table(md, "Sustainable-rate search per repetition"):
        n, rep = int(row["processors"]), int(row["repetition"]) - 1
        r = truth[n][rep]
        cell = row["capacity /s"]
        got = None if "not confirmed" in cell else number(cell.replace("≥", ""))
        if (got is None) != (r["capacity"] is None) or (
            got is not None and not same(got, r["capacity"])
        ):
            raise Disagreement(f"{n} rep {rep + 1}: capacity {cell}, data {r['capacity']}")
        marks = re.findall(r"([\d,.]+) ([✓✗])", row["confirmations"])
        if [(a, b == "✓") for a, b in marks] != [
            (f"{rate:,.0f}", ok) for rate, ok in r["confirmations"]
        ]:
            raise Disagreement(f"{n} rep {rep + 1}: confirmations {row['confirmations']}")


def _results(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


@pytest.mark.parametrize(
    "path",
    [OLD_RESULTS, DATA / "results.json", NEW_RESULTS],
    ids=["scaling-3", "fixture-2x2", "budgeted"],
)
def test_every_verdict_in_report_md_agrees_with_results_json(path: Path, tmp_path: Path) -> None:
    if not path.exists():
        pytest.fail(f"missing fixture {path}")
    shutil.copy(path, tmp_path / "results.json")
    results = _results(path)
    md = rendering.markdown(rendering.build(results))
    check(md, results)


def test_the_old_reference_report_contradicts_its_data() -> None:
    """The checker can fail: the first generator's report claimed a capacity its data refutes."""
    with pytest.raises(Disagreement):
        check(OLD_REPORT.read_text(), _results(OLD_RESULTS))


def test_a_failed_confirmation_is_never_reported_as_capacity() -> None:
    results = _results(OLD_RESULTS)
    md = rendering.markdown(rendering.build(results))
    rows = {row["processors"]: row for row in table(md, "Summary")}
    # Repetition 1 of 1 processor: search sustained 80,000/s, its confirmation failed there.
    assert "80,000" not in rows["1"]["capacity /s"]
    assert "1 of 2 confirmed" in rows["1"]["capacity /s"]
    assert "confirmation failed at 80,000/s" in md


def test_the_report_follows_the_data_when_a_verdict_flips() -> None:
    results = _results(NEW_RESULTS)
    group = next(g for g in results["groups"] if g.get("search", {}).get("capacity"))
    capacity = group["search"]["capacity"]
    for t in group["search"]["confirmations"]:
        if t["rate"] == capacity["rate"]:
            t["sustained"] = False  # now that confirmation failed
    md = rendering.markdown(rendering.build(results))
    check(md, results)
    rows = {
        (r["processors"], r["repetition"]): r
        for r in table(md, "Sustainable-rate search per repetition")
    }
    row = rows[(str(group["processors"]), str(group["repetition"] + 1))]
    assert f"{capacity['rate']:,.0f} ✗" in row["confirmations"]
    assert row["capacity /s"] != f"{capacity['rate']:,.0f}"


REFERENCE = sorted(
    p.parent
    for p in (Path(__file__).resolve().parents[2] / "reports").glob("*/report.md")
    if (p.parent / "results.json").exists()
)


@pytest.mark.parametrize("folder", REFERENCE, ids=[p.name for p in REFERENCE])
def test_the_kept_reports_agree_with_their_results(folder: Path) -> None:
    """The report.md files as they are in reports/ (the reference report), not regenerated."""
    check((folder / "report.md").read_text(), _results(folder / "results.json"))
