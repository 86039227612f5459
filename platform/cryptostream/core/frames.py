"""Binance WebSocket frames -> trades (sans-I/O).

Accepts raw stream payloads and the combined-stream wrapper ``{"stream": ..., "data": ...}``.
Every frame gets exactly one outcome, so callers can count and report each kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from cryptostream.core.symbols import SYMBOL_RE
from cryptostream.core.trades import Trade, check_int, check_positive_decimal


@dataclass(frozen=True, slots=True)
class ControlReply:
    """A reply to one of our live requests (SUBSCRIBE ...): ``{"result": ..., "id": ...}``."""

    id: object
    result: object
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed event we do not consume (another stream type, serverShutdown, ...)."""

    event_type: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame that could not be decoded or validated; ``reason`` says why."""

    reason: str


FrameOutcome = Trade | ControlReply | Ignored | Malformed


def parse_frame(raw: bytes | str, *, max_bytes: int = 65536) -> FrameOutcome:
    """Classify one WebSocket text frame. Never raises."""
    if len(raw) > max_bytes:
        return Malformed(f"frame of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Malformed(f"not JSON: {exc}")
    if not isinstance(message, dict):
        return Malformed(f"expected a JSON object, got {type(message).__name__}")
    if "data" in message and "stream" in message:
        message = message["data"]
        if not isinstance(message, dict):
            return Malformed("combined-stream 'data' is not an object")
    elif "result" in message or ("code" in message and "msg" in message):
        error = None if "result" in message else message
        return ControlReply(id=message.get("id"), result=message.get("result"), error=error)
    event_type = message.get("e")
    if event_type == "trade":
        return _parse_trade(message)
    if isinstance(event_type, str):
        return Ignored(event_type)
    return Malformed("no event type ('e') in payload")


def _parse_trade(payload: dict[str, Any]) -> Trade | Malformed:
    try:
        symbol = payload["s"]
        if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
            raise ValueError(f"invalid symbol {str(symbol)[:40]!r}")
        maker = payload["m"]
        if not isinstance(maker, bool):
            raise ValueError("m (buyer is maker) must be a boolean")
        return Trade(
            symbol=symbol.upper(),
            trade_id=check_int(payload["t"], "t (trade id)"),
            price=check_positive_decimal(payload["p"], "p (price)"),
            quantity=check_positive_decimal(payload["q"], "q (quantity)"),
            trade_time=check_int(payload["T"], "T (trade time)"),
            event_time=check_int(payload["E"], "E (event time)"),
            buyer_is_maker=maker,
        )
    except KeyError as exc:
        return Malformed(f"trade is missing field {exc.args[0]!r}")
    except ValueError as exc:
        return Malformed(f"invalid trade: {exc}")
