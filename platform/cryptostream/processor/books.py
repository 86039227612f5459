"""Turning a fetched batch of ``raw.depth`` records into one Redis apply of the books (sans-I/O).

The processor keeps a copy (:class:`BookMirror`) of every book it has touched, exactly as Redis
holds it: loaded from Redis the first time a symbol appears, changed only together with a
successful apply, dropped whenever an apply is refused (its offsets were not what we believed:
another member applied meanwhile, or Redis lost data) and then loaded again. The fold runs the
chain rule of :class:`cryptostream.core.depth.TopicBook` on that copy record by record (stale
diffs, gaps, the first-diff rule, a crossed book after a diff), so the script only has to apply
the net result of the batch: per symbol the levels that changed (old member out, new member in;
the whole sides after a snapshot) and the new book hash, fenced by the per-partition offsets
(apply_books.lua). A level that changes 50 times in a batch costs Redis one ZREM and one ZADD.

Levels are keyed by :func:`~cryptostream.core.keys.level_key` (fixed width, so string order is
price order and ``"1.50"``/``"1.5"`` are one level) and keep the exchange's own text.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Final, Literal

import msgspec
import orjson

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
_INVERT = str.maketrans("0123456789", "9876543210")  # bids: a min-heap of inverted keys
_CHUNK = 1000  # members per ZADD/ZREM call in the script (Lua's unpack has a stack limit)


_KEY_CACHE: dict[str, str] = {}  # price text -> level key (a book's prices repeat)
_KEY_CACHE_MAX = 1 << 20
_PLAIN = r"[0-9]{1,20}(?:\.[0-9]{1,20})?"  # a plain decimal of the schema
_POSITIVE = rf"(?=[0-9.]*[1-9]){_PLAIN}"  # ... above 0
# every price (or quantity) text of a diff at once, joined by newlines (one C call, no Python
# loop per level)
_PRICES = re.compile(rf"{_POSITIVE}(?:\n{_POSITIVE})*")
_QTYS = re.compile(rf"{_PLAIN}(?:\n{_PLAIN})*")
_Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]


def _all_match(texts: tuple[str, ...], pattern: re.Pattern[str]) -> bool:
    """Each text matches the item pattern (the newline count rules out texts that hold one)."""
    if not texts:
        return True
    joined = "\n".join(texts)
    return joined.count("\n") == len(texts) - 1 and pattern.fullmatch(joined) is not None


class Diff(msgspec.Struct):
    """A decoded diff as the fold needs it (levels are ``(price, qty)`` pairs): also the hot
    path's schema, whose structure, types and integer bounds msgspec checks in one pass; the
    decimal texts are checked by :func:`_all_match`."""

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


Decoded = Diff | SnapshotRecord
_decode_diff = msgspec.json.Decoder(Diff).decode


def decode_record(value: bytes | None) -> Decoded:
    """One ``raw.depth`` value for the fold; DepthRecordError with the reason.

    The hot path decodes diffs with msgspec and two regular expressions, which accept only what
    :func:`~cryptostream.core.depth.decode_depth` accepts (property-tested); anything else
    (snapshots, levels with extra elements, every refusal) goes through decode_depth itself,
    which says what is wrong."""
    if value is not None:
        try:
            r = _decode_diff(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:
            bids, asks = r.bids, r.asks
            bid_prices, bid_qtys = zip(*bids, strict=True) if bids else ((), ())
            ask_prices, ask_qtys = zip(*asks, strict=True) if asks else ((), ())
            if (
                r.v == SCHEMA_VERSION
                and r.first_id <= r.final_id
                and _all_match(bid_prices + ask_prices, _PRICES)
                and _all_match(bid_qtys + ask_qtys, _QTYS)
            ):
                r.symbol = r.symbol.upper()
                return r
    record = decode_depth(value)
    if isinstance(record, DiffRecord):
        d = record.diff
        return Diff(
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
    return record


def _level_key(price: str) -> str:
    key = _KEY_CACHE.get(price)
    if key is None:
        if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
            _KEY_CACHE.clear()
        key = _KEY_CACHE[price] = level_key(price)
    return key


class _Side:
    """One side of a book: level key -> (price, qty), with a lazy heap for its best level."""

    __slots__ = ("heap", "invert", "levels")

    def __init__(self, invert: bool, levels: dict[str, Level] | None = None) -> None:
        self.invert = invert
        self.levels: dict[str, Level] = levels or {}
        self.heap: list[str] = []
        self._rebuild()

    def _rebuild(self) -> None:
        keys = self.levels.keys()
        self.heap = [k.translate(_INVERT) for k in keys] if self.invert else list(keys)
        heapq.heapify(self.heap)

    def reset(self, levels: dict[str, Level]) -> None:
        self.levels = levels
        self._rebuild()

    def best(self) -> str | None:
        """The best level's key (highest bid, lowest ask), None if the side is empty."""
        heap, levels = self.heap, self.levels
        while heap:
            top = heap[0].translate(_INVERT) if self.invert else heap[0]
            if top in levels:
                return top
            heapq.heappop(heap)
        return None

    def apply(self, changes: Sequence[Level], touched: dict[str, Level | None]) -> None:
        levels, cache = self.levels, _KEY_CACHE
        for price, qty in changes:
            key = cache.get(price) or _level_key(price)
            old = levels.get(key)
            touched.setdefault(key, old)
            if qty.strip("0."):  # a quantity above 0 (the text is a validated plain decimal)
                if old is None:
                    heapq.heappush(self.heap, key.translate(_INVERT) if self.invert else key)
                levels[key] = (price, qty)
            elif old is not None:
                del levels[key]
        if len(self.heap) > 2 * len(levels) + 64:  # stale entries of removed levels
            self._rebuild()


