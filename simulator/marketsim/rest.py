"""The REST subset, as pure functions of (path, query, state) → (status, JSON body).

Served on the same port as the WebSocket streams (plain HTTP GET, no upgrade):
``/api/v3/ping``, ``/api/v3/time``, ``/api/v3/exchangeInfo``, ``/api/v3/trades``,
``/api/v3/historicalTrades`` (``fromId``), ``/api/v3/aggTrades``, the market data
``/api/v3/klines``, ``/api/v3/uiKlines``, ``/api/v3/ticker/24hr``, ``/api/v3/ticker/price``,
``/api/v3/ticker/bookTicker``, ``/api/v3/ticker`` (rolling window), ``/api/v3/avgPrice`` (all
derived as :mod:`marketsim.market` documents, so they agree with the streams), the order book
``/api/v3/depth`` (``limit`` default 100, more than 5000 answers 5000, below 1 or not an integer
-1100; from the served book, so its ``lastUpdateId`` fits the diff streams; a symbol without a
book yet, e.g. a replay before its snapshot line, gets 503 -1001) and the simulator's own
``/sim/stats``. Times are ms unless ``X-MBX-TIME-UNIT: MICROSECOND`` is sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from marketsim import market as mk
from marketsim.book import MAX_DEPTH_LIMIT, L2Book, Level
from marketsim.model import Order
from marketsim.symbols import SymbolSpec
from marketsim.truth import Truth
from marketsim.units import fmt8, fmt_product

Body = Any
Result = tuple[int, Body]


def _error(status: int, code: int, msg: str) -> Result:
    return status, {"code": code, "msg": msg}


def _int_param(q: Mapping[str, str], name: str) -> int | None:
    if name not in q:
        return None
    try:
        return int(q[name])
    except ValueError:
        raise _ParamError(name) from None


class _ParamError(Exception):
    pass


def _limit(q: Mapping[str, str], default: int = 500, maximum: int = 1000) -> int:
    v = _int_param(q, "limit")
    if v is None:
        return default
    return max(1, min(v, maximum))


class RestApi:
    def __init__(
        self,
        truth: Truth,
        specs: Callable[[], Sequence[SymbolSpec]],
        now_us: Callable[[], int],
        extra_stats: Callable[[], dict[str, Any]] | None = None,
        market: mk.MarketData | None = None,
        limits: tuple[int, int] = (6000, 61_000),
        depth: Callable[[str, int], tuple[int, list[Level], list[Level]] | None] | None = None,
        book: Callable[[str], L2Book | None] | None = None,
    ) -> None:
        self.depth = depth
        self.book = book
        self.limits = limits  # (request weight per minute, raw requests per 5 minutes)
        self.market = market if market is not None else mk.MarketData()
        self.truth = truth
        self.specs = specs
        self.now_us = now_us
        self.extra_stats = extra_stats

    def handle(self, path: str, query: Mapping[str, str], micro: bool = False) -> Result:
        try:
            return self._route(path, query, micro)
        except _ParamError as exc:
            return _error(400, -1100, f"Illegal characters found in parameter '{exc.args[0]}'.")

    def _route(self, path: str, q: Mapping[str, str], micro: bool) -> Result:
        div = 1 if micro else 1000
        path = path.rstrip("/") or "/"
        if path == "/api/v3/ping":
            return 200, {}
        if path == "/api/v3/time":
            return 200, {"serverTime": self.now_us() // div}
        if path == "/api/v3/exchangeInfo":
            return self._exchange_info(q, div)
        if path == "/sim/stats":
            body = self.truth.as_json()
            if self.extra_stats:
                body.update(self.extra_stats())
            return 200, body
        if path in ("/api/v3/trades", "/api/v3/historicalTrades", "/api/v3/aggTrades"):
            sym = q.get("symbol")
            if not sym:
                return _error(
                    400,
                    -1102,
                    "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                )
            sym = sym.upper()
            if sym not in {s.symbol for s in self.specs()}:
                return _error(400, -1121, "Invalid symbol.")
            hist = self.truth.history.get(sym, deque())
            if path == "/api/v3/aggTrades":
                return self._agg_trades(hist, q, div)
            from_id = _int_param(q, "fromId") if path.endswith("historicalTrades") else None
            return 200, self._trades(hist, _limit(q), from_id, div)
        if path in _MARKET_DATA:
            return _MARKET_DATA[path](self, q, micro)
        return _error(404, -1000, f"Unknown endpoint {path}")

    # ----- market data -----

    def _symbol(self, q: Mapping[str, str]) -> str | Result:
        sym = q.get("symbol")
        if not sym:
            return _missing("symbol")
        sym = sym.upper()
        if sym not in {s.symbol for s in self.specs()}:
            return _error(400, -1121, "Invalid symbol.")
        return sym

    def _symbols(self, q: Mapping[str, str], required: bool) -> list[str] | Result:
        """``symbol`` or ``symbols`` (a JSON array); neither: every symbol, unless required."""
        known = [s.symbol for s in self.specs()]
        if "symbol" in q and "symbols" in q:
            return _error(400, -1102, "Param 'symbol' or 'symbols' should be sent, but not both.")
        if "symbol" in q:
            sym = self._symbol(q)
            return [sym] if isinstance(sym, str) else sym
        if "symbols" in q:
            try:
                names = orjson.loads(q["symbols"])
            except orjson.JSONDecodeError:
                return _error(400, -1100, "Illegal characters found in parameter 'symbols'.")
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) for n in names)
            ):
                return _error(400, -1100, "Illegal characters found in parameter 'symbols'.")
            wanted = [n.upper() for n in names]
            if not set(wanted) <= set(known):
                return _error(400, -1121, "Invalid symbol.")
            return list(dict.fromkeys(wanted))
        if required:
            return _missing("symbol")
        return known

    def _klines(self, q: Mapping[str, str], micro: bool) -> Result:
        sym = self._symbol(q)
        if not isinstance(sym, str):
            return sym
        interval = q.get("interval")
        if not interval:
            return _missing("interval")
        if interval not in mk.INTERVALS:
            return _error(400, -1120, "Invalid interval.")
        tz = mk.parse_tz(q.get("timeZone", "0"))
        if tz is None:
            return _error(400, -1100, "Illegal characters found in parameter 'timeZone'.")
        limit = _limit(q, 500, 1000)
        start, end = _time_param(q, "startTime", False), _time_param(q, "endTime", True)
        hist = self.truth.history.get(sym, deque())
        cs = self.market.candles(sym, interval, tz, hist)
        if start is not None:
            cs = [c for c in cs if c.open_us >= start]
        if end is not None:
            cs = [c for c in cs if c.open_us <= end]
        cs = cs[:limit] if start is not None else cs[-limit:]
        return 200, [mk.kline_row(c, interval, micro, tz) for c in cs]

    def _ticker_window(self, q: Mapping[str, str], micro: bool, rolling: bool) -> Result:
        syms = self._symbols(q, required=rolling)
        if not isinstance(syms, list):
            return syms
        kind = q.get("type", "FULL")
        if kind not in ("FULL", "MINI"):
            return _error(400, -1100, "Illegal characters found in parameter 'type'.")
        size = mk.DAY
        if rolling:
            w = mk.parse_window(q.get("windowSize", "1d"))
            if w is None:
                return _error(400, -1100, "Illegal characters found in parameter 'windowSize'.")
            size = w
        now = self.now_us()
        out = []
        for sym in syms:
            hist = self.truth.history.get(sym)
            win = self.market.window(sym, size, now)
            out.append(
                mk.ticker_body(sym, win, hist[-1] if hist else None, kind == "FULL", rolling, micro)
            )
        return 200, out[0] if "symbol" in q else out

    def _ticker_24hr(self, q: Mapping[str, str], micro: bool) -> Result:
        return self._ticker_window(q, micro, rolling=False)

    def _ticker_rolling(self, q: Mapping[str, str], micro: bool) -> Result:
        return self._ticker_window(q, micro, rolling=True)

    def _ticker_price(self, q: Mapping[str, str], micro: bool) -> Result:
        syms = self._symbols(q, required=False)
        if not isinstance(syms, list):
            return syms
        out = []
        for sym in syms:
            hist = self.truth.history.get(sym)
            out.append({"symbol": sym, "price": fmt8(hist[-1].price if hist else 0)})
        return 200, out[0] if "symbol" in q else out

    def _depth(self, q: Mapping[str, str], micro: bool) -> Result:
        sym = self._symbol(q)
        if not isinstance(sym, str):
            return sym
        limit = _int_param(q, "limit")
        if limit is None:
            limit = 100
        elif limit < 1:
            return _error(400, -1100, "Illegal characters found in parameter 'limit'.")
        snap = self.depth(sym, min(limit, MAX_DEPTH_LIMIT)) if self.depth is not None else None
        if snap is None:
            return _error(
                503, -1001, "Internal error; unable to process your request. Please try again."
            )
        last, bids, asks = snap
        return 200, {
            "lastUpdateId": last,
            "bids": [[fmt8(p), fmt8(v)] for p, v in bids],
            "asks": [[fmt8(p), fmt8(v)] for p, v in asks],
        }

    def _book_ticker(self, q: Mapping[str, str], micro: bool) -> Result:
        syms = self._symbols(q, required=False)
        if not isinstance(syms, list):
            return syms
        out = []
        for sym in syms:
            b = self.book(sym) if self.book is not None else None
            bid, ask = (b.best_bid(), b.best_ask()) if b is not None else (None, None)
            if bid is not None and ask is not None:
                out.append(
                    {
                        "symbol": sym,
                        "bidPrice": fmt8(bid[0]),
                        "bidQty": fmt8(bid[1]),
                        "askPrice": fmt8(ask[0]),
                        "askQty": fmt8(ask[1]),
                    }
                )
                continue
            hist = self.truth.history.get(sym)
            o = hist[-1] if hist else None
            out.append(
                {
                    "symbol": sym,
                    "bidPrice": fmt8(o.bid if o else 0),
                    "bidQty": fmt8(o.bid_qty if o else 0),
                    "askPrice": fmt8(o.ask if o else 0),
                    "askQty": fmt8(o.ask_qty if o else 0),
                }
            )
        return 200, out[0] if "symbol" in q else out

    def _avg_price(self, q: Mapping[str, str], micro: bool) -> Result:
        sym = self._symbol(q)
        if not isinstance(sym, str):
            return sym
        st = self.truth.symbols.get(sym)
        price = self.market.avg_price(sym, self.now_us())
        close = st.last_time_us if st is not None else 0
        return 200, {
            "mins": mk.AVG_PRICE_MINUTES,
            "price": fmt8(price),
            "closeTime": close if micro else close // 1000,
        }

    def _exchange_info(self, q: Mapping[str, str], div: int) -> Result:
        specs = list(self.specs())
        wanted: set[str] | None = None
        if "symbol" in q:
            wanted = {q["symbol"].upper()}
        elif "symbols" in q:
            try:
                names = orjson.loads(q["symbols"])
            except orjson.JSONDecodeError:
                return _error(400, -1100, "Illegal characters found in parameter 'symbols'.")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return _error(400, -1100, "Illegal characters found in parameter 'symbols'.")
            wanted = {n.upper() for n in names}
        if wanted is not None:
            known = {s.symbol for s in specs}
            if not wanted <= known:
                return _error(400, -1121, "Invalid symbol.")
            specs = [s for s in specs if s.symbol in wanted]
        return 200, {
            "timezone": "UTC",
            "serverTime": self.now_us() // div,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.limits[0],
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {
                    "rateLimitType": "RAW_REQUESTS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": self.limits[1],
                },
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(s) for s in specs],
        }

    def _trades(self, hist: deque[Order], limit: int, from_id: int | None, div: int) -> list[Body]:
        if from_id is None:
            rows: list[Body] = []
            for o in reversed(hist):
                rows[:0] = list(_trade_rows(o, div))
                if len(rows) >= limit:
                    break
            return rows[-limit:]
        start = _first_order_index(hist, from_id, lambda o: o.last_id)
        out: list[Body] = []
        for i in range(start, len(hist)):
            for r in _trade_rows(hist[i], div):
                if r["id"] >= from_id:
                    out.append(r)
                    if len(out) >= limit:
                        return out
        return out

    def _agg_trades(self, hist: deque[Order], q: Mapping[str, str], div: int) -> Result:
        limit = _limit(q)
        from_id = _int_param(q, "fromId")
        start_t = _int_param(q, "startTime")
        end_t = _int_param(q, "endTime")
        # time params accept ms or µs (16 digits); both bounds are inclusive
        s_us = None if start_t is None else (start_t if start_t >= 10**14 else start_t * 1000)
        e_us = None if end_t is None else (end_t if end_t >= 10**14 else end_t * 1000 + 999)
        if s_us is not None and e_us is not None and s_us > e_us:
            return _error(400, -1128, "Combination of optional parameters invalid.")
        if from_id is not None:
            idx = _first_order_index(hist, from_id, lambda o: o.agg_id)
        elif s_us is not None:
            idx = _first_order_index(hist, s_us, lambda o: o.time_us)
        elif e_us is not None:
            idx = max(0, _first_order_index(hist, e_us + 1, lambda o: o.time_us) - limit)
        else:
            idx = max(0, len(hist) - limit)
        out: list[Body] = []
        for i in range(idx, len(hist)):
            o = hist[i]
            if e_us is not None and o.time_us > e_us:
                break
            if s_us is not None and o.time_us < s_us:
                continue
            out.append(_agg_row(o, div))
            if len(out) >= limit:
                break
        return 200, out


_MARKET_DATA: dict[str, Callable[[RestApi, Mapping[str, str], bool], Result]] = {
    "/api/v3/klines": RestApi._klines,
    "/api/v3/uiKlines": RestApi._klines,
    "/api/v3/ticker/24hr": RestApi._ticker_24hr,
    "/api/v3/ticker": RestApi._ticker_rolling,
    "/api/v3/ticker/price": RestApi._ticker_price,
    "/api/v3/ticker/bookTicker": RestApi._book_ticker,
    "/api/v3/avgPrice": RestApi._avg_price,
    "/api/v3/depth": RestApi._depth,
}


def _missing(name: str) -> Result:
    return _error(
        400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def _time_param(q: Mapping[str, str], name: str, end: bool) -> int | None:
    """A time parameter (ms, or µs with 16 digits) in µs; an end bound covers its whole ms."""
    v = _int_param(q, name)
    if v is None:
        return None
    if v >= 10**14:
        return v
    return v * 1000 + (999 if end else 0)


def _first_order_index(hist: deque[Order], value: int, key: Callable[[Order], int]) -> int:
    """Index of the first order whose key is >= value (keys are non-decreasing)."""
    lo, hi = 0, len(hist)
    while lo < hi:
        mid = (lo + hi) // 2
        if key(hist[mid]) < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _trade_rows(o: Order, div: int) -> Iterator[Body]:
    p = fmt8(o.price)
    t = o.time_us // div
    for i, qty in enumerate(o.qtys):
        yield {
            "id": o.first_id + i,
            "price": p,
            "qty": fmt8(qty),
            "quoteQty": fmt_product(o.price, qty),
            "time": t,
            "isBuyerMaker": o.buyer_maker,
            "isBestMatch": True,
        }


def _agg_row(o: Order, div: int) -> Body:
    return {
        "a": o.agg_id,
        "p": fmt8(o.price),
        "q": fmt8(o.qty_total),
        "f": o.first_id,
        "l": o.last_id,
        "T": o.time_us // div,
        "m": o.buyer_maker,
        "M": True,
    }


def _symbol_info(s: SymbolSpec) -> Body:
    tick = fmt8(s.tick_size)
    step = fmt8(s.step_size)
    precision = 8
    return {
        "symbol": s.symbol,
        "status": "TRADING",
        "baseAsset": s.base_asset,
        "baseAssetPrecision": precision,
        "quoteAsset": s.quote_asset,
        "quotePrecision": precision,
        "quoteAssetPrecision": precision,
        "baseCommissionPrecision": precision,
        "quoteCommissionPrecision": precision,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "1000000.00000000",
                "tickSize": tick,
            },
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000.00000000", "stepSize": step},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }
