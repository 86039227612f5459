"""The reliability harness's pure parts: results, report, recovery timing, gap records, memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from cryptostream.ingest.gaps import GapDecodeError, decode_gap_lenient
from cryptostream_lab.reliability.gaps import expected_trades, id_audit, summarize
from cryptostream_lab.reliability.memory import memory_verdict, slope
from cryptostream_lab.reliability.model import ScenarioResult
from cryptostream_lab.reliability.recovery import RecoveryTimer, caught_up, total_lag
from cryptostream_lab.reliability.report import (
    append_result,
    load_results,
    render_markdown,
    write_report,
)


def _gap(symbol: str, first: int, last: int, status: str, detected_at_us: int = 1) -> bytes:
    return orjson.dumps(
        {
            "v": 1,
            "symbol": symbol,
            "first_id": first,
            "last_id": last,
            "count": last - first + 1,
            "status": status,
            "cause": "stream",
            "detected_at_us": detected_at_us,
            "reported_at_us": 2,
        }
    )


def test_result_verdict_and_json_round_trip(tmp_path: Path) -> None:
    good = ScenarioResult(
        "kill-processor",
        "fast",
        {"SIGKILL processor": 3},
        1000,
        recovery_s=[2.0, 4.0, 9.0],
        lag_zero=True,
    )
    bad = ScenarioResult(
        "redis-restart",
        "full",
        records_checked=10,
        lost=2,
        lag_zero=True,
        unexpected_exits=["processor-3: 1"],
        notes="x|y",
    )
    assert good.ok and good.recovery_max_s == 9.0 and good.recovery_median_s == 4.0
    assert not bad.ok and "2 lost" in bad.verdict() and "processor-3: 1" in bad.verdict()
    assert not ScenarioResult("empty", lag_zero=True).ok  # nothing checked proves nothing
    results = tmp_path / "results.jsonl"
    append_result(results, good)
    append_result(results, bad)
    loaded = load_results(results)
    assert [r.as_json() for r in loaded] == [good.as_json(), bad.as_json()]
    md, js = write_report(loaded, tmp_path / "out")
    text = md.read_text()
    assert "1 of 2 scenario runs passed" in text
    assert (
        "| kill-processor | fast | 3 SIGKILL processor | 1000 | 0 | 0 | 0 | 0 | 9.0 / 4.0 |" in text
    )
    assert "- redis-restart[full]: x|y" in text  # notes go below the table
    doc = orjson.loads(js.read_bytes())
    assert doc["passed"] == 1 and doc["scenarios"][1]["lost"] == 2


def test_markdown_table_has_one_row_per_result() -> None:
    text = render_markdown([ScenarioResult(f"s{i}") for i in range(3)])
    rows = [line for line in text.splitlines() if line.startswith("| s") and "scenario" not in line]
    assert len(rows) == 3 and all(r.count("|") == 14 for r in rows)


def test_caught_up_and_lag() -> None:
    ends = {0: 10, 1: 0, 2: 5}
    assert not caught_up({0: 9, 2: 3}, ends) and total_lag({0: 9, 2: 3}, ends) == 1
    assert caught_up({0: 9, 2: 4}, ends) and total_lag({0: 9, 2: 4}, ends) == 0
    assert total_lag({}, ends) == 15


def test_recovery_timer_measures_each_episode_against_its_own_goal() -> None:
    timer = RecoveryTimer()
    assert not timer.observe(0.0, {})  # no episode yet
    timer.start(10.0, {0: 100})
    assert not timer.observe(11.0, {0: 50})
    timer.start(12.0, {0: 120, 1: 5})  # a second fault before recovery widens the same episode
    assert not timer.observe(13.0, {0: 119})
    assert timer.observe(15.5, {0: 200, 1: 4})  # later records do not move the goal
    assert timer.durations == [5.5] and not timer.pending
    timer.start(20.0, {0: 300})
    assert timer.observe(21.0, {0: 299}) and timer.durations == [5.5, 1.0]


def test_gap_records_contract() -> None:
    values = [
        _gap("BTCUSDT", 101, 120, "detected"),
        _gap("BTCUSDT", 101, 110, "backfilled"),
        _gap("BTCUSDT", 111, 120, "unrecoverable"),
        _gap("ETHUSDT", 5, 6, "detected"),  # never finalised
        b"not json",
        orjson.dumps({"v": 1, "symbol": "X", "first_id": 9, "last_id": 3, "status": "detected"}),
    ]
    summary = summarize(values)
    assert summary.detected == 22 and summary.backfilled == 10
    assert summary.unrecoverable_count == 10 and summary.invalid == 2
    assert summary.unrecoverable == {"BTCUSDT": [(111, 120)]}
    assert [(g.symbol, g.first_id) for g in summary.unresolved] == [("ETHUSDT", 5)]
    assert summary.excused("BTCUSDT", 115) and not summary.excused("BTCUSDT", 110)
    assert isinstance(decode_gap_lenient(_gap("AUSDT", 1, 1, "lost")), GapDecodeError)


def test_final_records_must_cover_their_own_detection_exactly_once() -> None:
    values = [
        _gap("AUSDT", 10, 19, "detected", detected_at_us=5),
        _gap("AUSDT", 10, 14, "backfilled", detected_at_us=5),
        _gap("AUSDT", 12, 12, "unrecoverable", detected_at_us=5),  # covered twice
        _gap("AUSDT", 20, 21, "backfilled", detected_at_us=5),  # outside the detected range
        _gap("AUSDT", 15, 19, "backfilled", detected_at_us=6),  # another detection's finals
        _gap("BUSDT", 1, 2, "detected", detected_at_us=7),
        _gap("BUSDT", 1, 1, "backfilled", detected_at_us=7),
        _gap("BUSDT", 2, 2, "unrecoverable", detected_at_us=7),
    ]
    summary = summarize(values)
    assert summary.invalid == 3 and len(summary.problems) == 3
    assert [(g.symbol, g.first_id) for g in summary.unresolved] == [("AUSDT", 10)]
    # missing fields, a wrong count, an unknown cause: all break the contract
    good = orjson.loads(_gap("CUSDT", 1, 2, "detected"))
    for broken in (
        {**good, "count": 3},
        {**good, "cause": "gremlins"},
        {k: v for k, v in good.items() if k != "reported_at_us"},
    ):
        assert isinstance(decode_gap_lenient(orjson.dumps(broken)), GapDecodeError)


def test_the_checker_reads_with_ingests_rules() -> None:
    """What the two copies of the codec once disagreed on: a symbol or an id outside the
    contract, and a malformed order-book break (once skipped by a substring match)."""
    good = orjson.loads(_gap("AUSDT", 1, 2, "detected"))
    depth_break = {
        "v": 1,
        "stream": "depth",
        "symbol": "AUSDT",
        "status": "depth_break",
        "cause": "depth_gap",
        "expected_id": 5,
        "got_id": 9,
        "reason": "update-id gap",
        "detected_at_us": 1,
        "reported_at_us": 2,
    }
    broken = [
        {**good, "symbol": "a-b"},
        {**good, "first_id": -1, "count": 4},
        {**good, "detected_at_us": True},
        {**depth_break, "cause": "gremlins"},
    ]
    summary = summarize([orjson.dumps(good), orjson.dumps(depth_break)])
    assert summary.invalid == 0 and summary.detected == 2
    summary = summarize([orjson.dumps(doc) for doc in broken])
    assert summary.invalid == len(broken) and summary.detected == 0
    assert "invalid symbol" in summary.problems[0] and "unknown cause" in summary.problems[3]


def test_every_upstream_problem_fails_the_scenario() -> None:
    base = {"records_checked": 10, "lag_zero": True}
    assert ScenarioResult("s", **base).ok  # type: ignore[arg-type]
    for name, value in (
        ("topic_missing", 1),
        ("topic_duplicated", 1),
        ("topic_unexpected", 1),
        ("gaps_unresolved", 1),
        ("gaps_invalid", 1),
        ("unrecovered", True),
        ("settle_timeout", True),
    ):
        result = ScenarioResult("s", **base, **{name: value})  # type: ignore[arg-type]
        assert not result.ok, name
        assert "FAILED" in result.verdict() and result.upstream_problems(), name
        assert "FAILED" in render_markdown([result])


@dataclass(frozen=True)
class _T:
    symbol: str
    trade_id: int


def test_expected_trades_exclude_only_unrecoverable_ranges() -> None:
    summary = summarize([_gap("AUSDT", 3, 4, "unrecoverable"), _gap("BUSDT", 1, 9, "backfilled")])
    sent = [_T("AUSDT", i) for i in range(1, 7)] + [_T("BUSDT", 2)]
    assert [(t.symbol, t.trade_id) for t in expected_trades(sent, summary)] == [
        ("AUSDT", 1),
        ("AUSDT", 2),
        ("AUSDT", 5),
        ("AUSDT", 6),
        ("BUSDT", 2),
    ]


def test_id_audit() -> None:
    expected = {"A": range(1, 6), "B": [7]}
    seen = [("A", 1), ("A", 2), ("A", 2), ("A", 4), ("A", 5), ("B", 7), ("B", 8)]
    assert id_audit(expected, seen) == (1, 1, 1)


@given(st.floats(-1e6, 1e6), st.floats(-1e3, 1e3))
def test_slope_of_a_line(a: float, b: float) -> None:
    points = [(float(x), a * x + b) for x in range(10)]
    assert abs(slope(points) - a) <= 1e-6 * max(1.0, abs(a))


def test_memory_verdict_flags_growth_not_warmup() -> None:
    mb = 2**20
    # start-up allocation, then flat
    flat = [(t, (50 + min(t, 30)) * mb) for t in range(0, 600, 10)]
    assert not memory_verdict("p", flat).growing
    leak = [(t, (50 + t / 10) * mb) for t in range(0, 600, 10)]  # 360 MB/h on 50 MB
    verdict = memory_verdict("p", leak)
    assert verdict.growing and 300 < verdict.slope_mb_per_hour < 400
    assert not memory_verdict("p", []).growing
