"""Gap records on ``raw.trades.gaps`` (sans-I/O codec).

Schema version 1, key = the symbol (UTF-8)::

    {"v": 1, "symbol": "BTCUSDT", "first_id": 101, "last_id": 120, "count": 20,
     "status": "detected" | "backfilled" | "unrecoverable",
     "cause": "stream" | "reconnect" | "buffer_overflow" | "tail" | "restart",
     "detected_at_us": 1718000000000000, "reported_at_us": 1718000000100000}

A ``detected`` record is followed by final records (``backfilled`` / ``unrecoverable``), with
its symbol and ``detected_at_us``, whose ranges exactly cover the detected range: one record, or
several sub-ranges when only part could be backfilled (also by a later process, when the one that
detected it died first: see :mod:`.resume`). Consumers count what was lost as the sum of
``unrecoverable`` counts.

Order-book breaks share the topic (key = the symbol), told apart by their status, so that no
trade-gap consumer counts one as lost trades::

    {"v": 1, "stream": "depth", "symbol": "BTCUSDT", "status": "depth_break",
     "cause": "depth_gap" | "depth_crossed" | "depth_reconnect" | "depth_produce",
     "expected_id": 105, "got_id": 109 | null, "reason": "update-id gap",
     "detected_at_us": 1718000000000000, "reported_at_us": 1718000000000000}

``expected_id`` is the update id that would have continued the chain published on the depth
topic (its book's id + 1), ``got_id`` the ``U`` of the diff that came instead (null when no diff
came: a lost connection, a record Kafka did not take). After it, ingest publishes a new snapshot.

This is the topic's one codec: ingest writes with it, its resume reads with the strict
:func:`decode_gap`, the lab's checker (``cryptostream_lab.reliability.gaps``) with
:func:`decode_gap_lenient`; both apply the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from cryptostream.core.symbols import SYMBOL_RE
from cryptostream.core.trades import check_int
from cryptostream.ingest.tracker import Cause, Gap, Status

GAP_SCHEMA_VERSION = 1
STATUSES: tuple[str, ...] = get_args(Status)
CAUSES: tuple[str, ...] = get_args(Cause)


DEPTH_BREAK = "depth_break"
DepthCause = Literal["depth_gap", "depth_crossed", "depth_reconnect", "depth_produce"]
DEPTH_CAUSES: tuple[str, ...] = get_args(DepthCause)


class GapDecodeError(ValueError):
    """Not a valid gap record; the message says why."""


class NotATradeGap(GapDecodeError):
    """A valid record of the gap topic that is an order-book break, not lost trades."""


@dataclass(frozen=True, slots=True)
class DepthBreakRecord:
    symbol: str
    cause: DepthCause
    expected_id: int
    got_id: int | None
    reason: str
    detected_at_us: int
    reported_at_us: int

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": GAP_SCHEMA_VERSION,
                "stream": "depth",
                "symbol": self.symbol,
                "status": DEPTH_BREAK,
                "cause": self.cause,
                "expected_id": self.expected_id,
                "got_id": self.got_id,
                "reason": self.reason,
                "detected_at_us": self.detected_at_us,
                "reported_at_us": self.reported_at_us,
            }
        )


@dataclass(frozen=True, slots=True)
class GapRecord:
    symbol: str
    first_id: int
    last_id: int
    status: Status
    cause: Cause
    detected_at_us: int
    reported_at_us: int

    @property
    def count(self) -> int:
        return self.last_id - self.first_id + 1

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": GAP_SCHEMA_VERSION,
                "symbol": self.symbol,
                "first_id": self.first_id,
                "last_id": self.last_id,
                "count": self.count,
                "status": self.status,
                "cause": self.cause,
                "detected_at_us": self.detected_at_us,
                "reported_at_us": self.reported_at_us,
            }
        )


def detected_record(gap: Gap, now_us: int) -> GapRecord:
    return GapRecord(
        gap.symbol, gap.first, gap.last, "detected", gap.cause, gap.detected_at_us, now_us
    )


def final_records(gap: Gap, ranges: list[tuple[int, int, Status]], now_us: int) -> list[GapRecord]:
    return [
        GapRecord(gap.symbol, lo, hi, status, gap.cause, gap.detected_at_us, now_us)
        for lo, hi, status in ranges
    ]


def _load(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise GapDecodeError("record has no value")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise GapDecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise GapDecodeError("expected a JSON object")
    if obj.get("v") != GAP_SCHEMA_VERSION:
        raise GapDecodeError(f"unsupported schema version {obj.get('v')!r}")
    return obj


def decode_depth_break(value: bytes | None) -> DepthBreakRecord:
    obj = _load(value)
    try:
        symbol, cause, got, reason = obj["symbol"], obj["cause"], obj["got_id"], obj["reason"]
        if obj["status"] != DEPTH_BREAK or obj.get("stream") != "depth":
            raise ValueError("not a depth break record")
        if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
            raise ValueError(f"invalid symbol {str(symbol)[:40]!r}")
        if cause not in DEPTH_CAUSES:
            raise ValueError(f"unknown cause {cause!r}")
        if not isinstance(reason, str):
            raise ValueError("reason must be a string")
        return DepthBreakRecord(
            symbol,
            cause,
            check_int(obj["expected_id"], "expected_id"),
            None if got is None else check_int(got, "got_id"),
            reason,
            check_int(obj["detected_at_us"], "detected_at_us"),
            check_int(obj["reported_at_us"], "reported_at_us"),
        )
    except KeyError as exc:
        raise GapDecodeError(f"missing field {exc.args[0]!r}") from None
    except ValueError as exc:
        raise GapDecodeError(str(exc)) from None


def decode_gap_record(value: bytes | None) -> GapRecord | DepthBreakRecord:
    """Any record of the gap topic (strict): a trade gap or an order-book break, else
    :class:`GapDecodeError` saying why it breaks the contract."""
    obj = _load(value)
    if obj.get("status") == DEPTH_BREAK:
        return decode_depth_break(value)
    try:
        symbol = obj["symbol"]
        if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
            raise ValueError(f"invalid symbol {str(symbol)[:40]!r}")
        status, cause = obj["status"], obj["cause"]
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if cause not in CAUSES:
            raise ValueError(f"unknown cause {cause!r}")
        record = GapRecord(
            symbol,
            check_int(obj["first_id"], "first_id"),
            check_int(obj["last_id"], "last_id"),
            status,
            cause,
            check_int(obj["detected_at_us"], "detected_at_us"),
            check_int(obj["reported_at_us"], "reported_at_us"),
        )
        if record.last_id < record.first_id:
            raise ValueError("last_id < first_id")
        if obj["count"] != record.count:
            raise ValueError(f"count {obj['count']!r} != last_id - first_id + 1")
        return record
    except KeyError as exc:
        raise GapDecodeError(f"missing field {exc.args[0]!r}") from None
    except ValueError as exc:
        raise GapDecodeError(str(exc)) from None


def decode_gap(value: bytes | None) -> GapRecord:
    """A trade gap record (strict: what ingest's resume reads); :class:`NotATradeGap` for a
    valid depth break (skip it), another GapDecodeError for an invalid record."""
    record = decode_gap_record(value)
    if isinstance(record, DepthBreakRecord):
        raise NotATradeGap("an order-book break, not a trade gap")
    return record


def decode_gap_lenient(value: bytes | None) -> GapRecord | DepthBreakRecord | GapDecodeError:
    """The same contract, for readers that must go on past a bad record (the lab's checker
    counts and shows them): never raises, an invalid record comes back as its error."""
    try:
        return decode_gap_record(value)
    except GapDecodeError as exc:
        return exc
