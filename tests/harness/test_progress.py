"""What a long run shows while it runs (harness/progress.py)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from cryptostream_lab.harness.progress import duration_text, eta_s, locust_live, trial_status, wrap


def test_eta_extrapolates_the_pace_of_the_trials_done() -> None:
    assert eta_s(0.0, 0, 12) is None
    assert eta_s(120.0, 2, 12) == 600.0
    assert eta_s(500.0, 12, 12) == 0.0
    assert trial_status(0, 12, 3.0) == "trial 1 of 12, ETA ?"
    assert trial_status(2, 12, 120.0) == "trial 3 of 12, ETA 10m00s"
    assert [duration_text(s) for s in (44.6, 250, 3725)] == ["45s", "4m10s", "1h02m"]


@given(st.lists(st.text(alphabet="abc ,/", min_size=1, max_size=150), max_size=20))
def test_wrapped_lines_fit_100_columns_and_keep_every_short_part(parts: list[str]) -> None:
    lines = wrap(parts)
    assert all(len(line) <= 100 for line in lines)
    text = "\n".join(lines)
    for part in parts:
        if len(part) <= 96:
            assert part in text


def test_locust_live_reads_the_newest_aggregated_row(tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    assert locust_live(prefix) is None
    Path(f"{prefix}_stats_history.csv").write_text(
        "Timestamp,User Count,Type,Name,Requests/s,Failures/s\n"
        "1,10,,Aggregated,900.5,0\n"
        "2,64,GET,/price/[symbol],1200,0\n"
        "2,64,,Aggregated,1234.4,1.2\n"
    )
    assert locust_live(prefix) == "locust 1,234 req/s, 1 failures/s, 64 users"
