"""Binance WebSocket protocol core: paths, stream names, live control methods. Pure, no I/O.

Choices where Binance's behaviour is not documented (NC in the protocol reference):

* A stream name is ``<lowercase symbol>@<kind>`` or ``!<name>@<kind>``; the symbol part is
  lower-cased (``BTCUSDT@trade`` works as ``btcusdt@trade``). Only the kinds Binance serves today
  are accepted (:data:`STREAM_KINDS`: trades, klines of every interval with an optional time
  zone, tickers, rolling-window tickers, average price, book ticker, depth); anything else
  (``btcusdt@foo``, ``kline_2m``, the retired ``!ticker@arr`` and ``!bookTicker``) gets code 2
  ``Invalid request: invalid stream`` (the text seen in a capture of Binance's reply), so no
  client waits on a stream that never answers. Streams of symbols the simulator does not trade
  are accepted, as on Binance (a replay learns its symbols from the frames). Depth streams are
  served from the order books (:mod:`marketsim.book`): the synthetic market's, or a replayed
  recording's.
* More than ``max_streams`` streams on one connection: the SUBSCRIBE is refused as a whole with
  code 2 ``Invalid request: too many streams, the limit is 1024``; a path asking for more is
  refused at the handshake with HTTP 400. In a path, pieces without ``@`` are ignored (``/ws/0``).
* Error envelope: the docs' table lists the inner ``{"code":..,"msg":..}`` objects; on the wire
  Binance wraps them as ``{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":2}``
  (a capture in ctubio/Krypto-trading-bot#1121, and the official SDK reads ``data["error"]``).
  The simulator sends that envelope, with the request's ``id`` when it could be read, else null.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_METHODS_TEXT = ", ".join(f"`{m}`" for m in METHODS)
_STREAM_RE = re.compile(r"^(?:[a-z0-9_.\-]{1,32}|![A-Za-z0-9_]{1,32})@[A-Za-z0-9_@.:+\-]{1,40}$")
_INTERVALS = "1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M"
_KIND_RE = re.compile(
    r"^(?:trade|aggTrade|bookTicker|miniTicker|ticker|avgPrice|ticker_(?:1h|4h|1d)"
    rf"|kline_(?:{_INTERVALS})(?:@[+-]\d{{1,2}}(?::\d\d)?)?"
    r"|depth(?:5|10|20)?(?:@(?:100|1000)ms)?)$"
)
_MARKET_STREAMS = ("!miniTicker@arr", "!ticker_1h@arr", "!ticker_4h@arr", "!ticker_1d@arr")
STREAM_KINDS = _KIND_RE.pattern
_ID_STR_RE = re.compile(r"^[A-Za-z0-9_\-]{0,36}$")
_METHOD_VALUE_RE = re.compile(r'"method"\s*:\s*("(?:[^"\\]|\\.)*"|[^,}\s]+)')
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class PathError(Exception):
    """A WebSocket path that must be refused at the handshake (HTTP status, text)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True, slots=True)
class PathRequest:
    combined: bool
    streams: tuple[str, ...]
    micro: bool


def canonical_stream(name: str) -> str | None:
    """``BTCUSDT@aggTrade`` → ``btcusdt@aggTrade``; None when the name is malformed."""
    if not isinstance(name, str):
        return None
    sym, at, rest = name.partition("@")
    if not at:
        return None
    if not sym.startswith("!"):
        sym = sym.lower()
    out = f"{sym}@{rest}"
    if not _STREAM_RE.match(out):
        return None
    if sym.startswith("!"):
        return out if out in _MARKET_STREAMS else None
    return out if _KIND_RE.match(rest) else None


def parse_path(target: str, max_streams: int = 1024) -> PathRequest | None:
    """Parse a WebSocket request target. None: not a stream path (404).

    Accepts ``/ws``, ``/ws/``, ``/ws/<stream>``, ``/ws/<anything>`` (e.g. ``/ws/0``: no stream),
    ``/stream``, ``/stream/``, ``/stream?streams=a/b/c``, each with an optional ``timeUnit``.
    """
    parts = urlsplit(target)
    path = parts.path
    query = parse_qs(parts.query, keep_blank_values=True)
    micro = False
    for tu in query.get("timeUnit", []):
        if tu in ("MICROSECOND", "microsecond"):
            micro = True
        elif tu in ("MILLISECOND", "millisecond"):
            micro = False
        else:
            raise PathError(400, f"Invalid timeUnit: {tu}")
    names: list[str] = []
    if path in ("/ws", "/ws/"):
        combined = False
    elif path.startswith("/ws/"):
        combined = False
        tail = path[4:]
        for piece in tail.split("/"):
            if "@" in piece or piece.startswith("!"):
                names.append(piece)
    elif path in ("/stream", "/stream/"):
        combined = True
        for value in query.get("streams", []):
            names.extend(n for n in value.split("/") if n)
    else:
        return None
    streams: list[str] = []
    for n in names:
        if "@" not in n and not n.startswith("!"):
            continue  # e.g. /ws/0, or a client appending "/stream" to a ?streams= URL
        c = canonical_stream(n)
        if c is None:
            raise PathError(400, f"Invalid stream name: {n}")
        if c not in streams:
            streams.append(c)
    if len(streams) > max_streams:
        raise PathError(400, f"Too many streams: {len(streams)} > {max_streams}")
    return PathRequest(combined, tuple(streams), micro)


