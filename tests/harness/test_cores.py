"""Pure cores of the harness: experiment files, open-model schedule, search, statistics."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from cryptostream_lab.harness import stats
from cryptostream_lab.harness.model import load_experiment, parse_experiment, plan_fixed
from cryptostream_lab.harness.schedule import (
    OpenSchedule,
    SyntheticTrades,
    VisibilityTracker,
    run_open_loop,
    symbol_names,
    symbol_sequence,
)
from cryptostream_lab.harness.search import lag_verdict, slope

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# --- experiment files ---------------------------------------------------------------------------


def test_every_shipped_experiment_parses() -> None:
    files = sorted(
        (ROOT / "platform" / "cryptostream_lab" / "harness" / "experiments").glob("*.toml")
    )
    assert {f.stem for f in files} >= {
        "scaling",
        "rate-sweep",
        "symbols-sweep",
        "query-load",
        "replay",
        "tiny",
    }
    for path in files:
        experiment, text = load_experiment(path)
        assert experiment.name == path.stem
        assert text == path.read_text()


def test_experiment_by_name_and_unknown_name() -> None:
    experiment, _ = load_experiment("tiny")
    assert experiment.name == "tiny"
    with pytest.raises(FileNotFoundError, match=r"available: .*scaling"):
        load_experiment("no-such-experiment")


def test_trials_expand_symbols_times_rates() -> None:
    experiment = parse_experiment(
        """
        [workload]
        symbols = [10, 100]
        rates = [1000, 2000, 4000]
        duration_s = 5
        warmup_s = 1
        [topology]
        processors = [1, 2]
        """
    )
    trials = plan_fixed(experiment, repetition=0, processors=2)
    assert [(t.symbols, t.rate) for t in trials] == [
        (10, 1000),
        (10, 2000),
        (10, 4000),
        (100, 1000),
        (100, 2000),
        (100, 4000),
    ]
    assert {t.processors for t in trials} == {2}


@pytest.mark.parametrize(
    "body",
    [
        "[workload]\nsymbols = 10\n",  # no rate
        "[workload]\nrate = 10\nduration_s = 2\nwarmup_s = 3\n",  # warm-up longer than the run
        "[workload]\nrate = 10\nbogus = 1\n",  # typo'd key
        '[workload]\nsource = "replay"\npath = "direct"\n',  # replay needs the full path
    ],
)
def test_invalid_experiments_are_refused(body: str) -> None:
    with pytest.raises(ValidationError):
        parse_experiment(body)


# --- open-model schedule ------------------------------------------------------------------------


def test_schedule_due_counts() -> None:
    schedule = OpenSchedule(rate=100, count=50, start=10.0)
    assert schedule.due(9.99) == 0
    assert schedule.due(10.0) == 1
    assert schedule.due(10.095) == 10
    assert schedule.due(100.0) == 50
    assert schedule.intended(20) == pytest.approx(10.2)


def test_open_loop_sends_on_schedule_with_a_fake_clock() -> None:
    clock = FakeClock()
    sent_at: list[float] = []
    schedule = OpenSchedule(rate=1000, count=500, start=0.0)
    result = run_open_loop(schedule, lambda i: sent_at.append(clock()), clock, clock.sleep)
    assert result.sent == 500
    assert len(sent_at) == 500
    # Nobody is sent early, and with an instant sender nobody is later than one sleep quantum.
    for i, t in enumerate(sent_at):
        assert schedule.intended(i) <= t + 1e-9
        assert t - schedule.intended(i) <= 0.005 + 1e-9


def test_a_stall_does_not_move_later_send_times() -> None:
    """No coordinated omission: after a 200 ms stall every overdue record is sent at once, and
    its lateness is measured against its own intended time."""
    clock = FakeClock()
    sent_at: list[float] = []

    def send(i: int) -> None:
        sent_at.append(clock())
        if i == 100:
            clock.now += 0.2  # the send blocks

    schedule = OpenSchedule(rate=1000, count=400, start=0.0)
    result = run_open_loop(schedule, send, clock, clock.sleep)
    assert result.sent == 400
    # Records 101..300 fell due during the stall: all sent right after it, none dropped.
    after = sent_at[101]
    assert after == pytest.approx(0.3, abs=0.002)
    assert all(t == after for t in sent_at[101:300])
    assert result.max_behind_s == pytest.approx(0.2, abs=0.002)
    assert result.behind_over_10ms >= 180
    # The tail is back on schedule: the load's total duration is not stretched by the stall.
    assert sent_at[-1] == pytest.approx(schedule.intended(399), abs=0.006)


def test_open_loop_timing_on_the_real_clock() -> None:
    """2,000 sends at 2,000/s take about a second, each within a few ms of its intended time."""
    lateness: list[float] = []
    start = time.monotonic() + 0.05
    schedule = OpenSchedule(rate=2000, count=2000, start=start)
    run_open_loop(
        schedule,
        lambda i: lateness.append(time.monotonic() - schedule.intended(i)),
        time.monotonic,
        time.sleep,
    )
    elapsed = time.monotonic() - start
    assert 0.99 <= elapsed < 1.3
    assert min(lateness) >= 0
    assert sorted(lateness)[len(lateness) // 2] < 0.01  # median send within 10 ms of schedule


def test_synthetic_trades_are_seeded_with_consecutive_ids() -> None:
    names = symbol_names(20)
    assert names[0] == "SYM0000USDT"

    def make(seed: int) -> list[tuple[str, int, str, int]]:
        seq = symbol_sequence(1000, 20, 1.2, seed)
        gen = SyntheticTrades(names, seq, rate=500, seed=seed, id_base=7)
        return [
            (t.symbol, t.trade_id, t.price, t.trade_time)
            for t in (gen.trade(i, 0) for i in range(1000))
        ]

    first, again, other = make(3), make(3), make(4)
    assert first == again
    assert first != other
    by_symbol: dict[str, list[int]] = {}
    for symbol, trade_id, _, _ in first:
        by_symbol.setdefault(symbol, []).append(trade_id)
    for ids in by_symbol.values():
        assert ids == list(range(8, 8 + len(ids)))
    # Zipf: the first symbol is the busiest.
    assert max(by_symbol, key=lambda s: len(by_symbol[s])) == "SYM0000USDT"
    assert first[-1][3] - first[0][3] == pytest.approx(999 * 1000 / 500, abs=1)


def test_visibility_tracker_measures_each_record_from_its_intended_time() -> None:
    names = ["AAUSDT", "BBUSDT"]
    from array import array

    sequence = array("i", [0, 1, 0, 0, 1])  # A1 B1 A2 A3 B2
    schedule = OpenSchedule(rate=10, count=5, start=100.0)  # due at 100.0, 100.1, ... 100.4
    tracker = VisibilityTracker(names, sequence, schedule, id_base=0)

    def lat(symbol: str, trade_id: int, now: float) -> list[float]:
        return [latency for _, latency in tracker.visible(symbol, trade_id, now)]

    # A's update with trade id 2 at t=100.5 covers A1 (due 100.0) and A2 (due 100.2).
    assert lat("AAUSDT", 2, 100.5) == pytest.approx([0.5, 0.3])
    assert lat("AAUSDT", 2, 101.0) == []  # nothing new
    assert list(tracker.visible("AAUSDT", 3, 100.6)) == [pytest.approx((100.3, 0.3))]
    assert lat("BBUSDT", 2, 100.4) == pytest.approx([0.3, 0.0])
    assert lat("ZZUSDT", 1, 100.4) == []
    assert tracker.covered == 5


# --- sustainable-rate search --------------------------------------------------------------------


def test_slope_and_lag_verdict() -> None:
    flat = [(t, 100.0 + (t % 2) * 30) for t in range(10)]
    growing = [(t, 500.0 * t) for t in range(10)]
    assert slope(growing) == pytest.approx(500)
    assert lag_verdict(flat, rate=5000).sustained
    verdict = lag_verdict(growing, rate=5000)
    assert not verdict.sustained
    assert verdict.threshold == 250
    assert slope([(1, 5)]) == 0


# The search itself (doubling, bisection, confirmation) is tested on a synthetic lag model in
# test_search.py.


# --- statistics ---------------------------------------------------------------------------------


def test_summary_median_spread_and_flag() -> None:
    tight = stats.summarize([100, 104, 98])
    assert tight.median == 100 and tight.spread == pytest.approx(0.06)
    assert not tight.flagged
    wide = stats.summarize([100, 125, 95])
    assert wide.flagged
    assert stats.summarize([7]).spread == 0
    with pytest.raises(ValueError):
        stats.summarize([])


def test_histogram_percentiles_and_round_trip() -> None:
    histogram = stats.new_histogram()
    for ms in range(1, 1001):
        stats.record_seconds(histogram, ms / 1000)
    summary = stats.percentile_summary(histogram)
    assert summary["count"] == 1000
    assert summary["p50"] == pytest.approx(500, rel=0.01)
    assert summary["p99.9"] == pytest.approx(999, rel=0.01)
    assert summary["max"] == pytest.approx(1000, rel=0.01)
    again = stats.percentile_summary(stats.decode(stats.encode(histogram)))
    assert again == summary
    cdf = stats.cdf_points(histogram)
    assert cdf[-1][1] == 1.0
    assert all(a[0] < b[0] and a[1] <= b[1] for a, b in itertools.pairwise(cdf))


def test_experiments_and_the_locust_file_ship_in_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from any directory (no checkout needed) and listed as package data in pyproject."""
    import tomllib

    from cryptostream_lab.harness import model, runner

    monkeypatch.chdir(tmp_path)
    shipped = model.shipped_experiments()
    assert {"scaling", "query-load", "tiny"} <= set(shipped)
    assert "0.1-core CPU budgets" in shipped["scaling"]
    experiment, text = load_experiment("scaling")
    assert experiment.budgets.processor_cpu == 0.1 and "[budgets]" in text
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["cryptostream_lab"]
    assert "harness/experiments/*.toml" in package_data
    assert (Path(runner.__file__).with_name("locustfile.py")).is_file()
