"""Per-symbol trade-id bookkeeping: de-duplication and gap detection (sans-I/O).

Binance trade ids (and aggregate trade ids) are consecutive per symbol. A :class:`SymbolTracker`
remembers the highest id seen and the ranges still missing below it, which is all it needs:

* ``id == last + 1``: the common case, accepted (one comparison).
* ``id > last + 1``: accepted; ``last+1 .. id-1`` opens a *pending* gap.
* ``id <= last``: accepted only if it lies in a missing range (a late, reordered or backfilled
  trade); otherwise it was seen before and is a duplicate.

A pending gap waits ``grace_s`` for reordered frames (or the older of two overlapping connections)
to fill it; what is still missing then is *detected*: one :class:`Gap` per missing sub-range,
reported and handed to backfill. :meth:`SymbolTracker.finish` closes a detected gap: the ids that
arrived since detection are ``backfilled``, the rest ``unrecoverable``. Closed ranges are
forgotten; an id from them arriving later is a duplicate.

Before the first id of a symbol nothing is known: ids up to ``BASELINE_WINDOW`` below it are
accepted during the grace period (reordering at start-up) and never reported.

Memory is O(open gaps): at most ``max_open`` per symbol. Past that, the oldest gap is closed at
once as unrecoverable (``evicted``) — reported, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BASELINE_WINDOW = 64

Cause = Literal["stream", "reconnect", "buffer_overflow", "tail", "restart"]
Status = Literal["detected", "backfilled", "unrecoverable"]


@dataclass(slots=True, eq=False)
class Gap:
    """A range of ids ``first..last`` of one symbol; ``missing`` lists sub-ranges still absent."""

    symbol: str
    first: int
    last: int
    cause: Cause
    opened_at: float  # monotonic seconds (pending -> detected after the grace period)
    missing: list[list[int]] = field(default_factory=list)
    detected_at_us: int = 0  # wall clock, set when detected
    silent: bool = False  # the window below the first id seen: filled if late, never reported
    closed: bool = False  # its final records were written (e.g. evicted while queued for backfill)

    def __post_init__(self) -> None:
        if not self.missing:
            self.missing = [[self.first, self.last]]

    @property
    def detected(self) -> bool:
        return self.detected_at_us != 0

    @property
    def missing_count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.missing)

    def fill(self, tid: int) -> bool:
        """Mark ``tid`` as arrived; True if it was missing."""
        if tid < self.first or tid > self.last:
            return False
        missing = self.missing
        for i, (lo, hi) in enumerate(missing):
            if lo <= tid <= hi:
                if lo == hi:
                    del missing[i]
                elif tid == lo:
                    missing[i][0] = tid + 1
                elif tid == hi:
                    missing[i][1] = tid - 1
                else:
                    missing[i : i + 1] = [[lo, tid - 1], [tid + 1, hi]]
                return True
        return False

    def outcome(self) -> list[tuple[int, int, Status]]:
        """Final sub-ranges covering ``first..last``: arrived -> backfilled, absent -> unrecoverable."""
        out: list[tuple[int, int, Status]] = []
        cursor = self.first
        for lo, hi in self.missing:
            if lo > cursor:
                out.append((cursor, lo - 1, "backfilled"))
            out.append((lo, hi, "unrecoverable"))
            cursor = hi + 1
        if cursor <= self.last:
            out.append((cursor, self.last, "backfilled"))
        return out


class SymbolTracker:
    __slots__ = ("after_reconnect", "evicted", "gaps", "grace_s", "last", "max_open", "symbol")

    def __init__(self, symbol: str, grace_s: float = 1.0, max_open: int = 1000) -> None:
        self.symbol = symbol
        self.last: int | None = None
        self.gaps: list[Gap] = []  # pending and detected, oldest first
        self.grace_s = grace_s
        self.max_open = max_open
        self.after_reconnect = False  # the next gap is attributed to a reconnect
        self.evicted: list[Gap] = []  # closed for lack of room; the caller reports them

    def observe(self, tid: int, now: float) -> bool:
        """Whether trade ``tid`` is new (publish it) or a duplicate (drop it)."""
        last = self.last
        if last is not None and tid == last + 1:
            self.last = tid
            return True
        if last is None:
            self.last = tid
            self.after_reconnect = False
            if tid > 0:  # reordered frames may still bring ids just below the first one
                gap = self.open_gap(max(0, tid - BASELINE_WINDOW), tid - 1, "stream", now)
                gap.silent = True
            return True
        if tid > last:
            cause: Cause = "reconnect" if self.after_reconnect else "stream"
            self.after_reconnect = False
            self.open_gap(last + 1, tid - 1, cause, now)
            self.last = tid
            return True
        return self.fill(tid)

    def fill(self, tid: int) -> bool:
        return any(gap.first <= tid <= gap.last and gap.fill(tid) for gap in self.gaps)

    def open_gap(
        self, first: int, last: int, cause: Cause, now: float, detected_at_us: int = 0
    ) -> Gap:
        """Open a gap (pending, or already detected when ``detected_at_us`` is given)."""
        if len(self.gaps) >= self.max_open:
            oldest = self.gaps.pop(0)
            if not oldest.silent:
                self.evicted.append(oldest)
        gap = Gap(self.symbol, first, last, cause, now, detected_at_us=detected_at_us)
        self.gaps.append(gap)
        return gap

    def mark_lost(self, first: int, last: int, cause: Cause, now: float, now_us: int) -> Gap:
        """Ids that were accepted but could not be published: a detected gap to backfill."""
        return self.open_gap(first, last, cause, now, detected_at_us=now_us)

    def due(self, now: float, now_us: int) -> list[Gap]:
        """Pending gaps whose grace period is over, split into detected gaps per missing range.

        Gaps filled completely during the grace period vanish without a report."""
        out: list[Gap] = []
        keep: list[Gap] = []
        for gap in self.gaps:
            if gap.detected or now - gap.opened_at < self.grace_s:
                keep.append(gap)
                continue
            if gap.silent:
                continue
            for lo, hi in gap.missing:
                part = Gap(self.symbol, lo, hi, gap.cause, gap.opened_at, detected_at_us=now_us)
                keep.append(part)
                out.append(part)
        self.gaps = keep
        return out

    def finish(self, gap: Gap) -> list[tuple[int, int, Status]]:
        """Close a detected gap; returns its final sub-ranges (see :meth:`Gap.outcome`)."""
        self.gaps = [g for g in self.gaps if g is not gap]
        return gap.outcome()