@dataclass
class BookMirror:
    """One symbol's book as Redis holds it (the processor's copy)."""

    bids: _Side = field(default_factory=lambda: _Side(True))
    asks: _Side = field(default_factory=lambda: _Side(False))
    last_update_id: int = -1
    snapshot_id: int = -1
    synced: bool = False
    reason: str = NO_SNAPSHOT
    stored: bool = False  # Redis has a book hash for the symbol

    @classmethod
    def from_redis(cls, state: dict[str, str], bids: list[str], asks: list[str]) -> BookMirror:
        """The copy of a stored book: its hash and the members of its two sets."""

        def levels(members: list[str]) -> dict[str, Level]:
            out = {}
            for member in members:
                price, qty = parse_level_member(member)
                out[level_key(price)] = (price, qty)
            return out

        if not state:
            return cls()
        return cls(
            bids=_Side(True, levels(bids)),
            asks=_Side(False, levels(asks)),
            last_update_id=int(state.get("last_update_id", -1)),
            snapshot_id=int(state.get(BOOK_SNAPSHOT_FIELD, -1)),
            synced=state.get("status") == SYNCED,
            reason=state.get("reason", ""),
            stored=True,
        )

    def crossed(self) -> bool:
        bid, ask = self.bids.best(), self.asks.best()
        return bid is not None and ask is not None and bid >= ask

    def levels(self, side: str) -> list[Level]:
        """(price, qty) of one side, best first (for tests and the checker)."""
        book = self.bids if side == "bids" else self.asks
        return [book.levels[k] for k in sorted(book.levels, reverse=side == "bids")]


@dataclass
class _SymbolChanges:
    """What one batch did to one symbol's book."""

    replaced: bool = False  # a snapshot: both sets are rewritten whole
    bids: dict[str, Level | None] = field(default_factory=dict)  # key -> level before the batch
    asks: dict[str, Level | None] = field(default_factory=dict)
    changed: bool = False  # anything to write (levels or state)
    event_time: int | None = None  # of the newest applied diff
    ingest_us: int = 0  # of the newest applied record


def _member(key: str, level: Level) -> str:
    return f"{key} {level[0]} {level[1]}"