@dataclass(slots=True)
class Session:
    """Per-connection protocol state."""

    combined: bool
    max_streams: int = 1024
    subscriptions: dict[str, None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ControlResult:
    response: bytes
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


def _pos(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1)
    return line, col


def _err(code: int, msg: str, id_: Any = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": id_})


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{'true' if v else 'false'}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        return f'string "{v}"'
    if isinstance(v, list):
        return "sequence"
    return "map"


def _valid_id(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return INT64_MIN <= v <= INT64_MAX
    return isinstance(v, str) and bool(_ID_STR_RE.match(v))


def handle_control(session: Session, text: str | bytes) -> ControlResult:
    """Apply one client message to ``session``; return the reply and the subscription changes."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            return ControlResult(_err(3, "Invalid JSON: expected value at line 1 column 1"))
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        return ControlResult(
            _err(3, f"Invalid JSON: expected value at line {exc.lineno} column {exc.colno}")
        )
    end_line, end_col = _pos(text, len(text.rstrip()))
    if not isinstance(msg, dict):
        return ControlResult(
            _err(
                2,
                f"Invalid request: invalid type: {_json_kind(msg)}, expected struct Request "
                f"at line {end_line} column {end_col}",
            )
        )
    method = msg.get("method")
    if "method" not in msg:
        return ControlResult(
            _err(2, f"Invalid request: missing field `method` at line {end_line} column {end_col}")
        )
    if method not in METHODS:
        m = _METHOD_VALUE_RE.search(text)
        line, col = _pos(text, m.end()) if m else (end_line, end_col)
        shown = f"`{method}`" if isinstance(method, str) else _json_kind(method)
        kind = "unknown variant" if isinstance(method, str) else "invalid type:"
        return ControlResult(
            _err(
                2,
                f"Invalid request: {kind} {shown}, expected one of {_METHODS_TEXT} "
                f"at line {line} column {col}",
            )
        )
    if "id" not in msg or not _valid_id(msg["id"]):
        return ControlResult(_err(2, "Invalid request: request ID must be an unsigned integer"))
    id_ = msg["id"]
    params = msg.get("params", [])
    if params is None:
        params = []
    if not isinstance(params, list):
        return ControlResult(
            _err(
                2, f"Invalid request: invalid type: {_json_kind(params)}, expected a sequence", id_
            )
        )
    ok = orjson.dumps({"result": None, "id": id_})

    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        names: list[str] = []
        for p in params:
            if not isinstance(p, str):
                return ControlResult(
                    _err(
                        2, f"Invalid request: invalid type: {_json_kind(p)}, expected a string", id_
                    )
                )
            c = canonical_stream(p)
            if c is None:
                return ControlResult(_err(2, "Invalid request: invalid stream", id_))
            if c not in names:
                names.append(c)
        subs = session.subscriptions
        if method == "SUBSCRIBE":
            added = tuple(n for n in names if n not in subs)
            if len(subs) + len(added) > session.max_streams:
                return ControlResult(
                    _err(
                        2,
                        f"Invalid request: too many streams, the limit is {session.max_streams}",
                        id_,
                    )
                )
            for n in added:
                subs[n] = None
            return ControlResult(ok, added=added)
        removed = tuple(n for n in names if n in subs)
        for n in removed:
            del subs[n]
        return ControlResult(ok, removed=removed)

    if method == "LIST_SUBSCRIPTIONS":
        if params:
            return ControlResult(_err(2, "Invalid request: too many parameters", id_))
        return ControlResult(orjson.dumps({"result": list(session.subscriptions), "id": id_}))

    # SET_PROPERTY / GET_PROPERTY
    limit = 2 if method == "SET_PROPERTY" else 1
    if len(params) > limit:
        return ControlResult(_err(2, "Invalid request: too many parameters", id_))
    if not params or not isinstance(params[0], str):
        return ControlResult(_err(2, "Invalid request: property name must be a string", id_))
    if params[0] != "combined":
        return ControlResult(_err(0, "Unknown property", id_))
    if method == "GET_PROPERTY":
        return ControlResult(orjson.dumps({"result": session.combined, "id": id_}))
    if len(params) < 2 or not isinstance(params[1], bool):
        return ControlResult(_err(1, "Invalid value type: expected Boolean", id_))
    session.combined = params[1]
    return ControlResult(ok)


class RateLimiter:
    """Sliding-window limit on incoming messages: at most ``limit`` per ``window`` seconds."""

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int = 5, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def hit(self, now: float) -> bool:
        """Record one message at ``now``; False when it exceeds the limit."""
        if self.limit <= 0:
            return True
        times = self._times
        while times and now - times[0] >= self.window:
            times.popleft()
        times.append(now)
        return len(times) <= self.limit
