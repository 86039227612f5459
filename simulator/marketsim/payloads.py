"""Binance payload builders (bytes), exactly as Binance sends them. Pure, no I/O.

Times are held in microseconds; ``micro=False`` renders milliseconds (Binance's default),
``micro=True`` renders microseconds (``timeUnit=MICROSECOND``).
"""

from __future__ import annotations

import orjson

from marketsim.model import Order
from marketsim.units import SCALE, fmt8


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


def wrap_combined(stream: str, payload: bytes) -> bytes:
    return b'{"stream":"' + stream.encode() + b'","data":' + payload + b"}"


class Kline1m:
    """The 1-minute candle of one symbol, updated per order.

    Emission rule (deterministic, driven by trade times only): a ``kline`` update is due when the
    first trade of a candle arrives, when at least ``update_ms`` simulated ms passed since the last
    update, and a closed candle (``x: true``) is emitted when a trade opens the next minute.
    """

    __slots__ = (
        "B_",
        "close",
        "first_id",
        "high",
        "interval_us",
        "last_emit_us",
        "last_id",
        "low",
        "n",
        "open",
        "open_us",
        "quote_vol",
        "symbol",
        "taker_quote",
        "taker_vol",
        "update_us",
        "vol",
    )

    def __init__(self, symbol: str, update_ms: int = 2000) -> None:
        self.symbol = symbol
        self.interval_us = 60_000_000
        self.update_us = update_ms * 1000
        self.open_us = -1
        self.last_emit_us = -1
        self.B_ = 0

    def _start(self, o: Order) -> None:
        self.open_us = o.time_us - o.time_us % self.interval_us
        self.open = self.high = self.low = self.close = o.price
        self.first_id = o.first_id
        self.last_id = o.first_id - 1
        self.n = 0
        self.vol = self.quote_vol = self.taker_vol = self.taker_quote = 0

    def apply(self, o: Order, want_ms: bool, want_us: bool) -> list[tuple[bytes, bytes]]:
        """Apply an order; return the kline payloads now due as (ms, µs) renderings.

        A rendering is ``b""`` when not wanted (no subscriber in that time unit).
        """
        out: list[tuple[bytes, bytes]] = []
        if self.open_us >= 0 and o.time_us >= self.open_us + self.interval_us:
            if want_ms or want_us:
                out.append(self._both(o.time_us, True, want_ms, want_us))
            self.open_us = -1
        new = self.open_us < 0
        if new:
            self._start(o)
        p = o.price
        if p > self.high:
            self.high = p
        if p < self.low:
            self.low = p
        self.close = p
        qtys = o.qtys  # (qty_total and last_id inlined: this runs once per order)
        q = qtys[0] if len(qtys) == 1 else sum(qtys)
        self.n += len(qtys)
        self.last_id = o.first_id + len(qtys) - 1
        self.vol += q
        qv = p * q
        self.quote_vol += qv
        if not o.buyer_maker:  # taker was the buyer
            self.taker_vol += q
            self.taker_quote += qv
        if new or o.time_us - self.last_emit_us >= self.update_us:
            self.last_emit_us = o.time_us
            if want_ms or want_us:
                out.append(self._both(o.time_us, False, want_ms, want_us))
        return out

    def _both(
        self, event_us: int, closed: bool, want_ms: bool, want_us: bool
    ) -> tuple[bytes, bytes]:
        return (
            self.render(event_us, closed, False) if want_ms else b"",
            self.render(event_us, closed, True) if want_us else b"",
        )

    def render(self, event_us: int, closed: bool, micro: bool) -> bytes:
        t0 = _t(self.open_us, micro)
        t1 = _t(self.open_us + self.interval_us, micro) - 1
        k = {
            "t": t0,
            "T": t1,
            "s": self.symbol,
            "i": "1m",
            "f": self.first_id,
            "L": self.last_id,
            "o": fmt8(self.open),
            "c": fmt8(self.close),
            "h": fmt8(self.high),
            "l": fmt8(self.low),
            "v": fmt8(self.vol),
            "n": self.n,
            "x": closed,
            "q": fmt8(self.quote_vol // SCALE),
            "V": fmt8(self.taker_vol),
            "Q": fmt8(self.taker_quote // SCALE),
            "B": "0",
        }
        return orjson.dumps({"e": "kline", "E": _t(event_us, micro), "s": self.symbol, "k": k})
