"""Binance's order-book wire formats (sans-I/O): what a depth stream is called, what its frames
carry (``depthUpdate``), how a REST snapshot is asked for (``GET /api/v3/depth``), what it answers
and what it costs in request weight.

They become the exchange-agnostic book types of :mod:`cryptostream.core.orderbook`
(:class:`~cryptostream.core.orderbook.DepthDiff`, :class:`~cryptostream.core.orderbook.DepthSnapshot`),
which the depth engine (``ingest/depth.py``) and the ``raw.depth`` record
(:mod:`cryptostream.core.depth`) work with.
"""

from __future__ import annotations

import orjson

from cryptostream.binance.frames import ControlReply, Ignored, Malformed, parse_frame_checked
from cryptostream.binance.rest import RestRequest
from cryptostream.core.orderbook import (
    DepthDiff,
    DepthError,
    DepthSnapshot,
    parse_levels,
    parse_update_id,
)

SNAPSHOT_PATH = "/api/v3/depth"


def stream_kind(speed: str) -> str:
    """The stream name's suffix: ``<symbol>@depth@100ms``, or ``<symbol>@depth`` (1000 ms)."""
    return "depth@100ms" if speed == "100ms" else "depth"


def snapshot_request(symbol: str, limit: int) -> RestRequest:
    """``GET /api/v3/depth`` for one symbol, ``limit`` levels per side."""
    return RestRequest(SNAPSHOT_PATH, {"symbol": symbol, "limit": str(limit)})


def snapshot_weight(limit: int) -> int:
    """Binance's REST request weight of ``GET /api/v3/depth`` for a ``limit``."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


def parse_depth_diff(payload: dict[str, object]) -> DepthDiff:
    """A ``depthUpdate`` payload (``e, E, s, U, u, b, a``); DepthError with the reason."""
    if payload.get("e") != "depthUpdate":
        raise DepthError("not a depthUpdate event")
    symbol = payload.get("s")
    if not (
        isinstance(symbol, str) and 2 <= len(symbol) <= 20 and symbol.isascii() and symbol.isalnum()
    ):
        raise DepthError(f"invalid symbol {str(symbol)[:40]!r}")
    first, final = parse_update_id(payload.get("U"), "U"), parse_update_id(payload.get("u"), "u")
    if first > final:
        raise DepthError(f"U {first} is after u {final}")
    event_time = payload.get("E", 0)
    if type(event_time) is not int or event_time < 0:
        raise DepthError("E must be a non-negative integer")
    return DepthDiff(
        symbol.upper(),
        first,
        final,
        parse_levels(payload.get("b"), "bids"),
        parse_levels(payload.get("a"), "asks"),
        event_time,
    )


def parse_depth_snapshot(doc: dict[str, object]) -> DepthSnapshot:
    """A REST depth answer (``lastUpdateId, bids, asks``); DepthError with the reason."""
    return DepthSnapshot(
        parse_update_id(doc.get("lastUpdateId"), "lastUpdateId"),
        parse_levels(doc.get("bids"), "bids"),
        parse_levels(doc.get("asks"), "asks"),
    )


DepthFrame = DepthDiff | ControlReply | Ignored | Malformed


def parse_depth_frame(raw: bytes | str, *, max_bytes: int = 65536) -> DepthFrame:
    """Classify one frame of a depth connection (never raises): a ``depthUpdate`` (combined
    wrapper or not) becomes a DepthDiff; control replies and other events as ``parse_frame``
    says; everything else is Malformed with the reason."""
    if len(raw) > max_bytes:
        return Malformed(f"frame of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Malformed(f"not JSON: {exc}")
    data = message.get("data") if isinstance(message, dict) and "stream" in message else message
    if isinstance(data, dict) and data.get("e") == "depthUpdate":
        try:
            return parse_depth_diff(data)
        except DepthError as exc:
            return Malformed(f"invalid depthUpdate: {exc}")
    outcome = parse_frame_checked(raw, trade_event="depthUpdate")  # no trade event is read
    if isinstance(outcome, ControlReply | Ignored | Malformed):
        return outcome
    return Malformed("unexpected frame on a depth stream")  # pragma: no cover
