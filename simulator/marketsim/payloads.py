"""Binance payload builders (bytes), exactly as Binance sends them. Pure, no I/O.

Times are held in microseconds; ``micro=False`` renders milliseconds (Binance's default),
``micro=True`` renders microseconds (``timeUnit=MICROSECOND``).
"""

from __future__ import annotations

from marketsim.market import Kline as Kline1m
from marketsim.model import Order
from marketsim.units import fmt8

__all__ = [
    "Kline1m",
    "agg_trade_payload",
    "book_ticker_payload",
    "server_shutdown_frame",
    "server_shutdown_payload",
    "trade_payloads",
    "wrap_combined",
]


def _t(time_us: int, micro: bool) -> int:
    return time_us if micro else time_us // 1000


def trade_payloads(o: Order, micro: bool = False) -> list[bytes]:
    """One ``trade`` payload per trade of the order."""
    t = _t(o.time_us, micro)
    p = fmt8(o.price)
    m = "true" if o.buyer_maker else "false"
    head = f'{{"e":"trade","E":{t},"s":"{o.symbol}","t":'
    tail_p = f',"p":"{p}","q":"'
    tail = f'","T":{t},"m":{m},"M":true}}'
    tid = o.first_id
    qtys = o.qtys
    if len(qtys) == 1:  # most orders (every trades-archive row)
        return [f"{head}{tid}{tail_p}{fmt8(qtys[0])}{tail}".encode()]
    out = []
    for q in qtys:
        out.append(f"{head}{tid}{tail_p}{fmt8(q)}{tail}".encode())
        tid += 1
    return out


def agg_trade_payload(o: Order, micro: bool = False) -> bytes:
    t = _t(o.time_us, micro)
    m = "true" if o.buyer_maker else "false"
    return (
        f'{{"e":"aggTrade","E":{t},"s":"{o.symbol}","a":{o.agg_id},"p":"{fmt8(o.price)}",'
        f'"q":"{fmt8(o.qty_total)}","f":{o.first_id},"l":{o.last_id},"T":{t},"m":{m},"M":true}}'
    ).encode()


def book_ticker_payload(o: Order) -> bytes:
    return (
        f'{{"u":{o.book_id},"s":"{o.symbol}","b":"{fmt8(o.bid)}","B":"{fmt8(o.bid_qty)}",'
        f'"a":"{fmt8(o.ask)}","A":"{fmt8(o.ask_qty)}"}}'
    ).encode()


def server_shutdown_payload(time_us: int, micro: bool = False) -> bytes:
    return f'{{"e":"serverShutdown","E":{_t(time_us, micro)}}}'.encode()


def server_shutdown_frame(time_us: int, micro: bool, combined: bool) -> bytes:
    """The shutdown notice on a stream connection, in one frame every client recognises.

    Binance's stream docs name the event without showing it; clients read the bare event
    ``{"e":"serverShutdown","E":..}`` (combined: stream ``!serverShutdown``), while the official
    SDK (binance-common's receive loop, shared with the WebSocket API, whose docs show
    ``{"event":{"e":"serverShutdown","E":..}}``) reconnects only on a top-level ``event``. The
    simulator sends the bare event (wrapped on combined connections) with that ``event``
    member added, so both kinds of client reconnect.
    """
    bare = server_shutdown_payload(time_us, micro)
    event = b',"event":' + bare + b"}"
    if combined:
        return b'{"stream":"!serverShutdown","data":' + bare + event
    return bare[:-1] + event


def wrap_combined(stream: str, payload: bytes) -> bytes:
    return b'{"stream":"' + stream.encode() + b'","data":' + payload + b"}"
