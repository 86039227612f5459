"""REST rate limits as Binance enforces them, per client IP. Pure, no I/O (times are passed in).

* Request weight per endpoint and parameters (:func:`request_weight`, Binance's documented
  weights), counted in fixed one-minute windows (``REQUEST_WEIGHT``, 6000 per minute), and raw
  requests in fixed 5-minute windows (``RAW_REQUESTS``, 61000); the used weight is reported on
  every response as ``X-MBX-USED-WEIGHT`` and ``X-MBX-USED-WEIGHT-1M``.
* A request that would go over a limit is refused with 429, ``Retry-After`` (seconds to the end
  of the window) and code -1003; the weight is not spent.
* A client that keeps going (``ban_after`` more requests after its first 429 before the window
  ends; Binance does not publish its threshold) is banned: 418 with ``Retry-After`` for the ban,
  2 minutes for the first ban, doubling for each next one, at most 3 days (Binance's range).
* The simulator's own ``/sim/...`` endpoints are never limited (a harness polls them from the
  same IP as the client under test).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

MINUTE = 60.0
RAW_WINDOW = 300.0
BAN_FIRST_S = 120.0
BAN_MAX_S = 3 * 24 * 3600.0

_FIXED = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/trades": 25,
    "/api/v3/historicalTrades": 25,
    "/api/v3/aggTrades": 4,
    "/api/v3/klines": 2,
    "/api/v3/uiKlines": 2,
    "/api/v3/avgPrice": 2,
}


def _n_symbols(q: Mapping[str, str]) -> int | None:
    """1 for ``symbol``, the length of ``symbols``, None for neither (every symbol)."""
    if "symbol" in q:
        return 1
    if "symbols" in q:
        try:
            names = orjson.loads(q["symbols"])
        except orjson.JSONDecodeError:
            return 1
        return len(names) if isinstance(names, list) else 1
    return None


def request_weight(path: str, q: Mapping[str, str]) -> int:
    """The weight Binance charges for one request (0 for the simulator's own ``/sim/``)."""
    path = path.rstrip("/") or "/"
    if path.startswith("/sim/"):
        return 0
    w = _FIXED.get(path)
    if w is not None:
        return w
    n = _n_symbols(q)
    if path == "/api/v3/ticker/24hr":
        if n is None or n > 100:
            return 80
        return 2 if n <= 20 else 40
    if path in ("/api/v3/ticker/price", "/api/v3/ticker/bookTicker"):
        return 2 if "symbol" in q else 4
    if path == "/api/v3/ticker":
        return min(4 * (n or 1), 200)
    if path == "/api/v3/depth":
        limit = int(q["limit"]) if q.get("limit", "").isdigit() else 100
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    return 1


@dataclass(slots=True)
class _Ip:
    minute: int = -1
    weight: int = 0
    raw_window: int = -1
    raw: int = 0
    over_since_429: int = -1  # requests since the first 429 of this window (-1: none)
    banned_until: float = 0.0
    bans: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    status: int  # 200: serve it; 429 or 418: refuse
    used_weight: int
    retry_after: int = 0
    body: dict[str, object] | None = None


@dataclass(slots=True)
class RestLimiter:
    """Per-IP weight and raw-request counters; ``weight_limit`` 0 disables every limit."""

    weight_limit: int = 6000
    raw_limit: int = 61_000
    ban_after: int = 10
    ips: dict[str, _Ip] = field(default_factory=dict)
    refused: int = 0
    banned: int = 0

    def check(self, ip: str, weight: int, now: float) -> Verdict:
        """Account one request of ``weight`` at ``now`` (seconds) from ``ip``."""
        st = self.ips.get(ip)
        if st is None:
            st = self.ips[ip] = _Ip()
        minute = int(now // MINUTE)
        if minute != st.minute:
            st.minute, st.weight, st.over_since_429 = minute, 0, -1
        raw_window = int(now // RAW_WINDOW)
        if raw_window != st.raw_window:
            st.raw_window, st.raw = raw_window, 0
        if self.weight_limit <= 0:
            st.weight += weight
            return Verdict(200, st.weight)
        if now < st.banned_until:
            self.banned += 1
            return self._ban_verdict(st, now)
        over_weight = st.weight + weight > self.weight_limit
        over_raw = st.raw + 1 > self.raw_limit
        if over_weight or over_raw:
            self.refused += 1
            st.over_since_429 += 1
            if st.over_since_429 > self.ban_after:
                st.bans += 1
                st.banned_until = now + min(BAN_FIRST_S * 2 ** (st.bans - 1), BAN_MAX_S)
                self.banned += 1
                return self._ban_verdict(st, now)
            if over_weight:
                end = (minute + 1) * MINUTE
                msg = (
                    f"Too much request weight used; current limit is {self.weight_limit} request "
                    "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid "
                    "polling the API."
                )
            else:
                end = (raw_window + 1) * RAW_WINDOW
                msg = f"Too many requests; current limit is {self.raw_limit} requests per 5 MINUTE."
            retry = max(1, math.ceil(end - now))
            return Verdict(429, st.weight, retry, {"code": -1003, "msg": msg})
        st.weight += weight
        st.raw += 1
        return Verdict(200, st.weight)

    def _ban_verdict(self, st: _Ip, now: float) -> Verdict:
        until_ms = int(st.banned_until * 1000)
        return Verdict(
            418,
            st.weight,
            max(1, math.ceil(st.banned_until - now)),
            {
                "code": -1003,
                "msg": f"Way too much request weight used; IP banned until {until_ms}. Please use "
                "WebSocket Streams for live updates to avoid bans.",
            },
        )
