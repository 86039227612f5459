"""Turning a fetched batch of ``raw.depth`` records into one Redis apply of the books (sans-I/O).

The processor keeps a copy (:class:`BookMirror`) of every book it has touched, exactly as Redis
holds it: loaded from Redis the first time a symbol appears, changed together with each apply
sent, dropped whenever an apply is refused (its offsets were not what we believed: another
member applied meanwhile, or Redis lost data) and then loaded again. The fold runs the chain
rule of :class:`cryptostream.core.depth.TopicBook` on that copy record by record (stale diffs,
gaps, the first-diff rule, a crossed book after a diff), so the script only has to apply the net
result of the batch: per symbol the levels that changed (old member out, new member in; the
whole sides after a snapshot) and the new book hash, fenced by the per-partition offsets
(apply_books.lua). A level that changes 50 times in a batch costs Redis one ZREM and one ZADD.

Where the time goes, and why it is shaped so (``nox -s bench_books``): a diff's levels never go
through a Python loop. Decoding maps its price texts to level keys through a cache (a text in
it was validated before) and checks its quantity texts against a set of validated ones; the
fold writes a diff's ``(key, level)`` pairs into a per-batch overlay with one ``dict.update``
(the last write per level wins, as it must), and only the overlay's distinct levels are turned
into members, once per batch. The crossed-book check after each diff needs no sorted side: the
fold keeps a bound per side (no bid above the bid bound, no ask below the ask bound) and moves
it with ``max``/``min`` of the diff's keys; only when the bounds meet does it settle the overlay
and look at the actual best levels.

Levels are keyed by :func:`~cryptostream.core.keys.level_key` (fixed width, so string order is
price order and ``"1.50"``/``"1.5"`` are one level) and keep the exchange's own text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Annotated, Final, Literal, cast

import msgspec

from cryptostream.core.depth import (
    SCHEMA_VERSION,
    DepthRecordError,
    DiffRecord,
    SnapshotRecord,
    decode_depth,
)
from cryptostream.core.keys import (
    BOOK_CHANNEL,
    BOOK_SNAPSHOT_FIELD,
    book_apply_keys,
    book_update,
    level_key,
    parse_level_member,
)
from cryptostream.core.orderbook import Level
from cryptostream.core.symbols import SYMBOL_PATTERN
from cryptostream.core.trades import MAX_ID, MAX_TIME_MS, MAX_TIME_US
from cryptostream.processor.batch import NO_OFFSET, Poison, RawRecord

SYNCED: Final = "synced"
UNSYNCED: Final = "unsynced"
NO_SNAPSHOT: Final = "no snapshot yet"
NO_BID: Final = ""  # the bid bound of an empty side: below every level key
NO_ASK: Final = "~"  # the ask bound of an empty side: above every level key (digits, ".")

_KEY_CACHE: dict[str, str] = {}  # validated price text -> level key (a book's prices repeat)
_KEY_CACHE_MAX = 1 << 20
_QTY_CACHE: set[str] = set()  # validated quantity texts (a book's quantities repeat too)
_QTY_CACHE_MAX = 1 << 18
_PLAIN = r"[0-9]{1,20}(?:\.[0-9]{1,20})?"  # a plain decimal of the schema
_POSITIVE = rf"(?=[0-9.]*[1-9]){_PLAIN}"  # ... above 0
# every price (or quantity) text of a diff at once, joined by newlines (one C call, no Python
# loop per level)
_PRICES = re.compile(rf"{_POSITIVE}(?:\n{_POSITIVE})*")
_QTYS = re.compile(rf"{_PLAIN}(?:\n{_PLAIN})*")
_Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
_price = itemgetter(0)
_qty = itemgetter(1)


def _all_match(texts: Sequence[str], pattern: re.Pattern[str]) -> bool:
    """Each text matches the item pattern (the newline count rules out texts that hold one)."""
    if not texts:
        return True
    joined = "\n".join(texts)
    return joined.count("\n") == len(texts) - 1 and pattern.fullmatch(joined) is not None


class Diff(msgspec.Struct, gc=False):
    """A decoded diff as the fold needs it (levels are ``(price, qty)`` pairs): also the hot
    path's schema, whose structure, types and integer bounds msgspec checks in one pass; the
    decimal texts are checked by :func:`_level_keys` and :func:`_valid_qtys`."""

    v: int
    kind: Literal["diff"]
    symbol: Annotated[str, msgspec.Meta(pattern=SYMBOL_PATTERN)]
    first_id: _Id
    final_id: _Id
    event_time: Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_MS)]
    bids: Sequence[Level]
    asks: Sequence[Level]
    ingest_time_us: Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_US)]
    exchange: str = "binance"


# A validated diff with the level key of each of its bids and asks, in their order.
KeyedDiff = tuple[Diff, list[str], list[str]]
Decoded = KeyedDiff | SnapshotRecord
_decode_diff = msgspec.json.Decoder(Diff).decode


def _level_keys(levels: Sequence[Level]) -> list[str] | None:
    """The level key of each price, None if a price is not a positive plain decimal. Known
    texts are one dict lookup each, in C; unknown ones are validated (one regex for all) and
    remembered."""
    cache = _KEY_CACHE
    found = [*map(cache.get, map(_price, levels))]
    if None not in found:
        return cast(list[str], found)
    prices = [*map(_price, levels)]
    if not _all_match(prices, _PRICES):
        return None
    if len(cache) >= _KEY_CACHE_MAX:
        cache.clear()
    for price in prices:
        if price not in cache:
            cache[price] = level_key(price)
    return [*map(cache.__getitem__, prices)]


def _valid_qtys(levels: Sequence[Level]) -> bool:
    """Every quantity is a plain decimal: known texts by one set lookup each, in C; unknown ones
    by one regex over all of them, and then remembered."""
    known = _QTY_CACHE
    if known.issuperset(map(_qty, levels)):
        return True
    new = [*{*map(_qty, levels)}.difference(known)]
    if not _all_match(new, _QTYS):
        return False
    if len(known) >= _QTY_CACHE_MAX:
        known.clear()
    known.update(new)
    return True


def decode_record(value: bytes | None) -> Decoded:
    """One ``raw.depth`` value for the fold; DepthRecordError with the reason.

    The hot path decodes diffs with msgspec and checks their texts through the caches above,
    which accept only what :func:`~cryptostream.core.depth.decode_depth` accepts
    (property-tested); anything else (snapshots, levels with extra elements, every refusal)
    goes through decode_depth itself, which says what is wrong."""
    if value is not None:
        try:
            r = _decode_diff(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:
            if r.v == SCHEMA_VERSION and r.first_id <= r.final_id:
                bid_keys, ask_keys = _level_keys(r.bids), _level_keys(r.asks)
                if (
                    bid_keys is not None
                    and ask_keys is not None
                    and _valid_qtys(r.bids)
                    and _valid_qtys(r.asks)
                ):
                    r.symbol = r.symbol.upper()
                    return r, bid_keys, ask_keys
    record = decode_depth(value)
    if isinstance(record, DiffRecord):
        d = record.diff
        diff = Diff(
            SCHEMA_VERSION,
            "diff",
            d.symbol,
            d.first_id,
            d.final_id,
            d.event_time,
            d.bids,
            d.asks,
            record.ingest_time_us,
            record.exchange,
        )
        return (
            diff,
            [*map(_level_key, map(_price, d.bids))],
            [*map(_level_key, map(_price, d.asks))],
        )
    return record


def _level_key(price: str) -> str:
    """level_key through the cache (for texts decode_depth validated)."""
    key = _KEY_CACHE.get(price)
    if key is None:
        if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
            _KEY_CACHE.clear()
        key = _KEY_CACHE[price] = level_key(price)
    return key


def _member(key: str, price: str, qty: str) -> str:
    """:func:`~cryptostream.core.keys.level_member` for a price whose key is known."""
    return f"{key} {price} {qty}"


def _settle(
    side: dict[str, str], overlay: dict[str, Level], before: dict[str, str | None] | None
) -> None:
    """Write a side's overlay (key -> newest level of the batch so far) into the side; record in
    ``before`` each changed level's member from before the batch (None: it had none)."""
    get, pop = side.get, side.pop
    if before is None:  # after a snapshot in this batch: the whole side is written anyway
        for key, (price, qty) in overlay.items():
            if qty.strip("0."):  # a quantity above 0 (the text is a validated plain decimal)
                side[key] = f"{key} {price} {qty}"
            else:
                pop(key, None)
    else:
        keep = before.setdefault
        for key, (price, qty) in overlay.items():
            keep(key, get(key))
            if qty.strip("0."):
                side[key] = f"{key} {price} {qty}"
            else:
                pop(key, None)
    overlay.clear()


def _best_bid(bids: dict[str, str], bound: str) -> str:
    """The highest bid key (NO_BID if none), given a bound no bid is above."""
    return bound if bound in bids else max(bids, default=NO_BID)


def _best_ask(asks: dict[str, str], bound: str) -> str:
    return bound if bound in asks else min(asks, default=NO_ASK)


@dataclass
class BookMirror:
    """One symbol's book as Redis holds it (the processor's copy): each side maps level key ->
    stored member (``<key> <price> <qty>``). ``best_bid``/``best_ask`` are the best keys
    (NO_BID/NO_ASK for an empty side) whenever the fold is not running."""

    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    best_bid: str = NO_BID
    best_ask: str = NO_ASK
    last_update_id: int = -1
    snapshot_id: int = -1
    synced: bool = False
    reason: str = NO_SNAPSHOT
    stored: bool = False  # Redis has a book hash for the symbol

    @classmethod
    def from_redis(cls, state: dict[str, str], bids: list[str], asks: list[str]) -> BookMirror:
        """The copy of a stored book: its hash and the members of its two sets."""

        def levels(members: list[str]) -> dict[str, str]:
            out = {}
            for member in members:
                price, _qty = parse_level_member(member)
                out[level_key(price)] = member
            return out

        if not state:
            return cls()
        book = cls(
            bids=levels(bids),
            asks=levels(asks),
            last_update_id=int(state.get("last_update_id", -1)),
            snapshot_id=int(state.get(BOOK_SNAPSHOT_FIELD, -1)),
            synced=state.get("status") == SYNCED,
            reason=state.get("reason", ""),
            stored=True,
        )
        book.best_bid = max(book.bids, default=NO_BID)
        book.best_ask = min(book.asks, default=NO_ASK)
        return book

    def crossed(self) -> bool:
        return bool(self.bids and self.asks and max(self.bids) >= min(self.asks))

    def levels(self, side: str) -> list[Level]:
        """(price, qty) of one side, best first (for tests and the checker)."""
        book = self.bids if side == "bids" else self.asks
        return [_split(book[k]) for k in sorted(book, reverse=side == "bids")]

    def best(self, side: str) -> Level | None:
        """The best level of one side as (price, qty), None if the side is empty."""
        key, levels = (self.best_bid, self.bids) if side == "bids" else (self.best_ask, self.asks)
        member = levels.get(key)
        return None if member is None else _split(member)


