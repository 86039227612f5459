"""Binance WebSocket frames -> trades (sans-I/O).

Accepts raw stream payloads and the combined-stream wrapper ``{"stream": ..., "data": ...}``.
Every frame gets exactly one outcome, so callers can count and report each kind.

Control replies come as ``{"result": ..., "id": ...}``; errors as Binance's envelope
``{"error": {"code": 2, "msg": "..."}, "id": 7}`` or the bare documented ``{"code": .., "msg": ..}``.

``trade_event`` chooses which event becomes a :class:`Trade`: ``"trade"`` (``t`` is the trade id)
or ``"aggTrade"`` (``a``, the aggregate trade id, becomes the trade id; ``q`` is the aggregate's
quantity). The other is ``Ignored``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import orjson

from cryptostream.core.codec import MEMO_MAX, match_positive_decimal
from cryptostream.core.symbols import SYMBOL_RE
from cryptostream.core.trades import (
    MAX_ID,
    MAX_TIME_MS,
    Trade,
    check_int,
    check_positive_decimal,
    shown,
)


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


_Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
_TimeMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_MS)]
_Unset = msgspec.UnsetType


class _Payload(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A trade payload as msgspec decodes it (the fast path); unknown fields ignored. The
    optional keys are the ones that make the general path read the object as something else
    (a control reply, a combined wrapper): present, the fast path steps aside."""

    e: str
    E: _TimeMs
    s: str
    p: str
    q: str
    T: _TimeMs
    m: bool
    result: msgspec.Raw | _Unset = msgspec.UNSET
    code: msgspec.Raw | _Unset = msgspec.UNSET
    msg: msgspec.Raw | _Unset = msgspec.UNSET
    stream: msgspec.Raw | _Unset = msgspec.UNSET
    data: msgspec.Raw | _Unset = msgspec.UNSET


class _Trade(_Payload, frozen=True, gc=False, kw_only=True):
    t: _Id


class _AggTrade(_Payload, frozen=True, gc=False, kw_only=True):
    """The aggregate id ``a`` is the trade id (read as ``t``)."""

    t: _Id = msgspec.field(name="a")


class _Combined(msgspec.Struct, frozen=True, gc=False):
    stream: str
    data: _Trade


TradeFields = _Trade | _AggTrade  # .s symbol, .t id, .p price, .q quantity, .T, .E, .m


class _CombinedAgg(msgspec.Struct, frozen=True, gc=False):
    stream: str
    data: _AggTrade


_FAST: dict[str, tuple[Callable[[bytes | str], Any], Callable[[bytes | str], Any]]] = {
    "trade": (msgspec.json.Decoder(_Trade).decode, msgspec.json.Decoder(_Combined).decode),
    "aggTrade": (
        msgspec.json.Decoder(_AggTrade).decode,
        msgspec.json.Decoder(_CombinedAgg).decode,
    ),
}
FAST_EVENTS = frozenset(_FAST)  # the trade events :func:`fast_trade` decodes
_UNSET = msgspec.UNSET


def fast_trade(raw: bytes | str, trade_event: str) -> TradeFields | None:
    """The fields of a well-formed trade frame in one typed decode (msgspec) and cheap string
    checks; None for anything else, which the general path then classifies and explains. The
    two agree on every frame (property-tested). The symbol is as sent (not upper-cased).

    The ingest engine's hot path reads these fields directly (no :class:`Trade` per frame)."""
    decode_raw, decode_combined = _FAST[trade_event]
    combined = (
        raw.startswith(b'{"stream"') if isinstance(raw, bytes) else raw.startswith('{"stream"')
    )
    try:
        d: _Trade | _AggTrade = decode_combined(raw).data if combined else decode_raw(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    symbol = d.s
    if (
        d.e == trade_event
        and (
            combined
            or (
                d.result is _UNSET
                and (d.code is _UNSET or d.msg is _UNSET)
                and (d.stream is _UNSET or d.data is _UNSET)
            )
        )
        and (symbol in _good_symbols or _good_symbol(symbol))
        and (d.p in _good_decimals or _good_decimal(d.p))
        and (d.q in _good_decimals or _good_decimal(d.q))
    ):
        return d
    return None


# Texts the fast path accepted: real trades repeat their symbols, prices and quantities, and a
# set lookup costs a fraction of the checks (see core/codec.py's decode memos). Bounded.
_good_symbols: set[str] = set()
_good_decimals: set[str] = set()
_MEMOS = (_good_symbols, _good_decimals)


def clear_memos() -> None:
    """Forget every remembered text (tests and benchmarks of the checks' own cost)."""
    for memo in _MEMOS:
        memo.clear()


def _good_symbol(text: str) -> bool:
    if 2 <= len(text) <= 20 and text.isascii() and text.isalnum():
        _remember(_good_symbols, text)
        return True
    return False


def _good_decimal(text: str) -> bool:
    if match_positive_decimal(text):
        _remember(_good_decimals, text)
        return True
    return False


def _remember(memo: set[str], text: str) -> None:
    if len(memo) >= MEMO_MAX:
        memo.clear()
    memo.add(text)


def _fast_trade(raw: bytes | str, trade_event: str) -> Trade | None:
    d = fast_trade(raw, trade_event)
    if d is None:
        return None
    return Trade(d.s.upper(), d.t, d.p, d.q, d.T, d.E, d.m)


def parse_frame(
    raw: bytes | str, *, max_bytes: int = 65536, trade_event: str = "trade"
) -> FrameOutcome:
    """Classify one WebSocket text frame. Never raises."""
    if len(raw) > max_bytes:
        return Malformed(f"frame of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    trade = _fast_trade(raw, trade_event) if trade_event in _FAST else None
    if trade is not None:
        return trade
    return parse_frame_checked(raw, trade_event=trade_event)


def parse_frame_checked(raw: bytes | str, *, trade_event: str = "trade") -> FrameOutcome:
    """The general path: every frame classified, every refusal with its reason."""
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
    elif "error" in message and "e" not in message:
        inner = message["error"]
        error = inner if isinstance(inner, dict) else {"msg": inner}
        return ControlReply(id=message.get("id"), result=None, error=error)
    event_type = message.get("e")
    if event_type == trade_event:
        return _parse_trade(message) if event_type == "trade" else _parse_agg_trade(message)
    if isinstance(event_type, str):
        return Ignored(event_type)
    return Malformed("no event type ('e') in payload")


def _parse_trade(payload: dict[str, Any], id_field: str = "t") -> Trade | Malformed:
    try:
        symbol = payload["s"]
        if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
            raise ValueError(f"invalid symbol {shown(symbol)}")
        maker = payload["m"]
        if not isinstance(maker, bool):
            raise ValueError("m (buyer is maker) must be a boolean")
        return Trade(
            symbol=symbol.upper(),
            trade_id=check_int(payload[id_field], f"{id_field} (trade id)"),
            price=check_positive_decimal(payload["p"], "p (price)"),
            quantity=check_positive_decimal(payload["q"], "q (quantity)"),
            trade_time=check_int(payload["T"], "T (trade time)", maximum=MAX_TIME_MS),
            event_time=check_int(payload["E"], "E (event time)", maximum=MAX_TIME_MS),
            buyer_is_maker=maker,
        )
    except KeyError as exc:
        return Malformed(f"trade is missing field {shown(exc.args[0])}")
    except ValueError as exc:
        return Malformed(f"invalid trade: {exc}")


def _parse_agg_trade(payload: dict[str, Any]) -> Trade | Malformed:
    return _parse_trade(payload, "a")
