"""Candles and rolling statistics per symbol, from the orders the market emits. Pure, no I/O.

One always-on 1-minute :class:`Kline` per symbol (the ``@kline_1m`` stream's state) keeps its
closed candles in a bounded log (``MINUTES_KEPT``: 7 days, the longest rolling window). Every
other figure is derived from that log plus the open candle, so the streams and REST agree:

* klines of 1m and longer intervals (REST, and the seed of a stream subscribed mid-candle) merge
  the minutes of their period; a REST kline equals the stream's closed kline bit for bit;
* 1s klines come from the REST trade history (``history_orders`` orders per symbol);
* tickers (``@ticker``, ``@miniTicker``, ``@ticker_<w>``, ``/api/v3/ticker/24hr``,
  ``/api/v3/ticker``) cover the trades from the minute boundary at or before ``now - window``
  up to now, like Binance's rolling window (``openTime`` on a minute, at most 59.999 s wider);
* the average price (``@avgPrice``, ``/api/v3/avgPrice``) is the volume-weighted price of the
  last 5 minutes (the open minute and the 4 before it).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from marketsim.model import Order
from marketsim.units import SCALE, fmt8

S = 1_000_000
MIN = 60 * S
HOUR = 60 * MIN
DAY = 24 * HOUR
_FIXED = {
    "1s": S,
    "1m": MIN,
    "3m": 3 * MIN,
    "5m": 5 * MIN,
    "15m": 15 * MIN,
    "30m": 30 * MIN,
    "1h": HOUR,
    "2h": 2 * HOUR,
    "4h": 4 * HOUR,
    "6h": 6 * HOUR,
    "8h": 8 * HOUR,
    "12h": 12 * HOUR,
    "1d": DAY,
    "3d": 3 * DAY,
}
INTERVALS = (*_FIXED, "1w", "1M")
MINUTES_KEPT = 7 * 24 * 60
TICKER_WINDOWS = {"1h": HOUR, "4h": 4 * HOUR, "1d": DAY}
AVG_PRICE_MINUTES = 5
_TZ_RE = re.compile(r"^([+-])(\d{1,2})(?::(\d{2}))?$")
_WINDOW_RE = re.compile(r"^(\d{1,2})([mhd])$")


def parse_tz(text: str) -> int | None:
    """``+08:00``/``-5``/``0`` → offset in µs (Binance: -12:00..+14:00); None when invalid."""
    if text in ("0", ""):
        return 0
    m = _TZ_RE.match(text)
    if not m:
        return None
    hours, minutes = int(m.group(2)), int(m.group(3) or 0)
    off = (hours * 60 + minutes) * MIN
    off = -off if m.group(1) == "-" else off
    return off if -12 * HOUR <= off <= 14 * HOUR and minutes < 60 else None


def parse_window(text: str) -> int | None:
    """Rolling window size (``1m``..``59m``, ``1h``..``23h``, ``1d``..``7d``) → µs; None if bad."""
    m = _WINDOW_RE.match(text)
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    limit = {"m": 59, "h": 23, "d": 7}[unit]
    if not 1 <= n <= limit:
        return None
    return n * {"m": MIN, "h": HOUR, "d": DAY}[unit]


def period_start(t_us: int, interval: str, tz_us: int = 0) -> int:
    """Open time of the ``interval`` candle holding ``t_us`` (weeks open on Monday, months on
    the 1st, all in the time zone ``tz_us``; fixed intervals are aligned to the epoch)."""
    local = t_us + tz_us
    n = _FIXED.get(interval)
    if n is not None:
        return local - local % n - tz_us
    if interval == "1w":
        return local - (local - 4 * DAY) % (7 * DAY) - tz_us  # 1970-01-05 was a Monday
    dt = datetime.fromtimestamp(local // S, UTC)
    start = datetime(dt.year, dt.month, 1, tzinfo=UTC)
    return int(start.timestamp()) * S - tz_us


def period_end(start_us: int, interval: str, tz_us: int = 0) -> int:
    """Open time of the candle after the one opening at ``start_us``."""
    n = _FIXED.get(interval)
    if n is not None:
        return start_us + n
    if interval == "1w":
        return start_us + 7 * DAY
    dt = datetime.fromtimestamp((start_us + tz_us) // S, UTC)
    y, m = (dt.year + 1, 1) if dt.month == 12 else (dt.year, dt.month + 1)
    return int(datetime(y, m, 1, tzinfo=UTC).timestamp()) * S - tz_us


@dataclass(slots=True)
class Candle:
    """One candle's aggregate; ``qv``/``tqv`` are price*qty sums in 1e-16 units."""

    open_us: int
    o: int
    h: int
    l: int  # noqa: E741
    c: int
    v: int
    qv: int
    tv: int
    tqv: int
    n: int
    first_id: int
    last_id: int

    def merge(self, other: Candle) -> None:
        """Append a later candle's trades."""
        if other.n == 0:
            return
        if self.n == 0:
            self.o = other.o
            self.first_id = other.first_id
            self.h, self.l = other.h, other.l
        else:
            self.h = max(self.h, other.h)
            self.l = min(self.l, other.l)
        self.c = other.c
        self.v += other.v
        self.qv += other.qv
        self.tv += other.tv
        self.tqv += other.tqv
        self.n += other.n
        self.last_id = other.last_id


