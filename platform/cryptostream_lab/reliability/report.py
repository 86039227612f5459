"""The reliability report: one row per scenario run, as a Markdown table and as JSON.

Scenario tests append one JSON line per result to a results file; the report is rendered from
those lines, so a run interrupted half-way still reports what finished.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from cryptostream_lab.reliability.model import ScenarioResult

COLUMNS = (
    "scenario",
    "variant",
    "faults injected",
    "records checked",
    "lost",
    "duplicated",
    "wrong",
    "gaps (unrecoverable)",
    "recovery max / median (s)",
    "lag 0",
    "other exits",
    "upstream checks",
    "verdict",
)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def faults_text(faults: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in faults.items()) or "-"


def row(result: ScenarioResult) -> list[str]:
    return [
        result.scenario,
        result.variant,
        faults_text(result.faults),
        str(result.records_checked),
        str(result.lost),
        str(result.duplicated),
        str(result.wrong),
        str(result.gaps_reported),
        f"{_seconds(result.recovery_max_s)} / {_seconds(result.recovery_median_s)}",
        "yes" if result.lag_zero else "no",
        ", ".join(result.unexpected_exits) or "none",
        "; ".join(result.upstream_problems()) or "-",
        "OK" if result.ok else "FAILED",
    ]


def render_markdown(results: Iterable[ScenarioResult], title: str = "Reliability report") -> str:
    results = list(results)
    cells = [list(COLUMNS), *(row(r) for r in results)]
    lines = [f"# {title}", ""]
    passed = sum(r.ok for r in results)
    lines.append(f"{passed} of {len(results)} scenario runs passed.")
    lines.append("")
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells[0]) + " |")
    lines.append("|" + "|".join(" --- " for _ in COLUMNS) + "|")
    for cells_row in cells[1:]:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells_row) + " |")
    notes = [(r.scenario, r.variant, r.notes) for r in results if r.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {s}[{v}]: {n}" for s, v, n in notes]
    lines += [
        "",
        "lost / duplicated: trades missing from or applied twice to the Redis views (running "
        "totals are not idempotent, so each shows up as a count difference); wrong: view entries "
        "(latest price, totals, 1m candles) that differ from the ones recomputed from the truth; "
        "recovery: from fault injection until every record that was in Kafka at that moment was "
        "applied to Redis; upstream checks (scenarios with ingest): raw.trades against the "
        "simulator's truth (missing, duplicated, unexpected ids), gap records never resolved or "
        "breaking the contract, a fault episode that never recovered, views that never settled.",
    ]
    return "\n".join(lines) + "\n"


def report_json(results: Iterable[ScenarioResult], **meta: Any) -> dict[str, Any]:
    results = list(results)
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **meta,
        "passed": sum(r.ok for r in results),
        "total": len(results),
        "scenarios": [r.as_json() for r in results],
    }


def append_result(path: Path, result: ScenarioResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        fh.write(orjson.dumps(result.as_json()) + b"\n")


def load_results(path: Path) -> list[ScenarioResult]:
    if not path.exists():
        return []
    return [
        ScenarioResult.from_json(orjson.loads(line))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]


def write_report(results: list[ScenarioResult], folder: Path, **meta: Any) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / "report.md", folder / "report.json"
    md.write_text(render_markdown(results))
    js.write_bytes(orjson.dumps(report_json(results, **meta), option=orjson.OPT_INDENT_2))
    return md, js


def main(argv: list[str] | None = None) -> int:
    """``python -m cryptostream_lab.reliability.report FOLDER``: render FOLDER/results.jsonl."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "reports/reliability")
    results = load_results(folder / "results.jsonl")
    md, js = write_report(results, folder)
    print(md.read_text())
    print(f"written: {md} {js}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