def _split(member: str) -> Level:
    _key, price, qty = member.split(" ")
    return price, qty


@dataclass
class _SymbolChanges:
    """What one batch did to one symbol's book."""

    replaced: bool = False  # a snapshot: both sets are rewritten whole
    bids: dict[str, str | None] = field(default_factory=dict)  # key -> member before the batch
    asks: dict[str, str | None] = field(default_factory=dict)
    changed: bool = False  # anything to write (levels or state)
    event_time: int | None = None  # of the newest applied diff
    ingest_us: int = 0  # of the newest applied record


class _SymbolFold:
    """One symbol's part of a batch while it folds, record by record in topic order.

    The overlays hold the levels written since they were last settled into the book; the
    bounds stay valid throughout (a bid bound at or above every bid of book + overlay, an ask
    bound at or below every ask), and are the best keys again after :meth:`finish`."""

    __slots__ = (
        "ask_bound",
        "before_asks",
        "before_bids",
        "bid_bound",
        "book",
        "changes",
        "over_asks",
        "over_bids",
    )

    def __init__(self, book: BookMirror) -> None:
        self.book = book
        self.changes = _SymbolChanges(changed=not book.stored)
        self.over_bids: dict[str, Level] = {}
        self.over_asks: dict[str, Level] = {}
        self.bid_bound, self.ask_bound = book.best_bid, book.best_ask
        # where settling records the members from before the batch (None after a snapshot)
        self.before_bids: dict[str, str | None] | None = self.changes.bids
        self.before_asks: dict[str, str | None] | None = self.changes.asks

    def snapshot(self, record: SnapshotRecord) -> str:
        book, ch, snap = self.book, self.changes, record.snapshot
        self.over_bids.clear()
        self.over_asks.clear()
        book.bids = {(k := _level_key(p)): f"{k} {p} {q}" for p, q in snap.bids}
        book.asks = {(k := _level_key(p)): f"{k} {p} {q}" for p, q in snap.asks}
        self.bid_bound = max(book.bids, default=NO_BID)
        self.ask_bound = min(book.asks, default=NO_ASK)
        book.last_update_id = book.snapshot_id = snap.last_update_id
        book.synced, book.reason = True, ""
        ch.replaced = ch.changed = True
        ch.bids.clear()
        ch.asks.clear()
        self.before_bids = self.before_asks = None
        ch.event_time, ch.ingest_us = None, record.ingest_time_us
        return "snapshot"

    def diff(self, diff: Diff, bid_keys: list[str], ask_keys: list[str]) -> str | None:
        """Apply one diff; returns its outcome, or None for a break (the caller says why)."""
        book = self.book
        if not book.synced:
            return "unsynced"
        last = book.last_update_id
        if diff.final_id <= last:
            return "stale"
        ch = self.changes
        ch.changed = True
        ch.ingest_us = diff.ingest_time_us
        if last == book.snapshot_id:  # fresh: the first diff after the snapshot spans its id
            if not diff.first_id <= last + 1:
                return None
        elif diff.first_id != last + 1:
            return None
        if bid_keys:
            self.over_bids.update(
                zip(bid_keys, diff.bids, strict=True)
            )  # in order: the last write wins
            top = max(bid_keys)
            if top > self.bid_bound:
                self.bid_bound = top
        if ask_keys:
            self.over_asks.update(zip(ask_keys, diff.asks, strict=True))
            low = min(ask_keys)
            if low < self.ask_bound:
                self.ask_bound = low
        book.last_update_id = diff.final_id
        ch.event_time = diff.event_time
        if self.bid_bound >= self.ask_bound:  # the bounds meet: look at the book itself
            self.finish()
            if self.bid_bound >= self.ask_bound:
                return "crossed"
        return "applied"

    def finish(self) -> None:
        """Settle the overlays into the book; the bounds are its best keys again."""
        book = self.book
        _settle(book.bids, self.over_bids, self.before_bids)
        _settle(book.asks, self.over_asks, self.before_asks)
        book.best_bid = self.bid_bound = _best_bid(book.bids, self.bid_bound)
        book.best_ask = self.ask_bound = _best_ask(book.asks, self.ask_bound)


