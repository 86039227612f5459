"""Order-book depth for ``raw.depth`` (sans-I/O): per symbol the engine that turns diffs (with
their receive time) and REST snapshots into what to publish. Binance's formats of both (frames,
stream names, snapshot requests and their weight) are in :mod:`cryptostream.binance.depth`.

Binance's documented local-book procedure (see :mod:`cryptostream.core.orderbook`), kept so that
what ingest publishes obeys the topic contract of :mod:`cryptostream.core.depth` exactly:

* buffer the diffs; once one is buffered, want a snapshot (``FetchSnapshot``);
* a snapshot older than the first buffered diff (``lastUpdateId`` < ``U`` - 1) is refetched;
* otherwise publish the snapshot, drop the buffered diffs with ``u`` <= ``lastUpdateId`` and
  publish the rest; the first satisfies ``U`` <= ``lastUpdateId`` + 1 <= ``u`` (or, when none was
  left, the first live diff must), and every later one ``U`` == previous ``u`` + 1;
* anything else is a break: an update-id gap, a crossed book, a lost WebSocket connection, a
  record Kafka did not take. The break is recorded (``RecordBreak``, for the gap topic), nothing
  more is published for the symbol until a fresh snapshot, which is then published first.

A hole inside the buffer before any snapshot was published breaks nothing on the topic: the
diffs before it are discarded (counted) and the procedure continues with the ones after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptostream.core.orderbook import Book, DepthDiff, DepthSnapshot
from cryptostream.ingest.gaps import DepthCause

# ----- settings helpers ------------------------------------------------------------------------


def depth_symbols(configured: Iterable[str], trade_symbols: Iterable[str]) -> list[str]:
    """``CSP_DEPTH_SYMBOLS`` resolved: ``*`` stands for every trade symbol; order kept, no
    duplicates; empty: depth is off."""
    out: list[str] = []
    for symbol in configured:
        out.extend(trade_symbols if symbol == "*" else [symbol])
    return list(dict.fromkeys(out))


class WeightBudget:
    """At most ``per_minute`` REST weight in any 60 s (a sliding window). A request heavier than
    the whole budget waits for an empty window and then goes alone."""

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self._spent: list[tuple[float, int]] = []

    def used(self, now: float) -> int:
        self._spent = [(t, w) for t, w in self._spent if now - t < self.window_s]
        return sum(w for _t, w in self._spent)

    def wait_s(self, weight: int, now: float) -> float:
        """Seconds to wait before a request of ``weight`` may go (0: go now, and it is counted)."""
        used = self.used(now)
        if used + weight <= self.per_minute or not self._spent:
            self._spent.append((now, weight))
            return 0.0
        need = used + min(weight, self.per_minute) - self.per_minute  # weight that must expire
        freed = 0
        for t, w in self._spent:
            freed += w
            if freed >= need:
                return max(t + self.window_s - now, 1e-3)
        return self.window_s  # pragma: no cover - the loop always reaches `need`


# ----- the engine's actions --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishSnapshot:
    symbol: str
    snapshot: DepthSnapshot
    recv_us: int  # when the REST answer was received: the record's ingest_time_us


@dataclass(frozen=True, slots=True)
class PublishDiff:
    diff: DepthDiff
    recv_us: int


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    symbol: str
    refetch: bool = False  # the previous snapshot was older than the buffered diffs


@dataclass(frozen=True, slots=True)
class RecordBreak:
    symbol: str
    cause: DepthCause
    expected_id: int  # the U that would have continued the published chain
    got_id: int | None  # the U that came instead (None: no diff came)
    reason: str


DepthAction = PublishSnapshot | PublishDiff | FetchSnapshot | RecordBreak


@dataclass
class SymbolDepth:
    """One symbol's procedure; every input returns the actions it causes, in order."""

    symbol: str
    max_buffer: int = 10_000
    book: Book = field(default_factory=Book)
    buffer: list[tuple[DepthDiff, int]] = field(default_factory=list)
    live: bool = False  # a snapshot was published and the published chain holds
    fresh: bool = False  # live, and no diff published since the snapshot
    fetching: bool = False  # a FetchSnapshot is outstanding
    # counters
    published_diffs: int = 0
    snapshots: int = 0
    stale: int = 0  # diffs already in the book (duplicates, the overlap of two connections)
    refetches: int = 0
    buffer_discarded: int = 0  # buffered diffs before a hole, or beyond max_buffer
    bad_snapshots: int = 0  # crossed snapshots, refetched
    breaks: int = 0

    def on_diff(self, diff: DepthDiff, recv_us: int) -> list[DepthAction]:
        if self.live:
            last = self.book.last_update_id
            if diff.final_id <= last:
                self.stale += 1
                return []
            fits = diff.first_id <= last + 1 if self.fresh else diff.first_id == last + 1
            if not fits:
                return self._break(
                    "depth_gap", last + 1, diff.first_id, "update-id gap", keep=(diff, recv_us)
                )
            self.book.apply(diff)
            self.fresh = False
            if self.book.crossed():
                return self._break("depth_crossed", last + 1, diff.first_id, "crossed book")
            self.published_diffs += 1
            return [PublishDiff(diff, recv_us)]
        if self.buffer:
            prev = self.buffer[-1][0]
            if diff.final_id <= prev.final_id:
                self.stale += 1
                return []
            if diff.first_id != prev.final_id + 1:  # what came before the hole is useless
                self.buffer_discarded += len(self.buffer)
                self.buffer = []
        if len(self.buffer) >= self.max_buffer:  # the snapshot is late: keep the newest
            self.buffer.pop(0)
            self.buffer_discarded += 1
        self.buffer.append((diff, recv_us))
        return self._want(refetch=False)

    def on_snapshot(self, snapshot: DepthSnapshot, recv_us: int) -> list[DepthAction]:
        self.fetching = False
        if self.live or not self.buffer:
            # nothing to check it against (a reconnect emptied the buffer): the next diff asks
            return []
        if snapshot.last_update_id < self.buffer[0][0].first_id - 1:
            self.refetches += 1
            return self._want(refetch=True)
        check = Book()
        check.reset(snapshot)
        if check.crossed():
            self.bad_snapshots += 1
            return self._want(refetch=True)
        pending, self.buffer = self.buffer, []
        self.book = check
        self.live = self.fresh = True
        self.snapshots += 1
        actions: list[DepthAction] = [PublishSnapshot(self.symbol, snapshot, recv_us)]
        for diff, diff_us in pending:  # the live rules: old ones are stale, the rest publish
            actions += self.on_diff(diff, diff_us)
        return actions

    def on_fetch_failed(self) -> list[DepthAction]:
        """The snapshot could not be fetched: the next diff asks again."""
        self.fetching = False
        return []

    def on_reconnect(self) -> list[DepthAction]:
        """The connection carrying this symbol was lost: what it missed is unknown."""
        self.buffer = []
        if not self.live:
            return []
        return self._break(
            "depth_reconnect",
            self.book.last_update_id + 1,
            None,
            "the WebSocket connection was lost",
        )

    def on_lost(self, reason: str) -> list[DepthAction]:
        """A record of this symbol did not reach the topic (Kafka refused it, or no room in
        the producer): the chain on the topic is broken (unless nothing is published yet)."""
        if not self.live:
            return []
        return self._break("depth_produce", self.book.last_update_id + 1, None, reason)

    def _want(self, *, refetch: bool) -> list[DepthAction]:
        if self.fetching or not self.buffer:
            return []
        self.fetching = True
        return [FetchSnapshot(self.symbol, refetch)]

    def _break(
        self,
        cause: DepthCause,
        expected: int,
        got: int | None,
        reason: str,
        keep: tuple[DepthDiff, int] | None = None,
    ) -> list[DepthAction]:
        self.live = self.fresh = False
        self.breaks += 1
        self.buffer = [keep] if keep is not None else []
        return [RecordBreak(self.symbol, cause, expected, got, reason), *self._want(refetch=False)]