@dataclass
class BookBatch:
    """One fetched batch of ``raw.depth``: offset span per partition, decoded records per symbol
    (in topic order), poison; then :meth:`fold` runs them over the mirrors."""

    parts: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]
    records_by_symbol: dict[str, list[Decoded]] = field(default_factory=dict)
    partition_of: dict[str, int] = field(default_factory=dict)
    poison: list[Poison] = field(default_factory=list)
    records: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # TopicBook.apply outcome -> records
    breaks: list[tuple[str, str]] = field(default_factory=list)  # (symbol, reason)
    changes: dict[str, _SymbolChanges] = field(default_factory=dict)
    # symbol -> its home partition (core/keys.py); a record elsewhere is misrouted: poison
    home: Callable[[str], int] | None = None
    misrouted: int = 0

    def add(self, record: RawRecord) -> None:
        """Decode one record; one that is not a valid depth record becomes poison."""
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
        if self.home is not None and self.home(decoded.symbol) != record.partition:
            # A book has one writer (its home partition's owner) and one order (its home
            # partition's): a record from elsewhere cannot be chained into it.
            self.misrouted += 1
            home = self.home(decoded.symbol)
            self.poison.append(
                Poison(record, f"misrouted: {decoded.symbol} belongs to partition {home}")
            )
            return
        self.records_by_symbol.setdefault(decoded.symbol, []).append(decoded)
        self.partition_of[decoded.symbol] = record.partition

    def fold(self, mirrors: dict[str, BookMirror]) -> None:
        """Apply every record to its symbol's mirror (which must be present: loaded from Redis)
        with TopicBook's rule, recording the net changes for the script."""
        counts = self.counts
        for symbol, records in self.records_by_symbol.items():
            book = mirrors[symbol]
            ch = self.changes[symbol] = _SymbolChanges(changed=not book.stored)
            for record in records:
                outcome = self._apply(symbol, book, ch, record)
                counts[outcome] = counts.get(outcome, 0) + 1

    def _apply(self, symbol: str, book: BookMirror, ch: _SymbolChanges, record: Decoded) -> str:
        if isinstance(record, SnapshotRecord):
            snap = record.snapshot
            book.bids.reset({level_key(p): (p, q) for p, q in snap.bids})
            book.asks.reset({level_key(p): (p, q) for p, q in snap.asks})
            book.last_update_id = book.snapshot_id = snap.last_update_id
            book.synced, book.reason = True, ""
            ch.replaced = ch.changed = True
            ch.bids.clear()
            ch.asks.clear()
            ch.event_time, ch.ingest_us = None, record.ingest_time_us
            return "snapshot"
        diff, last = record, book.last_update_id
        if not book.synced:
            return "unsynced"
        if diff.final_id <= last:
            return "stale"
        fresh = last == book.snapshot_id
        fits = diff.first_id <= last + 1 if fresh else diff.first_id == last + 1
        ch.changed = True
        ch.ingest_us = record.ingest_time_us
        if not fits:
            want = f"first_id <= {last + 1} <= final_id" if fresh else f"first_id == {last + 1}"
            self._break(
                symbol,
                book,
                f"update-id gap: expected {want}, got {diff.first_id}..{diff.final_id}",
            )
            return "break"
        book.bids.apply(diff.bids, ch.bids)
        book.asks.apply(diff.asks, ch.asks)
        book.last_update_id = diff.final_id
        ch.event_time = diff.event_time
        if book.crossed():
            self._break(symbol, book, f"crossed book after update {diff.final_id}")
            return "break"
        return "applied"

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
        :meth:`fold`; ``partition`` None: the batch's only one): its fence and its symbols, all
        under its hash tag (core/keys.py). ``positions`` = the last applied offset of each
        partition, as this process believes; ``partitions``: the layout's partition count."""
        if partition is None:
            (partition,) = self.parts
        symbols = [
            s
            for s, ch in self.changes.items()
            if ch.changed and self.partition_of.get(s) == partition
        ]
        rows = [self._row(s, self.changes[s], mirrors[s], now_ms) for s in symbols]
        last = self.parts[partition][1]
        parts = [[str(partition), str(positions.get(partition, NO_OFFSET)), str(last)]]
        payload = orjson.dumps({"parts": parts, "symbols": rows})
        keys = book_apply_keys(topic, partition, symbols, partitions)
        return keys, [BOOK_CHANNEL, payload]

    @staticmethod
    def _row(symbol: str, ch: _SymbolChanges, book: BookMirror, now_ms: int) -> dict[str, object]:
        state, gone = BookBatch.state(book, ch, now_ms)
        row: dict[str, object] = {
            "h": [x for pair in state.items() for x in pair],
            "x": gone,
            "u": book_update(symbol, state).decode(),
        }
        for name, side, touched in (("b", book.bids, ch.bids), ("a", book.asks, ch.asks)):
            levels = side.levels
            if ch.replaced:
                removed: list[str] = []
                added = [_member(k, v) for k, v in levels.items()]
            else:
                removed, added = [], []
                for key, old in touched.items():
                    new = levels.get(key)
                    if new == old:
                        continue
                    if old is not None:
                        removed.append(_member(key, old))
                    if new is not None:
                        added.append(_member(key, new))
            row[name + "r"] = [removed[i : i + _CHUNK] for i in range(0, len(removed), _CHUNK)]
            row[name + "a"] = [added[i : i + _CHUNK] for i in range(0, len(added), _CHUNK)]
        if ch.replaced:
            row["r"] = 1
        return row

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
        for name, side in (("bid", book.bids), ("ask", book.asks)):
            best = side.best()
            if best is None:
                gone += (f"best_{name}", f"best_{name}_qty")
            else:
                price, qty = side.levels[best]
                state[f"best_{name}"], state[f"best_{name}_qty"] = price, qty
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
