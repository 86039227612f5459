"""Exact L2 order books (sans-I/O): the book types, the book, and the documented procedure that
keeps a local book in step with the exchange. Binance's wire formats that become these types
(``depthUpdate`` frames, REST snapshots) are in :mod:`cryptostream.binance.depth`.

Binance's procedure for a local book (``<symbol>@depth[@100ms]`` + ``GET /api/v3/depth``):
buffer the diffs; fetch a snapshot; refetch it if its ``lastUpdateId`` is older than the first
buffered diff's ``U``; drop buffered diffs with ``u`` <= ``lastUpdateId``; the first diff applied
must satisfy ``U`` <= ``lastUpdateId`` + 1 <= ``u``; after that every diff's ``U`` is the previous
``u`` + 1. Anything else is a break in the chain: the book is resynced from a fresh snapshot and
the break is reported, never papered over. A quantity of 0 removes a level.

Prices are kept as exact integers (20 fractional digits, :func:`~cryptostream.core.codec.scaled`)
for ordering, with the exchange's own text for output: no float ever touches a level.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptostream.core.codec import scaled
from cryptostream.core.trades import MAX_ID

Level = tuple[str, str]  # (price, quantity) as the exchange writes them


class DepthError(ValueError):
    """A depth diff, snapshot or level that is not valid; the message is the reason."""


@dataclass(frozen=True, slots=True)
class DepthDiff:
    """One ``depthUpdate`` event: the changes of update ids ``first_id`` (U) .. ``final_id`` (u)."""

    symbol: str
    first_id: int
    final_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    event_time: int = 0


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    """A REST ``/api/v3/depth`` answer: the whole book (to its limit) as of ``last_update_id``."""

    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


def parse_levels(raw: object, side: str) -> tuple[Level, ...]:
    if not isinstance(raw, list):
        raise DepthError(f"{side} must be a list of [price, quantity]")
    out = []
    for level in raw:
        if not (isinstance(level, list) and len(level) >= 2):
            raise DepthError(f"{side} level is not [price, quantity]: {str(level)[:40]}")
        price, qty = level[0], level[1]
        if not (isinstance(price, str) and scaled(price)):
            raise DepthError(f"{side} price is not a positive plain decimal: {str(price)[:40]}")
        if not (isinstance(qty, str) and (scaled(qty) or _is_zero(qty))):
            raise DepthError(f"{side} quantity is not a plain decimal: {str(qty)[:40]}")
        out.append((price, qty))
    return tuple(out)


def _is_zero(text: str) -> bool:
    whole, dot, frac = text.partition(".")
    return (
        text.isascii()
        and 0 < len(whole) <= 20
        and set(whole) == {"0"}
        and (not dot or (0 < len(frac) <= 20 and set(frac) == {"0"}))
    )


def parse_update_id(value: object, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise DepthError(f"{name} must be an integer in [0, 2^63-1]: {str(value)[:40]}")
    return value


@dataclass
class Book:
    """One symbol's exact L2 book: price (exact integer) -> (price text, quantity text)."""

    bids: dict[int, Level] = field(default_factory=dict)
    asks: dict[int, Level] = field(default_factory=dict)
    last_update_id: int = -1

    def reset(self, snapshot: DepthSnapshot) -> None:
        self.bids, self.asks = {}, {}
        self._apply(self.bids, snapshot.bids)
        self._apply(self.asks, snapshot.asks)
        self.last_update_id = snapshot.last_update_id

    def apply(self, diff: DepthDiff) -> None:
        self._apply(self.bids, diff.bids)
        self._apply(self.asks, diff.asks)
        self.last_update_id = diff.final_id

    @staticmethod
    def _apply(side: dict[int, Level], levels: Iterable[Level]) -> None:
        for price, qty in levels:
            key = scaled(price)
            if scaled(qty):
                side[key] = (price, qty)
            else:  # quantity 0 removes the level (absent already is fine)
                side.pop(key, None)

    def top(self, depth: int) -> tuple[list[Level], list[Level]]:
        """The best ``depth`` levels of each side: bids descending, asks ascending."""
        bids = [self.bids[p] for p in heapq.nlargest(depth, self.bids)]
        asks = [self.asks[p] for p in heapq.nsmallest(depth, self.asks)]
        return bids, asks

    def best(self) -> tuple[Level | None, Level | None]:
        bid = self.bids[max(self.bids)] if self.bids else None
        ask = self.asks[min(self.asks)] if self.asks else None
        return bid, ask

    def crossed(self) -> bool:
        """Best bid at or above best ask: a book no exchange shows, so ours went wrong."""
        return bool(self.bids and self.asks and max(self.bids) >= min(self.asks))


