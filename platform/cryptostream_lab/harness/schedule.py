"""Open-model load (sans-I/O): send times fixed in advance, seeded synthetic trades.

In an open model the arrival times do not depend on how fast the system answers: record ``i`` is
*due* at ``start + i / rate`` whether or not earlier sends were slow. Latency is measured from
that intended time, so a stall in the sender or the system shows up in the figures instead of
silently thinning the load (coordinated omission).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cryptostream.core.trades import Trade

TRADE_TIME_BASE_MS = 1_700_000_000_000  # the synthetic market's clock starts here (deterministic)


def symbol_names(count: int) -> list[str]:
    """``SYM0000USDT``...: the names ``loadtests/locustfile.py`` asks for."""
    width = max(4, len(str(count - 1)))
    return [f"SYM{i:0{width}d}USDT" for i in range(count)]


@dataclass(frozen=True)
class OpenSchedule:
    """``count`` sends at ``rate`` per second from ``start`` (any clock, in seconds)."""

    rate: float
    count: int
    start: float

    def intended(self, i: int) -> float:
        return self.start + i / self.rate

    def due(self, now: float) -> int:
        """How many sends are due by ``now`` (those with intended time <= now)."""
        if now < self.start:
            return 0
        return min(self.count, math.floor((now - self.start) * self.rate) + 1)

    @property
    def end(self) -> float:
        return self.intended(self.count)


@dataclass
class LoopStats:
    sent: int = 0
    max_behind_s: float = 0.0  # how late the worst send was against its intended time
    behind_over_10ms: int = 0


def run_open_loop(
    schedule: OpenSchedule,
    send: Callable[[int], None],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    idle: Callable[[], object] = lambda: None,
    max_sleep: float = 0.005,
) -> LoopStats:
    """Send record ``i`` as soon as it is due; never wait for answers (the open model).

    A slow ``send`` makes later records late but never moves their intended times: after a stall
    the loop catches up with every record that fell due in the meantime.
    """
    stats = LoopStats()
    i = 0
    while i < schedule.count:
        now = clock()
        due = schedule.due(now)
        while i < due:
            behind = now - schedule.intended(i)
            if behind > stats.max_behind_s:
                stats.max_behind_s = behind
            if behind > 0.010:
                stats.behind_over_10ms += 1
            send(i)
            i += 1
        stats.sent = i
        idle()
        if i < schedule.count:
            wait = schedule.intended(i) - clock()
            if wait > 0:
                sleep(min(wait, max_sleep))
    return stats


def zipf_cumulative(count: int, skew: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank**skew) for rank in range(1, count + 1)))


def symbol_sequence(count: int, symbols: int, skew: float, seed: int) -> array[int]:
    """The symbol index of each of ``count`` trades (Zipf-like; same seed, same sequence)."""
    rng = random.Random(seed)
    cumulative = zipf_cumulative(symbols, skew)
    total = cumulative[-1]
    out = array("i", bytes(4 * count))
    for i in range(count):
        out[i] = bisect.bisect_left(cumulative, rng.random() * total)
    return out


@dataclass
class SyntheticTrades:
    """Seeded trades with consecutive ids per symbol, starting after ``id_base``.

    The trade time is a deterministic function of the index (``i / rate`` after a fixed base),
    so the views in Redis are identical across runs; the event time is set by the caller (the
    intended send time, for latency).
    """

    names: list[str]
    sequence: array[int]
    rate: float
    seed: int
    id_base: int = 0
    _ids: list[int] = field(default_factory=list)
    _prices: list[float] = field(default_factory=list)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._ids = [self.id_base] * len(self.names)
        self._rng = random.Random(self.seed + 1)
        self._prices = [10.0 + 1000.0 * self._rng.random() for _ in self.names]

    def trade(self, i: int, event_time_ms: int) -> Trade:
        """The ``i``-th trade; call with i = 0, 1, 2, ... in order."""
        s = self.sequence[i]
        self._ids[s] += 1
        rng = self._rng
        price = self._prices[s] = max(0.01, self._prices[s] * (1 + (rng.random() - 0.5) * 0.002))
        return Trade(
            symbol=self.names[s],
            trade_id=self._ids[s],
            price=f"{price:.4f}",
            quantity=f"{0.001 + rng.random() * 2:.5f}",
            trade_time=TRADE_TIME_BASE_MS + int(i * 1000 / self.rate),
            event_time=event_time_ms,
            buyer_is_maker=rng.random() < 0.5,
        )


class VisibilityTracker:
    """Per-record event->visible latency from the updates a reader sees (sans-I/O).

    An update carrying ``(symbol, trade_id)`` makes every earlier trade of that symbol visible
    too (ids are consecutive per symbol). Each newly covered record's latency is measured from its
    own intended send time, which the deterministic schedule gives without asking the sender.
    """

    def __init__(
        self, names: list[str], sequence: array[int], schedule: OpenSchedule, id_base: int = 0
    ) -> None:
        self.schedule = schedule
        self.id_base = id_base
        index = {name: n for n, name in enumerate(names)}
        self._index = index
        self._positions: list[array[int]] = [array("q") for _ in names]
        for i, s in enumerate(sequence):
            self._positions[s].append(i)
        self._seen = [0] * len(names)  # records of each symbol already counted

    def visible(self, symbol: str, trade_id: int, now: float) -> Iterator[tuple[float, float]]:
        """(intended send time, latency) of each record this update newly makes visible."""
        s = self._index.get(symbol)
        if s is None:
            return
        positions = self._positions[s]
        upto = min(trade_id - self.id_base, len(positions))
        for k in range(self._seen[s], upto):
            intended = self.schedule.intended(positions[k])
            yield intended, now - intended
        if upto > self._seen[s]:
            self._seen[s] = upto

    @property
    def covered(self) -> int:
        return sum(self._seen)
