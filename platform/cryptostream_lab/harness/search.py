"""Sustainable-rate search (sans-I/O), after Theodolite's load-capacity metric.

A rate is *sustained* by a topology when the consumer lag measured over a trial (after warm-up)
does not keep growing: the slope of a least-squares line through (time, total lag) stays below a
small fraction of the input rate. The search doubles the rate from a start value until a trial
fails, then bisects between the highest sustained and the lowest failed rate until they are
within the resolution, then *confirms* the highest sustained rate with a longer trial. Only a
confirmed rate is a capacity: a failed confirmation becomes the new lowest failed rate and the
search goes on below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


@dataclass(frozen=True)
class LagVerdict:
    sustained: bool
    slope: float  # records/s the lag grows by
    threshold: float


def lag_verdict(
    points: Sequence[tuple[float, float]], rate: float, tolerance: float = 0.05
) -> LagVerdict:
    """Is the lag flat enough? ``points`` = (seconds, total lag) after warm-up."""
    threshold = max(tolerance * rate, 50.0)  # the floor keeps tiny rates from failing on noise
    s = slope(points)
    return LagVerdict(s <= threshold, s, threshold)


Outcome = Literal["sustained", "failed", "limited"]  # limited: the generator fell short


@dataclass(frozen=True)
class Step:
    """One trial the search asks for: a rate, and whether it is the confirmation trial."""

    rate: float
    confirm: bool = False


@dataclass(frozen=True)
class Tried:
    rate: float
    outcome: Outcome
    confirm: bool = False


@dataclass
class RateSearch:
    """Doubling, then bisection to ``resolution``, then a confirmation of the best rate.

    ``next_step()`` proposes the next trial (None when done); ``record()`` takes its outcome.
    ``max_trials`` bounds the short search trials, ``max_confirmations`` the long confirmation
    trials. Only a sustained confirmation is a capacity. A failed confirmation proves the short
    trials optimistic at that rate, so the search goes on below it with confirmation trials
    only: first at the rate the failed trial actually processed (kept within one to three
    resolutions below the failed rate), then bisecting between the highest confirmed and the lowest
    failed rate until they are within the resolution or the budget is spent.

    A ``limited`` trial (the load generator could not deliver the rate, and the lag stayed flat
    at what it delivered) caps the search like a failure but is no failure of the pipeline: the
    capacity is then a lower bound.
    """

    start: float
    maximum: float
    max_trials: int = 5
    resolution: float = 0.1
    max_confirmations: int = 3
    trials: list[Tried] = field(default_factory=list)
    processed: dict[float, float] = field(default_factory=dict)  # rate -> processed at it
    done: bool = False

    # --- derived state ----------------------------------------------------------------------------
    @property
    def failed(self) -> float | None:
        """Lowest tried rate that failed (search or confirmation)."""
        rates = [t.rate for t in self.trials if t.outcome == "failed"]
        return min(rates) if rates else None

    @property
    def upper(self) -> float | None:
        """Lowest rate known not to be a capacity: failed, or beyond the generator."""
        rates = [t.rate for t in self.trials if t.outcome in ("failed", "limited")]
        return min(rates) if rates else None

    def _highest(self, confirm: bool) -> float | None:
        upper = self.upper
        rates = [
            t.rate
            for t in self.trials
            if t.outcome == "sustained"
            and t.confirm == confirm
            and (upper is None or t.rate < upper)
        ]
        return max(rates) if rates else None

    @property
    def best(self) -> float | None:
        """Highest sustained search rate below every failed or limited one."""
        return self._highest(confirm=False)

    @property
    def capacity(self) -> float | None:
        """Highest confirmed rate (tried, sustained in a confirmation) below every failure."""
        return self._highest(confirm=True)

    @property
    def search_trials(self) -> int:
        return sum(1 for t in self.trials if not t.confirm)

    @property
    def confirmations(self) -> int:
        return sum(1 for t in self.trials if t.confirm)

    @property
    def lower_bound(self) -> bool:
        """The capacity is only a lower bound: nothing above it failed (maximum or generator)."""
        return self.capacity is not None and self.failed is None

    @property
    def resolved(self) -> bool:
        """The true capacity lies in [capacity, upper) and that interval is within resolution."""
        upper, capacity = self.upper, self.capacity
        return (
            capacity is not None
            and upper is not None
            and upper / capacity - 1 <= self.resolution + 1e-9
        )

    # --- the search -------------------------------------------------------------------------------
    def next_step(self) -> Step | None:
        if not self.done:
            step = self._next()
            self.done = step is None
            return step
        return None

    def _next(self) -> Step | None:
        refuted = any(t.confirm and t.outcome == "failed" for t in self.trials)
        if refuted:
            return self._below_refuted()
        if self.capacity is not None:
            return None  # confirmed at the end of the search
        best, upper = self.best, self.upper
        trials_left = self.search_trials < self.max_trials
        if best is None:  # nothing sustained yet: halve
            if not self.trials:
                return Step(min(self.start, self.maximum))
            assert upper is not None
            rate = round(upper / 2, 1)
            return Step(rate) if trials_left and rate >= 1 else None
        if trials_left:
            if upper is None:  # still climbing
                if best < self.maximum:
                    return Step(min(best * 2, self.maximum))
            elif upper / best - 1 > self.resolution:
                return Step(round((best + upper) / 2, 1))
        return self._confirm(best)

    def _below_refuted(self) -> Step | None:
        upper, capacity = self.upper, self.capacity
        assert upper is not None
        if capacity is not None:
            if upper / capacity - 1 <= self.resolution:
                return None
            return self._confirm(round((capacity + upper) / 2, 1))
        # What the failed trial processed estimates the capacity, but a lagging group processes
        # less than it can: step down by one to three resolutions, as the hint says.
        guess = upper / (1 + self.resolution)
        hint = self.processed.get(upper)
        if hint is not None and hint > 0:
            guess = max(min(guess, hint), upper / (1 + self.resolution) ** 3)
        return self._confirm(round(guess, 1)) if guess >= 1 else None

    def _confirm(self, rate: float) -> Step | None:
        return Step(rate, confirm=True) if self.confirmations < self.max_confirmations else None

    def record(
        self,
        rate: float,
        outcome: Outcome | bool,
        confirm: bool = False,
        processed: float | None = None,
    ) -> None:
        """One trial's outcome; ``processed`` = the rate it processed (a hint after failures)."""
        if isinstance(outcome, bool):
            outcome = "sustained" if outcome else "failed"
        if confirm and outcome == "limited":
            outcome = "failed"  # a confirmation the generator cannot deliver confirms nothing
        self.trials.append(Tried(rate, outcome, confirm))
        if processed is not None:
            self.processed[rate] = processed
