"""Order books: the served L2 book, the synthetic makers that quote it, the replayed book. Pure.

Amounts are ints in 1e-8 units (:mod:`marketsim.units`), like every price and quantity in the
simulator; nothing here touches a socket or a clock.

:class:`L2Book`
    One symbol's price-level book with Binance's update ids: each book event (a passive order
    added, a cancel, a fill) is one update id, ``update_id`` is the id of the last event applied.
    Its :class:`DiffBuffer` s collect the levels changed since they were last taken, so a
    ``depthUpdate`` diff is ``U`` = the first event id in the buffer, ``u`` = ``update_id``, the
    changed levels with their new quantity (0 removes the level). Taken at every update speed
    (100 ms, 1000 ms), consecutive diffs chain: each ``U`` is the previous ``u`` + 1.

:class:`SyntheticBook`
    The synthetic market's book model, driven by the generator's per-symbol fair price (a random
    walk in ticks, :mod:`marketsim.generator`). Makers quote bids at or below the fair price and
    asks above it (``bid <= fair < ask``: the book is never crossed); each order step:

    1. quotes the fair price has moved through are cancelled (asks at or below it, bids above it);
    2. churn: one passive order joins a random level near the top (probability 1/2) and one
       order leaves one (1/4: a part of that level's quantity, or all of it);
    3. a hole at the top (best bid more than ``gap`` ticks below fair, best ask more than
       ``gap`` + 1 ticks above it) is filled with new levels placed uniformly inside it;
    4. the depth is kept at ``levels`` .. ``levels * 5 / 4`` levels a side (new levels below the
       worst bid / above the worst ask, ``gap`` ticks apart on average; the farthest cancelled).

    Then the taker order of the step (:meth:`SyntheticBook.take`) trades at the best level of the
    other side only (one price: one aggTrade), at most that level's quantity, which it removes
    from the level (a side left without any level is refilled at once, as in step 3). ``gap`` (ticks between levels) follows the per-order volatility, so a price
    move crosses a few levels, not hundreds. Every price is on the symbol's tick grid and every
    quantity on its lot (step) grid. Each event is journaled; the journal travels with the
    :class:`~marketsim.model.Order` and the server applies it to the served book when it sends the
    order, so the book served is always the one the sent trades came from.

:class:`ReplayDepth`
    The book of a replayed recording: the REST snapshot line and the recorded diffs, synced as
    Binance documents for a client (diffs buffered until the snapshot; those with ``u`` <= its
    ``lastUpdateId`` dropped; the first applied has ``U`` <= ``lastUpdateId`` + 1 <= ``u``; then
    each ``U`` = previous ``u`` + 1; a break is counted and the diff applied anyway). The snapshot
    line names no symbol: it belongs to the symbol one of whose diffs it fits.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from math import log as _log

from marketsim.units import fmt8

Level = tuple[int, int]  # (price, quantity), 1e-8 units
Change = tuple[bool, int, int]  # (is bid, price, new quantity; 0 = level removed)

MAX_DEPTH_LIMIT = 5000  # REST /api/v3/depth returns at most this many levels a side
DEFAULT_LEVELS = 100


class DiffBuffer:
    """The levels changed since the buffer was last taken (one per update speed)."""

    __slots__ = ("asks", "bids", "first_id")

    def __init__(self) -> None:
        self.first_id: int | None = None
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def take(self, final_id: int) -> tuple[int, int, list[Level], list[Level]] | None:
        """``(U, u, bids best first, asks best first)`` of the changes, or None if none; clears."""
        first = self.first_id
        if first is None:
            return None
        bids = sorted(self.bids.items(), reverse=True)
        asks = sorted(self.asks.items())
        self.first_id = None
        self.bids = {}
        self.asks = {}
        return first, final_id, bids, asks


class L2Book:
    """One symbol's price-level book (1e-8 units), with update ids and diff buffers."""

    __slots__ = (
        "_ap",
        "_bp",
        "asks",
        "bids",
        "buffers",
        "diff_buffers",
        "journal",
        "symbol",
        "update_id",
    )

    def __init__(self, symbol: str, update_id: int = 0, buffers: int = 0) -> None:
        self.symbol = symbol
        self.update_id = update_id
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self._bp: list[int] = []  # bid prices ascending (best last)
        self._ap: list[int] = []  # ask prices ascending (best first)
        # every diff buffer, and the active ones (all at first; a server switches off the
        # buffers of diff streams nobody subscribes to, which then cost nothing)
        self.diff_buffers = [DiffBuffer() for _ in range(buffers)]
        self.buffers = list(self.diff_buffers)
        self.journal: list[Change] | None = None

    def set_active(self, index: int, active: bool) -> None:
        """Switch a diff buffer on (it collects from the next event) or off (cleared)."""
        b = self.diff_buffers[index]
        if active and b not in self.buffers:
            self.buffers.append(b)
        elif not active and b in self.buffers:
            self.buffers.remove(b)
            b.first_id = None
            b.bids, b.asks = {}, {}

    # ----- reading -----

    def best_bid(self) -> Level | None:
        bp = self._bp
        return (bp[-1], self.bids[bp[-1]]) if bp else None

    def best_ask(self) -> Level | None:
        ap = self._ap
        return (ap[0], self.asks[ap[0]]) if ap else None

    def bid_levels(self, limit: int | None = None) -> list[Level]:
        """Bids, best (highest) first."""
        bp = self._bp
        prices = bp[::-1] if limit is None else bp[: -limit - 1 : -1] if limit > 0 else []
        return [(p, self.bids[p]) for p in prices]

    def ask_levels(self, limit: int | None = None) -> list[Level]:
        """Asks, best (lowest) first."""
        ap = self._ap if limit is None else self._ap[: max(0, limit)]
        return [(p, self.asks[p]) for p in ap]

    def snapshot(self, limit: int | None = None) -> tuple[int, list[Level], list[Level]]:
        return self.update_id, self.bid_levels(limit), self.ask_levels(limit)

    def crossed(self) -> bool:
        return bool(self._bp and self._ap and self._bp[-1] >= self._ap[0])

    def __len__(self) -> int:
        return len(self._bp) + len(self._ap)

    # ----- changing -----

    def set_level(self, is_bid: bool, price: int, qty: int) -> None:
        """Set one level without an update id of its own (a diff's level, a snapshot's)."""
        if self.journal is not None:
            self.journal.append((is_bid, price, qty))
        if is_bid:
            side, prices = self.bids, self._bp
        else:
            side, prices = self.asks, self._ap
        buffers = self.buffers
        if buffers:
            for b in buffers:
                if b.first_id is None:
                    b.first_id = self.update_id + 1
        if qty > 0:
            if price not in side:
                bisect.insort(prices, price)
            side[price] = qty
        elif price in side:
            del side[price]
            del prices[bisect.bisect_left(prices, price)]
        else:
            return  # removing a level that is not there: an event, no level to report
        for b in buffers:
            (b.bids if is_bid else b.asks)[price] = qty

    def event(self, is_bid: bool, price: int, qty: int) -> None:
        """One book event: the level's new quantity, under the next update id."""
        self.set_level(is_bid, price, qty)
        self.update_id += 1

    def apply_changes(self, changes: Sequence[Change]) -> None:
        """Apply journaled events (one update id each): :meth:`event` for each, inlined (the
        server does this for every order it sends)."""
        if not changes:
            return
        uid = self.update_id
        bufs = self.buffers
        for b in bufs:
            if b.first_id is None:
                b.first_id = uid + 1
        bids, asks, bp, ap = self.bids, self.asks, self._bp, self._ap
        journal = self.journal
        insort, bisect_left = bisect.insort, bisect.bisect_left
        for change in changes:
            is_bid, price, qty = change
            if journal is not None:
                journal.append(change)
            if is_bid:
                side, prices = bids, bp
            else:
                side, prices = asks, ap
            if qty > 0:
                if price not in side:
                    insort(prices, price)
                side[price] = qty
            elif price in side:
                del side[price]
                del prices[bisect_left(prices, price)]
            else:
                continue
            for b in bufs:
                (b.bids if is_bid else b.asks)[price] = qty
        self.update_id = uid + len(changes)

    def apply_diff(
        self, first_id: int, final_id: int, bids: Iterable[Level], asks: Iterable[Level]
    ) -> None:
        """Apply a ``depthUpdate`` (``U``..``u``); the buffers then start at ``U`` at the latest."""
        for b in self.buffers:
            if b.first_id is None:
                b.first_id = first_id
        for p, q in bids:
            self.set_level(True, p, q)
        for p, q in asks:
            self.set_level(False, p, q)
        self.update_id = final_id

    def load(self, update_id: int, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book with a snapshot (buffers cleared: a new chain starts)."""
        self.bids = {p: q for p, q in bids if q > 0}
        self.asks = {p: q for p, q in asks if q > 0}
        self._bp = sorted(self.bids)
        self._ap = sorted(self.asks)
        self.update_id = update_id
        for b in self.diff_buffers:
            b.first_id = None
            b.bids, b.asks = {}, {}

    def copy(self, buffers: int = 0) -> L2Book:
        out = L2Book(self.symbol, self.update_id, buffers)
        out.bids, out.asks = dict(self.bids), dict(self.asks)
        out._bp, out._ap = list(self._bp), list(self._ap)
        return out


# ---------- payloads (Binance's formats, bytes) ----------


def _levels_json(levels: Sequence[Level]) -> str:
    return ",".join(f'["{fmt8(p)}","{fmt8(q)}"]' for p, q in levels)


def depth_update_payload(
    symbol: str,
    event_time: int,
    first_id: int,
    final_id: int,
    bids: Sequence[Level],
    asks: Sequence[Level],
) -> bytes:
    """``{"e":"depthUpdate","E":..,"s":..,"U":..,"u":..,"b":[[p,q]..],"a":[[p,q]..]}``."""
    return (
        f'{{"e":"depthUpdate","E":{event_time},"s":"{symbol}","U":{first_id},"u":{final_id},'
        f'"b":[{_levels_json(bids)}],"a":[{_levels_json(asks)}]}}'
    ).encode()


def partial_depth_payload(update_id: int, bids: Sequence[Level], asks: Sequence[Level]) -> bytes:
    """``{"lastUpdateId":..,"bids":[[p,q]..],"asks":[[p,q]..]}`` (partial book stream, REST)."""
    return (
        f'{{"lastUpdateId":{update_id},"bids":[{_levels_json(bids)}],'
        f'"asks":[{_levels_json(asks)}]}}'
    ).encode()


def book_ticker_payload(book: L2Book) -> bytes | None:
    """``{"u":..,"s":..,"b":..,"B":..,"a":..,"A":..}`` from the book's best levels."""
    bid, ask = book.best_bid(), book.best_ask()
    if bid is None or ask is None:
        return None
    return (
        f'{{"u":{book.update_id},"s":"{book.symbol}","b":"{fmt8(bid[0])}","B":"{fmt8(bid[1])}",'
        f'"a":"{fmt8(ask[0])}","A":"{fmt8(ask[1])}"}}'
    ).encode()


# ---------- the synthetic makers ----------


class SyntheticBook:
    """The makers' side of one synthetic symbol (see the module docstring).

    Hot path (once per generated order): the events are applied inline (:meth:`_ev`), not
    through :meth:`L2Book.event`; the book has no diff buffers, and its journal is the order's.
    """

    __slots__ = ("book", "fair", "gap", "levels", "mean_qty", "rng", "step", "tick")

    def __init__(
        self,
        symbol: str,
        tick: int,
        step: int,
        rng: random.Random,
        fair: int,
        sigma_ticks: float,
        mean_trade_steps: float,
        update_id: int,
        levels: int = DEFAULT_LEVELS,
    ) -> None:
        self.tick = tick
        self.step = step
        self.rng = rng
        self.levels = max(1, levels)
        self.gap = max(1, round(sigma_ticks))
        self.mean_qty = mean_trade_steps * 6  # a resting order is larger than a typical taker
        self.book = L2Book(symbol, update_id)
        self.fair = fair
        self.requote(fair)  # the opening book (before any stream: no journal)

    def _ev(self, is_bid: bool, price: int, qty: int) -> None:
        """One event on the maker's book: :meth:`L2Book.event` without buffers."""
        book = self.book
        j = book.journal
        if j is not None:
            j.append((is_bid, price, qty))
        if is_bid:
            side, prices = book.bids, book._bp
        else:
            side, prices = book.asks, book._ap
        if qty > 0:
            if price not in side:
                bisect.insort(prices, price)
            side[price] = qty
        elif price in side:
            del side[price]
            del prices[bisect.bisect_left(prices, price)]
        book.update_id += 1

    def _add(self, is_bid: bool, price: int) -> None:
        side = self.book.bids if is_bid else self.book.asks
        qty = (int(-_log(1.0 - self.rng.random()) * self.mean_qty) + 1) * self.step
        self._ev(is_bid, price, side.get(price, 0) + qty)

    def requote(self, fair: int) -> None:
        """Steps 1-4 of the module docstring around the fair price ``fair`` (in ticks)."""
        book, rng, tick, gap = self.book, self.rng, self.tick, self.gap
        bp, ap = book._bp, book._ap
        ev, add = self._ev, self._add
        self.fair = fair
        f = fair * tick
        while ap and ap[0] <= f:  # 1. stale quotes
            ev(False, ap[0], 0)
        while bp and bp[-1] > f:
            ev(True, bp[-1], 0)
        rnd = rng.random
        if bp and ap:  # 2. churn near the top
            if rnd() < 0.5:
                if rnd() < 0.5:
                    add(True, bp[-1 - int(rnd() * min(len(bp), 10))])
                else:
                    add(False, ap[int(rnd() * min(len(ap), 10))])
            if rnd() < 0.25:
                is_bid = rnd() < 0.5
                prices = bp if is_bid else ap
                if len(prices) > 1:
                    k = int(rnd() * min(len(prices), 10))
                    p = prices[-1 - k] if is_bid else prices[k]
                    q = (book.bids if is_bid else book.asks)[p]
                    cut = (int(rnd() * (q // self.step)) + 1) * self.step
                    ev(is_bid, p, max(0, q - cut))
        if not bp or not ap or bp[-1] < (fair - gap) * tick or ap[0] > (fair + 1 + gap) * tick:
            self._holes(fair)  # 3.
        # 4. depth: new levels beyond the worst, the farthest cancelled over levels * 5/4
        target = self.levels
        if len(bp) < target:
            tries = 2 * target
            while len(bp) < target and tries > 0:
                tries -= 1
                p = bp[0] // tick - 1 - int(-_log(1.0 - rnd()) * gap)
                if p < 1:
                    break
                add(True, p * tick)
        while len(ap) < target:
            add(False, (ap[-1] // tick + 1 + int(-_log(1.0 - rnd()) * gap)) * tick)
        most = target + target // 4
        while len(bp) > most:
            ev(True, bp[0], 0)
        while len(ap) > most:
            ev(False, ap[-1], 0)

    def _holes(self, fair: int) -> None:
        """Step 3: holes at the top filled with levels placed uniformly between the fair price
        and the best level."""
        book, tick, gap, rnd = self.book, self.tick, self.gap, self.rng.random
        bp, ap = book._bp, book._ap
        lo = max(1, fair - gap)
        while fair >= 1 and (not bp or bp[-1] < lo * tick):
            best = bp[-1] // tick if bp else max(0, fair - 2 * gap)
            self._add(True, (best + 1 + int(rnd() * (fair - best))) * tick)
        hi = fair + 1 + gap
        while not ap or ap[0] > hi * tick:
            best = ap[0] // tick if ap else fair + 1 + 2 * gap
            self._add(False, (fair + 1 + int(rnd() * (best - fair - 1))) * tick)

    def take(self, buy: bool, qtys: list[int]) -> tuple[int, list[int]]:
        """A taker order against the best level of the other side: (price, the trades' quantities,
        cut to the level's quantity); the level loses that quantity (or goes)."""
        book = self.book
        if buy:
            price = book._ap[0]
            level = book.asks[price]
        else:
            price = book._bp[-1]
            level = book.bids[price]
        out: list[int] = []
        left = level
        for q in qtys:
            if q >= left:
                out.append(left)
                left = 0
                break
            out.append(q)
            left -= q
        self._ev(not buy, price, left)
        if not (book._ap if buy else book._bp):  # that was the side's last level: never empty
            self._holes(self.fair)
        return price, out


# ---------- replayed books ----------


@dataclass(slots=True)
class _Pending:
    diffs: list[tuple[int, int, list[Level], list[Level]]] = field(default_factory=list)


class ReplayDepth:
    """Books rebuilt from a recording's snapshot line(s) and diffs (see the module docstring)."""

    MAX_BUFFERED = 10_000  # diffs kept per symbol while waiting for its snapshot

    def __init__(self, buffers: int = 0) -> None:
        self.books: dict[str, L2Book] = {}
        self.breaks = 0
        self.buffers = buffers
        self._pending: dict[str, _Pending] = {}
        self._origin: dict[str, int] = {}  # lastUpdateId of the snapshot each book started from
        self._snapshots: list[tuple[int, list[Level], list[Level]]] = []

    def on_snapshot(self, last_id: int, bids: list[Level], asks: list[Level]) -> str | None:
        """A REST snapshot line; the symbol it was matched to (None: not yet)."""
        snap = (last_id, bids, asks)
        for sym, pend in self._pending.items():
            if any(u_ >= last_id + 1 >= u0 for u0, u_, _b, _a in pend.diffs):
                self._sync(sym, snap)
                return sym
        self._snapshots.append(snap)
        return None

    def on_diff(
        self, symbol: str, first_id: int, final_id: int, bids: list[Level], asks: list[Level]
    ) -> None:
        book = self.books.get(symbol)
        if book is not None and final_id < self._origin[symbol]:
            # older than the snapshot the book was built from: a new chain (a looped replay
            # starting over); no book until a snapshot fits it
            del self.books[symbol]
            book = None
        if book is not None:
            if final_id <= book.update_id:
                return  # already in the book
            if first_id > book.update_id + 1:  # (the first one after the snapshot may overlap)
                self.breaks += 1
            book.apply_diff(first_id, final_id, bids, asks)
            return
        pend = self._pending.setdefault(symbol, _Pending())
        pend.diffs.append((first_id, final_id, bids, asks))
        if len(pend.diffs) > self.MAX_BUFFERED:
            del pend.diffs[0]
        for i, snap in enumerate(self._snapshots):
            if first_id <= snap[0] + 1 <= final_id:
                del self._snapshots[i]
                self._sync(symbol, snap)
                return

    def _sync(self, symbol: str, snap: tuple[int, list[Level], list[Level]]) -> None:
        last_id, bids, asks = snap
        book = L2Book(symbol, last_id, self.buffers)
        book.load(last_id, bids, asks)
        self.books[symbol] = book
        self._origin[symbol] = last_id
        pend = self._pending.pop(symbol, None)
        for u0, u_, b, a in pend.diffs if pend is not None else ():
            if u_ > book.update_id:
                book.apply_diff(u0, u_, b, a)
