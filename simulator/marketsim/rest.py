"""The REST subset, as pure functions of (path, query, state) → (status, JSON body).

Served on the same port as the WebSocket streams (plain HTTP GET, no upgrade):
``/api/v3/ping``, ``/api/v3/time``, ``/api/v3/exchangeInfo``, ``/api/v3/trades``,
``/api/v3/historicalTrades`` (``fromId``), ``/api/v3/aggTrades`` and the simulator's own
``/sim/stats``. Times are ms unless the ``X-MBX-TIME-UNIT: MICROSECOND`` header is sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson

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
    ) -> None:
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
        return _error(404, -1000, f"Unknown endpoint {path}")

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
                    "limit": 6000,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {
                    "rateLimitType": "RAW_REQUESTS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": 61000,
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
