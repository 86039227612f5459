"""The report generator on a stored results.json (a real 2 x 2 run with ceilings and search)."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from cryptostream.cli import app
from cryptostream_lab.harness import rendering, report

FIXTURE = Path(__file__).parent / "data" / "results.json"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(FIXTURE, tmp_path / "results.json")
    return tmp_path


def test_report_writes_plots_markdown_and_html(folder: Path) -> None:
    lines = report.write_report(folder)
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == [
        "lag_over_time.png",
        "latency_cdf.png",
        "latency_percentiles.png",
        "resources.png",
        "search_lag.png",
        "throughput_over_time.png",
        "throughput_vs_processors.png",
    ]
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # a real figure, not an empty canvas
    md = (folder / "report.md").read_text()
    html = (folder / "report.html").read_text()
    for name in pngs:
        assert f"({name})" in md
        assert f"src='{name}'" in html
    assert "Ceilings of this machine" in md and "ProducerPerformance" in md
    assert "all checksums must be equal: yes, identical" in md
    assert "report.md" in lines[0]


def test_summary_table_has_medians_spreads_and_flags(folder: Path) -> None:
    results = orjson.loads((folder / "results.json").read_bytes())
    built = rendering.build(results)
    titles = {t.title.split(" (")[0]: t for t in built.tables}
    assert built.tables[0].title == "Summary"  # the summary comes first
    fixed = titles["Fixed-rate trials"]
    search = titles["Sustainable-rate search per repetition"]
    assert fixed.header[:4] == ["processors", "symbols", "target /s", "processed /s"]
    assert [row[0] for row in fixed.rows] == ["1", "2"]
    assert all("±" in row[3] for row in fixed.rows)  # 2 repetitions: median and spread
    # Every flagged figure is marked in its table and listed with its min and max.
    marked = sum(cell.count(rendering.FLAG) for t in built.tables for row in t.rows for cell in row)
    assert marked == len(built.flagged)
    assert all("min" in line and "max" in line for line in built.flagged)
    assert search.header[2] == "capacity /s"
    assert search.rows[0][5].endswith("%")  # as a fraction of the Kafka produce ceiling


def test_flagging_follows_the_10_percent_rule(folder: Path) -> None:
    results = orjson.loads((folder / "results.json").read_bytes())
    trials = [t for g in results["groups"] for t in g["trials"] if t["processors"] == 1]
    trials[0]["processed_rate"], trials[1]["processed_rate"] = 1000.0, 1500.0
    built = rendering.build(results)
    assert any("1 processor(s), 50 symbols, 2,000/s: processed rate" in f for f in built.flagged)
    trials[1]["processed_rate"] = 1050.0  # 5 % apart: not flagged
    built = rendering.build(results)
    assert not any("processed rate" in f for f in built.flagged)


def test_mismatching_checksums_are_called_out(folder: Path) -> None:
    results = orjson.loads((folder / "results.json").read_bytes())
    results["groups"][1]["checksum"] = "0" * 64
    md = rendering.markdown(rendering.build(results))
    assert "NO: 2 distinct" in md


def test_csp_report_command(folder: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "report.html").exists()
    missing = CliRunner().invoke(app, ["report", str(folder / "nowhere")])
    assert missing.exit_code == 2


@pytest.mark.parametrize("name", ["scaling-3-results.json", "scaling-budgeted-results.json"])
def test_results_without_time_series_still_render(tmp_path: Path, name: str) -> None:
    """Trimmed results (the series dropped to keep fixtures small) render their tables and the
    plots that need no series, and skip the time-series plots instead of a KeyError."""
    shutil.copy(FIXTURE.parent / name, tmp_path / "results.json")
    report.write_report(tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "throughput_vs_processors.png" in pngs
    assert not {"lag_over_time.png", "search_lag.png", "throughput_over_time.png"} & set(pngs)
    md = (tmp_path / "report.md").read_text()
    assert all(f"({png})" in md for png in pngs)
    assert "lag_over_time.png" not in md