@dataclass
class BookBatch:
    """One fetched batch of ``raw.depth``: offset span per partition, poison, and its records
    folded over the mirrors (see :meth:`add`, :meth:`missing`, :meth:`fold`)."""

    # the copies of the books: the records of a symbol that has one fold as they are added (so
    # that a record's objects die young); those of the others wait for fold()
    mirrors: dict[str, BookMirror] = field(default_factory=dict)
    parts: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]
    pending: dict[str, list[Decoded]] = field(default_factory=dict)  # symbol -> records
    partition_of: dict[str, int] = field(default_factory=dict)
    poison: list[Poison] = field(default_factory=list)
    records: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # TopicBook.apply outcome -> records
    breaks: list[tuple[str, str]] = field(default_factory=list)  # (symbol, reason)
    changes: dict[str, _SymbolChanges] = field(default_factory=dict)
    _folds: dict[str, _SymbolFold] = field(default_factory=dict)
    # symbol -> its home partition (core/keys.py); a record elsewhere is misrouted: poison
    home: Callable[[str], int] | None = None
    misrouted: int = 0

    def add(self, record: RawRecord) -> None:
        """Decode one record (one that is not a valid depth record becomes poison) and fold it
        into its symbol's mirror if there is one."""
        self.records += 1
        span = self.parts.get(record.partition)
        if span is None:
            self.parts[record.partition] = [record.offset, record.offset]
        else:
            span[1] = record.offset
        try:
            decoded = decode_record(record.value)
        except DepthRecordError as exc:
            self.poison.append(Poison(record, str(exc)))
            return
        except Exception as exc:  # the decoder has a bug: still never kill the batch
            self.poison.append(Poison(record, f"cannot decode: {type(exc).__name__}: {exc}"))
            return
        symbol = decoded[0].symbol if isinstance(decoded, tuple) else decoded.symbol
        if self.home is not None and self.home(symbol) != record.partition:
            # A book has one writer (its home partition's owner) and one order (its home
            # partition's): a record from elsewhere cannot be chained into it.
            self.misrouted += 1
            home = self.home(symbol)
            self.poison.append(Poison(record, f"misrouted: {symbol} belongs to partition {home}"))
            return
        self.partition_of[symbol] = record.partition
        fold = self._folds.get(symbol)
        if fold is None:
            book = self.mirrors.get(symbol)
            if book is None or symbol in self.pending:
                self.pending.setdefault(symbol, []).append(decoded)
                return
            fold = self._folds[symbol] = _SymbolFold(book)
            self.changes[symbol] = fold.changes
        self._apply(symbol, fold, decoded)

    def missing(self) -> list[str]:
        """The symbols whose records wait for a copy of their book (load it, then fold)."""
        return [s for s in self.pending if s not in self.mirrors]

    @property
    def records_by_symbol(self) -> dict[str, list[Decoded]]:
        """The records still to fold, per symbol (all of them if the batch had no mirrors)."""
        return self.pending

    def fold(self, mirrors: dict[str, BookMirror] | None = None) -> None:
        """Fold the records that waited (their mirrors must now be in ``mirrors``, by default
        the batch's own), and settle every symbol's net changes for the script."""
        if mirrors is not None:
            self.mirrors = mirrors
        for symbol, records in self.pending.items():
            fold = self._folds[symbol] = _SymbolFold(self.mirrors[symbol])
            self.changes[symbol] = fold.changes
            for record in records:
                self._apply(symbol, fold, record)
        self.pending = {}
        for fold in self._folds.values():
            fold.finish()

    def _apply(self, symbol: str, fold: _SymbolFold, record: Decoded) -> None:
        if isinstance(record, SnapshotRecord):
            outcome = fold.snapshot(record)
        else:
            diff, bid_keys, ask_keys = record
            last = fold.book.last_update_id
            result = fold.diff(diff, bid_keys, ask_keys)
            if result is None:
                if last == fold.book.snapshot_id:
                    want = f"first_id <= {last + 1} <= final_id"
                else:
                    want = f"first_id == {last + 1}"
                got = f"{diff.first_id}..{diff.final_id}"
                self._break(symbol, fold.book, f"update-id gap: expected {want}, got {got}")
                outcome = "break"
            elif result == "crossed":
                self._break(symbol, fold.book, f"crossed book after update {diff.final_id}")
                outcome = "break"
            else:
                outcome = result
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def _break(self, symbol: str, book: BookMirror, reason: str) -> None:
        book.synced, book.reason = False, reason
        self.breaks.append((symbol, reason))

    # --- the script call -----------------------------------------------------------------------
    def script_call(
        self,
        topic: str,
        positions: dict[int, int],
        now_ms: int,
        mirrors: dict[str, BookMirror],
        partitions: int,
        partition: int | None = None,
    ) -> tuple[list[str], list[str | bytes]]:
        """``KEYS`` and ``ARGV`` of apply_books.lua for one partition of the batch (after
        :meth:`fold`; ``partition`` None: the batch's only one; the ARGV layout is described
        there): its fence and its symbols, all under its hash tag (core/keys.py).
        ``positions`` = the last applied offset of each partition, as this process believes;
        ``partitions``: the layout's partition count."""
        if partition is None:
            (partition,) = self.parts
        symbols = [
            s
            for s, ch in self.changes.items()
            if ch.changed and self.partition_of.get(s) == partition
        ]
        last = self.parts[partition][1]
        args: list[str | bytes] = [BOOK_CHANNEL, "1"]
        args += (str(partition), str(positions.get(partition, NO_OFFSET)), str(last))
        for symbol in symbols:
            self._symbol_args(args, symbol, self.changes[symbol], mirrors[symbol], now_ms)
        return book_apply_keys(topic, partition, symbols, partitions), args

    @staticmethod
    def _symbol_args(
        args: list[str | bytes], symbol: str, ch: _SymbolChanges, book: BookMirror, now_ms: int
    ) -> None:
        state, gone = BookBatch.state(book, ch, now_ms)
        hash_args = [x for pair in state.items() for x in pair]
        out: list[list[str]] = []  # bid members out, ask members out
        into: list[list[str]] = []  # bid score/member pairs in, ask pairs
        for levels, before in ((book.bids, ch.bids), (book.asks, ch.asks)):
            removed: list[str] = []
            added: list[str] = []
            if ch.replaced:
                for member in levels.values():
                    added += ("0", member)
            else:
                get = levels.get
                for key, old in before.items():
                    new = get(key)
                    if new != old:
                        if old is not None:
                            removed.append(old)
                        if new is not None:
                            added += ("0", new)
            out.append(removed)
            into.append(added)
        args += (
            "1" if ch.replaced else "0",
            str(len(hash_args)),
            str(len(gone)),
            str(len(out[0])),
            str(len(out[1])),
            str(len(into[0])),
            str(len(into[1])),
            book_update(symbol, state),
            *hash_args,
            *gone,
            *out[0],
            *out[1],
            *into[0],
            *into[1],
        )

    @staticmethod
    def state(
        book: BookMirror, ch: _SymbolChanges, now_ms: int
    ) -> tuple[dict[str, str], list[str]]:
        """The book hash after the batch (BOOK_FIELDS + snapshot_id) and the fields it lacks."""
        state = {
            "last_update_id": str(book.last_update_id),
            BOOK_SNAPSHOT_FIELD: str(book.snapshot_id),
            "status": SYNCED if book.synced else UNSYNCED,
        }
        gone = []
        if book.synced:
            gone.append("reason")
        else:
            state["reason"] = book.reason
        for name, side in (("bid", "bids"), ("ask", "asks")):
            best = book.best(side)
            if best is None:
                gone += (f"best_{name}", f"best_{name}_qty")
            else:
                state[f"best_{name}"], state[f"best_{name}_qty"] = best
        if ch.event_time is not None:
            state["event_time"] = str(ch.event_time)
        elif ch.replaced:
            gone.append("event_time")  # a snapshot carries no event time
        if ch.ingest_us:
            state["ingest_time_us"] = str(ch.ingest_us)
        state["update_time"] = str(now_ms)
        return state, gone


def parse_book_conflicts(reply: list[object]) -> dict[int, int]:
    """``{0, partition, stored, ...}`` -> {partition: stored offset (-1 = none)}."""
    items = [int(x.decode() if isinstance(x, bytes) else str(x)) for x in reply[1:]]
    return dict(zip(items[::2], items[1::2], strict=True))