def empty_candle(open_us: int, prev_close: int) -> Candle:
    return Candle(open_us, prev_close, prev_close, prev_close, prev_close, 0, 0, 0, 0, 0, -1, -1)


def _t(time_us: int, micro: bool) -> int:
    return time_us if micro else time_us // 1000


class Kline:
    """The candle of one symbol and interval, updated per order.

    Emission rule (deterministic, driven by trade times only): a ``kline`` update is due when the
    first trade of a candle arrives, when at least ``update_ms`` simulated ms passed since the last
    update, and a closed candle (``x: true``) is emitted when a trade opens the next candle. With
    ``log``, closed candles are kept (the always-on 1m kline: the source of every other figure).
    """

    __slots__ = (
        "B_",
        "close",
        "end_us",
        "first_id",
        "high",
        "interval",
        "last_emit_us",
        "last_id",
        "log",
        "low",
        "n",
        "name",
        "open",
        "open_us",
        "quote_vol",
        "symbol",
        "taker_quote",
        "taker_vol",
        "tz_us",
        "update_us",
        "vol",
    )

    def __init__(
        self,
        symbol: str,
        update_ms: int = 2000,
        interval: str = "1m",
        tz_us: int = 0,
        log: int = 0,
    ) -> None:
        self.symbol = symbol
        self.interval = interval
        self.tz_us = tz_us
        self.update_us = update_ms * 1000
        self.open_us = -1
        self.end_us = -1
        self.last_emit_us = -1
        self.B_ = 0
        self.log: deque[Candle] | None = deque(maxlen=log) if log else None

    def _start(self, t_us: int, first_id: int, price: int) -> None:
        self.open_us = period_start(t_us, self.interval, self.tz_us)
        self.end_us = period_end(self.open_us, self.interval, self.tz_us)
        self.open = self.high = self.low = self.close = price
        self.first_id = first_id
        self.last_id = first_id - 1
        self.n = 0
        self.vol = self.quote_vol = self.taker_vol = self.taker_quote = 0

    def candle(self) -> Candle | None:
        """The open candle, or None before the first trade."""
        if self.open_us < 0:
            return None
        return Candle(
            self.open_us,
            self.open,
            self.high,
            self.low,
            self.close,
            self.vol,
            self.quote_vol,
            self.taker_vol,
            self.taker_quote,
            self.n,
            self.first_id,
            self.last_id,
        )

    def seed(self, c: Candle, last_emit_us: int) -> None:
        """Start from an aggregate of earlier trades of the open candle (a late subscription)."""
        self.open_us = c.open_us
        self.end_us = period_end(c.open_us, self.interval, self.tz_us)
        self.open, self.high, self.low, self.close = c.o, c.h, c.l, c.c
        self.vol, self.quote_vol, self.taker_vol, self.taker_quote = c.v, c.qv, c.tv, c.tqv
        self.n, self.first_id, self.last_id = c.n, c.first_id, c.last_id
        self.last_emit_us = last_emit_us

    def apply(self, o: Order, want_ms: bool, want_us: bool) -> list[tuple[bytes, bytes]]:
        """Apply an order; return the kline payloads now due as (ms, µs) renderings.

        A rendering is ``b""`` when not wanted (no subscriber in that time unit).
        """
        out: list[tuple[bytes, bytes]] = []
        if self.open_us >= 0 and o.time_us >= self.end_us:
            if want_ms or want_us:
                out.append(self._both(o.time_us, True, want_ms, want_us))
            if self.log is not None:
                c = self.candle()
                assert c is not None
                self.log.append(c)
            self.open_us = -1
        new = self.open_us < 0
        if new:
            self._start(o.time_us, o.first_id, o.price)
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
        k = {
            "t": _t(self.open_us, micro),
            "T": _t(self.end_us, micro) - 1,
            "s": self.symbol,
            "i": self.interval,
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


def candles_of_orders(orders: Iterable[Order], interval: str, tz_us: int = 0) -> Iterator[Candle]:
    """Candles (with trades) of time-ordered orders."""
    cur: Candle | None = None
    for o in orders:
        start = period_start(o.time_us, interval, tz_us)
        q = o.qty_total
        qv = o.price * q
        taker = not o.buyer_maker
        if cur is None or start != cur.open_us:
            if cur is not None:
                yield cur
            cur = Candle(start, o.price, o.price, o.price, o.price, 0, 0, 0, 0, 0, o.first_id, 0)
        cur.h = max(cur.h, o.price)
        cur.l = min(cur.l, o.price)
        cur.c = o.price
        cur.v += q
        cur.qv += qv
        if taker:
            cur.tv += q
            cur.tqv += qv
        cur.n += len(o.qtys)
        cur.last_id = o.last_id
    if cur is not None:
        yield cur


def merge_minutes(minutes: Iterable[Candle], interval: str, tz_us: int = 0) -> Iterator[Candle]:
    """Merge time-ordered 1m candles into candles of a longer interval."""
    cur: Candle | None = None
    for m in minutes:
        start = period_start(m.open_us, interval, tz_us)
        if cur is None or start != cur.open_us:
            if cur is not None:
                yield cur
            cur = empty_candle(start, m.o)
        cur.merge(m)
    if cur is not None:
        yield cur


def with_gaps(candles: list[Candle], interval: str, tz_us: int = 0) -> list[Candle]:
    """Fill the periods without trades between candles, as Binance does (flat at the close)."""
    out: list[Candle] = []
    for c in candles:
        if out:
            t = period_end(out[-1].open_us, interval, tz_us)
            while t < c.open_us:
                out.append(empty_candle(t, out[-1].c))
                t = period_end(t, interval, tz_us)
        out.append(c)
    return out


def kline_row(c: Candle, interval: str, micro: bool, tz_us: int = 0) -> list[Any]:
    """A REST kline: ``[t, o, h, l, c, v, T, q, n, V, Q, "0"]``."""
    end = period_end(c.open_us, interval, tz_us)
    return [
        _t(c.open_us, micro),
        fmt8(c.o),
        fmt8(c.h),
        fmt8(c.l),
        fmt8(c.c),
        fmt8(c.v),
        _t(end, micro) - 1,
        fmt8(c.qv // SCALE),
        c.n,
        fmt8(c.tv),
        fmt8(c.tqv // SCALE),
        "0",
    ]


@dataclass(slots=True)
class Window:
    """Rolling statistics of one symbol over ``open_us..close_us``."""

    open_us: int
    close_us: int
    agg: Candle
    prev_close: int  # price of the last trade before the window (0 if none)
    last_price: int

    def price_change(self) -> int:
        return self.last_price - self.agg.o if self.agg.n else 0

    def change_percent(self) -> str:
        """Percent change with 3 decimals, truncated toward zero."""
        if not self.agg.n or self.agg.o == 0:
            return "0.000"
        ch = self.price_change()
        v = abs(ch) * 100_000 // self.agg.o
        return f"{'-' if ch < 0 and v else ''}{v // 1000}.{v % 1000:03d}"

    def weighted_avg(self) -> int:
        return self.agg.qv // self.agg.v if self.agg.v else 0


class MarketData:
    """Per-symbol always-on 1m klines and everything derived from them."""

    def __init__(self, update_ms: int = 2000) -> None:
        self.update_ms = update_ms
        self.klines: dict[str, Kline] = {}

    def kline(self, symbol: str) -> Kline:
        kl = self.klines.get(symbol)
        if kl is None:
            kl = self.klines[symbol] = Kline(symbol, self.update_ms, log=MINUTES_KEPT)
        return kl

    def minutes(self, symbol: str, since_us: int = 0) -> list[Candle]:
        """The kept 1m candles opening at or after ``since_us``, the open one last."""
        kl = self.klines.get(symbol)
        if kl is None:
            return []
        log = kl.log
        assert log is not None
        out: list[Candle] = []
        for c in reversed(log):
            if c.open_us < since_us:
                break
            out.append(c)
        out.reverse()
        cur = kl.candle()
        if cur is not None and cur.open_us >= since_us:
            out.append(cur)
        return out

    def _before(self, symbol: str, t_us: int) -> int:
        """Close of the last kept minute opening before ``t_us`` (0 if none)."""
        kl = self.klines.get(symbol)
        if kl is None:
            return 0
        assert kl.log is not None
        for c in reversed(kl.log):
            if c.open_us < t_us:
                return c.c
        return 0

    def window(self, symbol: str, size_us: int, now_us: int) -> Window:
        start = period_start(now_us - size_us, "1m")
        agg = empty_candle(start, 0)
        for m in self.minutes(symbol, start):
            if m.open_us <= now_us:
                agg.merge(m)
        kl = self.klines.get(symbol)
        last = kl.close if kl is not None and kl.open_us >= 0 else 0
        return Window(start, now_us, agg, self._before(symbol, start), last)

    def avg_price(self, symbol: str, now_us: int) -> int:
        start = period_start(now_us, "1m") - (AVG_PRICE_MINUTES - 1) * MIN
        v = qv = 0
        for m in self.minutes(symbol, start):
            v += m.v
            qv += m.qv
        if v:
            return qv // v
        kl = self.klines.get(symbol)
        return kl.close if kl is not None and kl.open_us >= 0 else 0

    def candles(
        self, symbol: str, interval: str, tz_us: int, history: Iterable[Order]
    ) -> list[Candle]:
        """All known candles of ``symbol`` (with the empty periods filled), oldest first."""
        if interval == "1s":
            cs = list(candles_of_orders(history, "1s", tz_us))
        elif interval == "1m":
            cs = self.minutes(symbol)
        else:
            cs = list(merge_minutes(self.minutes(symbol), interval, tz_us))
        return with_gaps(cs, interval, tz_us)

    def seed_stream_kline(
        self, symbol: str, interval: str, tz_us: int, history: Iterable[Order], last_us: int
    ) -> Kline:
        """A stream kline that starts mid-candle with the trades the candle already has
        (``last_us``: the time of the symbol's last trade)."""
        k = Kline(symbol, 1000 if interval == "1s" else self.update_ms, interval, tz_us)
        kl = self.klines.get(symbol)
        if kl is None or kl.open_us < 0:
            return k
        now = last_us
        start = period_start(now, interval, tz_us)
        if interval == "1s":
            src = list(candles_of_orders((o for o in history if o.time_us >= start), "1s", tz_us))
        else:
            src = list(merge_minutes(self.minutes(symbol, start), interval, tz_us))
        if src and src[-1].open_us == start:
            k.seed(src[-1], now)
        return k


# ---------- ticker payloads (streams) and bodies (REST) ----------


def _id_range(w: Window) -> tuple[int, int]:
    return (w.agg.first_id, w.agg.last_id) if w.agg.n else (-1, -1)


def ticker_payload(
    kind: str, symbol: str, w: Window, last: Order | None, event_us: int, micro: bool
) -> dict[str, Any]:
    """``24hrTicker`` (kind ``ticker``), ``24hrMiniTicker`` (``miniTicker``) or ``<w>Ticker``
    (``ticker_<w>``) event of one symbol."""
    a = w.agg
    first, last_id = _id_range(w)
    if kind == "miniTicker":
        return {
            "e": "24hrMiniTicker",
            "E": _t(event_us, micro),
            "s": symbol,
            "c": fmt8(w.last_price),
            "o": fmt8(a.o),
            "h": fmt8(a.h),
            "l": fmt8(a.l),
            "v": fmt8(a.v),
            "q": fmt8(a.qv // SCALE),
        }
    common = {
        "p": fmt8(w.price_change()),
        "P": w.change_percent(),
        "o": fmt8(a.o),
        "h": fmt8(a.h),
        "l": fmt8(a.l),
        "c": fmt8(w.last_price),
        "w": fmt8(w.weighted_avg()),
        "v": fmt8(a.v),
        "q": fmt8(a.qv // SCALE),
        "O": _t(w.open_us, micro),
        "C": _t(w.close_us, micro),
        "F": first,
        "L": last_id,
        "n": a.n,
    }
    if kind == "ticker":
        full = {
            "e": "24hrTicker",
            "E": _t(event_us, micro),
            "s": symbol,
            "p": common["p"],
            "P": common["P"],
            "w": common["w"],
            "x": fmt8(w.prev_close),
            "c": common["c"],
            "Q": fmt8(last.qtys[-1] if last else 0),
            "b": fmt8(last.bid if last else 0),
            "B": fmt8(last.bid_qty if last else 0),
            "a": fmt8(last.ask if last else 0),
            "A": fmt8(last.ask_qty if last else 0),
        }
        for k in ("o", "h", "l", "v", "q", "O", "C", "F", "L", "n"):
            full[k] = common[k]
        return full
    return {
        "e": f"{kind.removeprefix('ticker_')}Ticker",
        "E": _t(event_us, micro),
        "s": symbol,
        **common,
    }


def avg_price_payload(
    symbol: str, price: int, last_trade_us: int, event_us: int, micro: bool
) -> dict[str, Any]:
    return {
        "e": "avgPrice",
        "E": _t(event_us, micro),
        "s": symbol,
        "i": f"{AVG_PRICE_MINUTES}m",
        "w": fmt8(price),
        "T": _t(last_trade_us, micro),
    }


def ticker_body(
    symbol: str, w: Window, last: Order | None, full: bool, rolling: bool, micro: bool
) -> dict[str, Any]:
    """A REST ticker: ``/api/v3/ticker/24hr`` (``rolling=False``) or ``/api/v3/ticker``."""
    a = w.agg
    first, last_id = _id_range(w)
    body: dict[str, Any] = {"symbol": symbol}
    if full:
        body["priceChange"] = fmt8(w.price_change())
        body["priceChangePercent"] = w.change_percent()
        body["weightedAvgPrice"] = fmt8(w.weighted_avg())
        if not rolling:
            body["prevClosePrice"] = fmt8(w.prev_close)
    body["openPrice"] = fmt8(a.o)
    body["highPrice"] = fmt8(a.h)
    body["lowPrice"] = fmt8(a.l)
    body["lastPrice"] = fmt8(w.last_price)
    if full and not rolling:
        body["lastQty"] = fmt8(last.qtys[-1] if last else 0)
        body["bidPrice"] = fmt8(last.bid if last else 0)
        body["bidQty"] = fmt8(last.bid_qty if last else 0)
        body["askPrice"] = fmt8(last.ask if last else 0)
        body["askQty"] = fmt8(last.ask_qty if last else 0)
    body["volume"] = fmt8(a.v)
    body["quoteVolume"] = fmt8(a.qv // SCALE)
    body["openTime"] = _t(w.open_us, micro)
    body["closeTime"] = _t(w.close_us, micro)
    body["firstId"] = first
    body["lastId"] = last_id
    body["count"] = a.n
    return body
