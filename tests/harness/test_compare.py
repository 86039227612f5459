"""``csp report --compare A B``: figures side by side, ratios, and changes only beyond spread."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from cryptostream.cli import app
from cryptostream_lab.harness import compare

FIXTURE = Path(__file__).parent / "data" / "scaling-3-results.json"


def _load() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(FIXTURE.read_bytes())
    return data


def _scale_capacities(results: dict[str, Any], factor: float) -> dict[str, Any]:
    out = copy.deepcopy(results)
    for g in out["groups"]:
        search = g.get("search") or {}
        for t in [*search.get("trials", []), search.get("capacity")]:
            if t:
                t["rate"] *= factor
                t["produced_rate"] *= factor
    return out


def _rows(a: dict[str, Any], b: dict[str, Any]) -> dict[str, compare.Row]:
    return {row.name: row for row in compare.compare(a, b)}


def test_a_doubled_capacity_is_beyond_spread_and_a_small_change_is_not() -> None:
    a = _load()
    doubled = _rows(a, _scale_capacities(a, 2.0))["capacity /s, 2 processor(s)"]
    assert doubled.ratio == pytest.approx(2.0)
    assert doubled.verdict == "B better, beyond spread"
    slight = _rows(a, _scale_capacities(a, 1.03))["capacity /s, 2 processor(s)"]
    assert slight.ratio == pytest.approx(1.03)
    assert slight.verdict == "within spread"  # inside the search's 10 % resolution
    halved = _rows(a, _scale_capacities(a, 0.5))["capacity /s, 2 processor(s)"]
    assert halved.verdict == "B worse, beyond spread"


def test_latency_spread_decides_and_lower_latency_is_better() -> None:
    a = _load()
    b = copy.deepcopy(a)
    for g in b["groups"]:
        for t in g["trials"]:
            if t["kind"] == "fixed" and t["processors"] == 4:
                t["latency_ms"]["p99"] /= 3  # 15.4-16.4 ms -> ~5 ms, far beyond its spread
    row = _rows(a, b)["p99 ms, 4 processor(s), 500 symbols, 5,000/s"]
    assert row.ratio == pytest.approx(1 / 3, rel=1e-6)
    assert row.verdict == "B better, beyond spread"


def test_only_runs_of_one_experiment_are_compared(tmp_path: Path) -> None:
    a = _load()
    b = copy.deepcopy(a)
    b["experiment"]["name"] = "rate-sweep"
    with pytest.raises(ValueError, match="one experiment"):
        compare.markdown(a, b, "A", "B")
    for name, data in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_bytes(orjson.dumps(data))
    result = CliRunner().invoke(
        app, ["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]
    )
    assert result.exit_code == 2 and "one experiment" in result.output


def test_csp_report_compare_writes_the_page(tmp_path: Path) -> None:
    a = _load()
    for name, data in (("a", a), ("b", _scale_capacities(a, 2.0))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_bytes(orjson.dumps(data))
    result = CliRunner().invoke(
        app, ["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "b" / "compare-a.md").read_text()
    assert "| capacity /s, 2 processor(s) | 80,000 (80,000 to 80,000) | 160,000" in page
    assert "B better, beyond spread" in page and "commit 45f32947b8d8 (dirty)" in page
    assert CliRunner().invoke(app, ["report", "--compare", str(tmp_path / "a")]).exit_code == 2