@dataclass
class DepthEngine:
    """Every depth symbol's procedure; inputs for a symbol it does not follow are counted."""

    symbols: list[str]
    max_buffer: int = 10_000
    books: dict[str, SymbolDepth] = field(default_factory=dict)
    unknown_symbol: int = 0

    def __post_init__(self) -> None:
        for symbol in self.symbols:
            self.books[symbol] = SymbolDepth(symbol, self.max_buffer)

    def on_diff(self, diff: DepthDiff, recv_us: int) -> list[DepthAction]:
        book = self.books.get(diff.symbol)
        if book is None:
            self.unknown_symbol += 1
            return []
        return book.on_diff(diff, recv_us)

    def on_snapshot(self, symbol: str, snapshot: DepthSnapshot, recv_us: int) -> list[DepthAction]:
        return self.books[symbol].on_snapshot(snapshot, recv_us)

    def on_fetch_failed(self, symbol: str) -> list[DepthAction]:
        return self.books[symbol].on_fetch_failed()

    def on_reconnect(self, symbols: Iterable[str]) -> list[DepthAction]:
        actions: list[DepthAction] = []
        for symbol in symbols:
            if symbol in self.books:
                actions += self.books[symbol].on_reconnect()
        return actions

    def on_lost(self, symbol: str, reason: str) -> list[DepthAction]:
        book = self.books.get(symbol)
        return book.on_lost(reason) if book is not None else []
