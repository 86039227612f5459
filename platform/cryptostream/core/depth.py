"""The versioned JSON value of a ``raw.depth`` record (sans-I/O): one depth diff or one snapshot.

Schema version 1, key = the symbol (UTF-8), like ``raw.trades``::

    {"v": 1, "kind": "diff", "exchange": "binance", "symbol": "BTCUSDT",
     "first_id": 100, "final_id": 104, "event_time": 1718000000001,
     "bids": [["66398.85", "0.5"], ["66398.10", "0"]], "asks": [["66399.00", "1.25"]],
     "ingest_time_us": 1718000000001234}

    {"v": 1, "kind": "snapshot", "exchange": "binance", "symbol": "BTCUSDT",
     "last_update_id": 99, "bids": [...], "asks": [...], "ingest_time_us": 1718000000001234}

A diff is Binance's ``depthUpdate`` (``U`` = ``first_id``, ``u`` = ``final_id``; a quantity of 0
removes the level); a snapshot is a REST ``/api/v3/depth`` answer, the whole book to its limit.
Prices and quantities stay the exchange's decimal strings (at most 20+20 digits, like trades).

The contract on the topic, per symbol (one partition, so in order): ingest publishes a snapshot
before the first diff it publishes, and after every break of the update-id chain a new snapshot
(and a record on the gap topic). Consumers apply a snapshot by replacing the book; a diff with
``final_id`` <= the book's id is already in it; otherwise the first diff after a snapshot must
satisfy ``first_id`` <= id + 1 <= ``final_id`` and every later one ``first_id`` == id + 1.
Anything else is a break: the consumer reports it and serves no book until the next snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from cryptostream.core.orderbook import (
    Book,
    DepthDiff,
    DepthError,
    DepthSnapshot,
    Level,
    parse_levels,
    parse_update_id,
)
from cryptostream.core.symbols import SYMBOL_RE
from cryptostream.core.trades import MAX_TIME_MS, MAX_TIME_US, shown

SCHEMA_VERSION = 1


class DepthRecordError(ValueError):
    """A record value that is not a valid schema-v1 depth record; the message is the reason."""


@dataclass(frozen=True, slots=True)
class DiffRecord:
    symbol: str
    diff: DepthDiff
    ingest_time_us: int
    exchange: str = "binance"


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    symbol: str
    snapshot: DepthSnapshot
    ingest_time_us: int
    exchange: str = "binance"


DepthRecord = DiffRecord | SnapshotRecord


def _sides(levels: tuple[Level, ...]) -> list[list[str]]:
    return [[price, qty] for price, qty in levels]


def encode_diff(diff: DepthDiff, ingest_time_us: int, exchange: str = "binance") -> bytes:
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "kind": "diff",
            "exchange": exchange,
            "symbol": diff.symbol,
            "first_id": diff.first_id,
            "final_id": diff.final_id,
            "event_time": diff.event_time,
            "bids": _sides(diff.bids),
            "asks": _sides(diff.asks),
            "ingest_time_us": ingest_time_us,
        }
    )


def encode_snapshot(
    symbol: str, snapshot: DepthSnapshot, ingest_time_us: int, exchange: str = "binance"
) -> bytes:
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "kind": "snapshot",
            "exchange": exchange,
            "symbol": symbol,
            "last_update_id": snapshot.last_update_id,
            "bids": _sides(snapshot.bids),
            "asks": _sides(snapshot.asks),
            "ingest_time_us": ingest_time_us,
        }
    )


def _time(value: object, name: str, maximum: int) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        raise DepthRecordError(f"{name} must be an integer in [0, {maximum}]: {shown(value)}")
    return value


def decode_depth(value: bytes | None) -> DepthRecord:
    """Decode and validate one ``raw.depth`` value; raise DepthRecordError with the reason.
    Symbols are upper-cased, as every service does (core/symbols.py)."""
    if value is None:
        raise DepthRecordError("record has no value")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DepthRecordError(f"not JSON: {shown(str(exc), 200)}") from None
    if not isinstance(obj, dict):
        raise DepthRecordError(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise DepthRecordError(
            f"unsupported schema version {shown(version)} (expected the integer {SCHEMA_VERSION})"
        )
    symbol, exchange = obj.get("symbol"), obj.get("exchange", "binance")
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise DepthRecordError(f"invalid symbol {shown(symbol)}")
    if not isinstance(exchange, str):
        raise DepthRecordError("exchange must be a string")
    symbol = symbol.upper()
    ingest_us = _time(obj.get("ingest_time_us"), "ingest_time_us", MAX_TIME_US)
    kind = obj.get("kind")
    try:
        bids, asks = parse_levels(obj.get("bids"), "bids"), parse_levels(obj.get("asks"), "asks")
        if kind == "diff":
            first = parse_update_id(obj.get("first_id"), "first_id")
            final = parse_update_id(obj.get("final_id"), "final_id")
            if first > final:
                raise DepthRecordError(f"first_id {first} is after final_id {final}")
            event_time = _time(obj.get("event_time"), "event_time", MAX_TIME_MS)
            diff = DepthDiff(symbol, first, final, bids, asks, event_time)
            return DiffRecord(symbol, diff, ingest_us, exchange)
        if kind == "snapshot":
            if any(not _positive(q) for _p, q in bids + asks):
                raise DepthRecordError("a snapshot level has quantity 0")
            last = parse_update_id(obj.get("last_update_id"), "last_update_id")
            return SnapshotRecord(symbol, DepthSnapshot(last, bids, asks), ingest_us, exchange)
    except DepthError as exc:
        raise DepthRecordError(str(exc)) from None
    raise DepthRecordError(f"kind must be 'diff' or 'snapshot', got {shown(kind)}")


def _positive(text: str) -> bool:
    return any(c not in "0." for c in text)


@dataclass
class TopicBook:
    """One symbol's book as a consumer of ``raw.depth`` keeps it (the contract above): the
    reference the processor's Redis apply and the independent checker are tested against."""

    book: Book = field(default_factory=Book)
    synced: bool = False  # a snapshot was applied and the chain has held since
    fresh: bool = False  # no diff applied since the snapshot (the first-diff rule applies)
    breaks: int = 0

    def apply(self, record: DepthRecord) -> str:
        """Apply one record; returns what happened: ``snapshot``, ``applied``, ``stale`` (already
        in the book), ``unsynced`` (no snapshot yet, or since a break) or ``break``."""
        if isinstance(record, SnapshotRecord):
            self.book.reset(record.snapshot)
            self.synced, self.fresh = True, True
            return "snapshot"
        diff, last = record.diff, self.book.last_update_id
        if not self.synced:
            return "unsynced"
        if diff.final_id <= last:
            return "stale"
        fits = diff.first_id <= last + 1 if self.fresh else diff.first_id == last + 1
        if not fits:
            self.synced = False
            self.breaks += 1
            return "break"
        self.book.apply(diff)
        self.fresh = False
        if self.book.crossed():
            self.synced = False
            self.breaks += 1
            return "break"
        return "applied"