@dataclass(frozen=True, slots=True)
class Applied:
    diff: DepthDiff


@dataclass(frozen=True, slots=True)
class Synced:
    """A snapshot was taken and the buffered diffs that follow it applied."""

    last_update_id: int
    applied: int
    dropped: int


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The update-id chain broke (a lost diff, a crossed book): the book needs a new snapshot.
    ``expected`` is the ``U`` that would have continued the chain; ``got`` the one that came."""

    symbol: str
    expected: int
    got: int
    reason: str


SyncEvent = Applied | Synced | ChainBreak


@dataclass
class BookSync:
    """Binance's local-book procedure for one symbol, as a state machine with no I/O: feed it
    diffs and snapshots, read back what happened and whether a snapshot is wanted."""

    symbol: str
    max_buffer: int = 10_000
    book: Book = field(default_factory=Book)
    buffer: list[DepthDiff] = field(default_factory=list)
    synced: bool = False
    fresh: bool = False  # synced from a snapshot no diff has followed yet: the first may straddle
    dropped_overflow: int = 0

    @property
    def wants_snapshot(self) -> bool:
        return not self.synced

    def on_diff(self, diff: DepthDiff) -> list[SyncEvent]:
        if not self.synced:
            if len(self.buffer) >= self.max_buffer:  # the snapshot is late: keep the newest
                self.buffer.pop(0)
                self.dropped_overflow += 1
            self.buffer.append(diff)
            return []
        if diff.final_id <= self.book.last_update_id:
            return []  # already in the book (a replayed or duplicated diff)
        last = self.book.last_update_id
        fits = diff.first_id <= last + 1 if self.fresh else diff.first_id == last + 1
        if not fits:
            return [self._break(last + 1, diff.first_id, "update-id gap")]
        self.fresh = False
        self.book.apply(diff)
        if self.book.crossed():
            return [self._break(diff.final_id + 1, diff.final_id + 1, "crossed book")]
        return [Applied(diff)]

    def on_snapshot(self, snapshot: DepthSnapshot) -> list[SyncEvent]:
        """Start from ``snapshot`` if it fits the buffered diffs; otherwise stay unsynced (the
        caller fetches a newer one: the snapshot predates the first buffered diff)."""
        if self.buffer and snapshot.last_update_id < self.buffer[0].first_id - 1:
            return []  # too old: refetch
        self.book.reset(snapshot)
        pending = [d for d in self.buffer if d.final_id > snapshot.last_update_id]
        dropped = len(self.buffer) - len(pending)
        self.buffer = []
        if (
            pending
            and not pending[0].first_id <= snapshot.last_update_id + 1 <= pending[0].final_id
        ):
            self.synced = False
            return [
                self._break(
                    snapshot.last_update_id + 1,
                    pending[0].first_id,
                    "first diff does not continue the snapshot",
                )
            ]
        self.synced = True
        self.fresh = not pending  # the snapshot is newer than every buffered diff
        events: list[SyncEvent] = [Synced(snapshot.last_update_id, len(pending), dropped)]
        for i, diff in enumerate(pending):
            if i and diff.first_id != self.book.last_update_id + 1:
                events.append(
                    self._break(
                        self.book.last_update_id + 1, diff.first_id, "update-id gap in the buffer"
                    )
                )
                return events
            self.book.apply(diff)
            events.append(Applied(diff))
        if self.book.crossed():
            events.append(
                self._break(
                    self.book.last_update_id + 1, self.book.last_update_id + 1, "crossed book"
                )
            )
        return events

    def _break(self, expected: int, got: int, reason: str) -> ChainBreak:
        self.synced = False
        self.buffer = []
        return ChainBreak(self.symbol, expected, got, reason)


def levels_text(levels: Sequence[Level]) -> list[list[str]]:
    """Levels as Binance writes them (``[["price", "qty"], ...]``)."""
    return [[price, qty] for price, qty in levels]
