"""The sustainable-rate search against a synthetic lag model (no servers).

The model is a processor group with a true long-run capacity; a trial at a rate yields the lag
samples it would (growing by the excess over what is processed), and the real verdict code
(``lag_verdict``) judges them, as the runner does. The search must find a rate that was tried,
sustained and confirmed, within the resolution, and a failed confirmation must never end up as
the capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream_lab.harness.search import RateSearch, Tried, lag_verdict

WARMUP_S = 2.0
SEARCH_S = 8.0
CONFIRM_S = 30.0
SAMPLE_S = 0.5


@dataclass(frozen=True)
class LagModel:
    """Processes ``capacity`` records/s in the long run, ``burst`` records/s for its first
    ``burst_s`` seconds (a cache that fills, CFS burst credit, a GC that has not run yet): short
    trials look better than the truth, as on real machines."""

    capacity: float
    burst: float | None = None
    burst_s: float = 0.0

    def lag_points(self, rate: float, duration_s: float) -> list[tuple[float, float]]:
        points, lag, t = [], 0.0, 0.0
        while t < duration_s - 1e-9:
            t += SAMPLE_S
            served = self.burst if self.burst is not None and t <= self.burst_s else self.capacity
            lag = max(0.0, lag + (rate - served) * SAMPLE_S)
            wobble = 40.0 * math.sin(t * 3.1)  # sampling noise, well under the threshold
            if t >= WARMUP_S:
                points.append((t, max(0.0, lag + wobble + 200)))
        return points

    def trial(self, rate: float, duration_s: float) -> tuple[bool, float]:
        """The verdict, and the processed rate (offered minus lag growth), as the runner has."""
        verdict = lag_verdict(self.lag_points(rate, duration_s), rate)
        return verdict.sustained, rate - max(0.0, verdict.slope)


def run(search: RateSearch, model: LagModel) -> RateSearch:
    while (step := search.next_step()) is not None:
        duration = CONFIRM_S if step.confirm else SEARCH_S
        sustained, processed = model.trial(step.rate, duration)
        search.record(step.rate, sustained, confirm=step.confirm, processed=processed)
    return search


def confirmed(search: RateSearch) -> list[Tried]:
    return [t for t in search.trials if t.confirm and t.outcome == "sustained"]


def test_doubling_then_bisection_converges_to_the_resolution() -> None:
    search = run(
        RateSearch(start=2000, maximum=1e6, max_trials=12, resolution=0.1),
        LagModel(capacity=11_000),
    )
    rates = [t.rate for t in search.trials]
    assert rates[:5] == [2000, 4000, 8000, 16000, 12000]  # doubles, then bisects 8k..16k
    assert search.capacity is not None and search.upper is not None
    assert search.capacity <= 11_000 < search.upper
    assert search.upper / search.capacity - 1 <= 0.1  # resolved, not "somewhere in [8k, 16k)"
    assert search.resolved and not search.lower_bound
    # The capacity is a tried search rate, sustained, then confirmed by the last trial.
    assert search.trials[-1] == Tried(search.capacity, "sustained", confirm=True)
    assert Tried(search.capacity, "sustained") in search.trials


def test_a_failed_confirmation_sends_the_search_below_it() -> None:
    # Short search trials see 12,500/s; the long confirmation sees the true 10,000/s.
    model = LagModel(capacity=10_000, burst=12_500, burst_s=SEARCH_S)
    search = run(
        RateSearch(start=2500, maximum=1e6, max_trials=12, resolution=0.05, max_confirmations=4),
        model,
    )
    failed_confirmations = [t.rate for t in search.trials if t.confirm and t.outcome == "failed"]
    assert failed_confirmations, "the scenario must exercise a failed confirmation"
    assert search.capacity is not None
    assert search.capacity not in failed_confirmations
    assert search.capacity < min(failed_confirmations)
    # The long-run truth (within the verdict's 5 % slope tolerance), not the 12,500/s burst.
    assert search.capacity <= model.capacity / 0.95
    assert confirmed(search) == [Tried(search.capacity, "sustained", confirm=True)]
    # Lowest failed is a tried rate (the refuted confirmation counts as failed).
    assert search.failed in {t.rate for t in search.trials}
    assert search.failed == min(failed_confirmations)


def test_no_capacity_when_every_confirmation_fails() -> None:
    # Search trials always look fine below 50k, confirmations always fail: nothing confirmed.
    model = LagModel(capacity=100, burst=50_000, burst_s=SEARCH_S)
    search = run(RateSearch(start=4000, maximum=1e6, max_trials=6, max_confirmations=2), model)
    assert search.capacity is None
    assert search.confirmations == 2
    assert not confirmed(search)


def test_limited_trials_cap_the_search_and_make_a_lower_bound() -> None:
    search = RateSearch(start=10_000, maximum=1e6, max_trials=6, resolution=0.1)
    while (step := search.next_step()) is not None:
        if step.confirm:
            search.record(step.rate, "sustained", confirm=True)
        else:  # the generator cannot deliver 40k/s here; the pipeline keeps up with all it gets
            search.record(step.rate, "limited" if step.rate >= 40_000 else "sustained")
    assert search.capacity is not None and 20_000 <= search.capacity < 40_000
    assert search.failed is None  # nothing failed: the pipeline was never the limit
    assert search.lower_bound


def test_start_failing_halves_and_maximum_sustained_is_a_lower_bound() -> None:
    search = run(RateSearch(start=8000, maximum=1e6, max_trials=6), LagModel(capacity=1500))
    assert [t.rate for t in search.trials][:3] == [8000, 4000, 2000]
    assert search.capacity is not None and search.capacity <= 1500
    capped = run(RateSearch(start=3000, maximum=5000, max_trials=9), LagModel(capacity=1e9))
    assert [t.rate for t in capped.trials] == [3000, 5000, 5000]  # the last one confirms
    assert capped.capacity == 5000 and capped.lower_bound and not capped.resolved


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.floats(2_000, 400_000),
    start=st.floats(1_000, 50_000),
    resolution=st.sampled_from([0.05, 0.1, 0.2]),
)
def test_capacity_is_always_confirmed_and_within_the_resolution(
    capacity: float, start: float, resolution: float
) -> None:
    search = run(
        RateSearch(start=start, maximum=1e7, max_trials=14, resolution=resolution),
        LagModel(capacity=capacity),
    )
    assert search.capacity is not None
    # The verdict tolerates lag growth of 5 % of the rate: r - C <= 0.05 r.
    assert search.capacity <= capacity / 0.95 + 50
    # Resolved, unless the trial budget ran out first (then the interval says how far it got).
    spent = search.search_trials == 14 or search.confirmations == search.max_confirmations
    assert search.resolved or spent
    assert Tried(search.capacity, "sustained", confirm=True) in search.trials
    assert search.upper is None or search.capacity < search.upper  # below every failure
    assert search.search_trials <= 14


@pytest.mark.parametrize("outcome", ["failed", "limited"])
def test_a_confirmation_the_generator_cannot_deliver_confirms_nothing(outcome: str) -> None:
    search = RateSearch(start=1000, maximum=1000, max_trials=3)
    step = search.next_step()
    assert step is not None
    search.record(step.rate, "sustained")
    step = search.next_step()
    assert step is not None and step.confirm
    search.record(step.rate, outcome, confirm=True)  # type: ignore[arg-type]
    assert search.capacity is None
    assert search.failed == 1000
