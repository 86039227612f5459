"""Binance's REST formats (sans-I/O): hosts, backfill pages and rows, the newest id, exchangeInfo.

Backfill by id, per stream kind:

* ``trade``: ``GET /api/v3/historicalTrades?symbol=S&fromId=first&limit=n`` (rows keyed ``id``).
  ``/api/v3/trades`` has no ``fromId`` and only serves the newest trades, so it cannot target a gap.
* ``aggTrade``: ``GET /api/v3/aggTrades?symbol=S&fromId=first&limit=n`` (rows keyed ``a``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from cryptostream.core.symbols import SYMBOL_RE
from cryptostream.core.trades import Trade, check_int, check_positive_decimal

MAX_LIMIT = 1000
ENDPOINTS = {"trade": "/api/v3/historicalTrades", "aggTrade": "/api/v3/aggTrades"}
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"  # every symbol, its status and quote asset

# Binance's market-data WebSocket hosts and the REST hosts that serve the same data.
_REST_HOSTS = {
    "stream.binance.com": "https://api.binance.com",
    "data-stream.binance.vision": "https://data-api.binance.vision",
    "stream.testnet.binance.vision": "https://testnet.binance.vision",
}


def rest_base_url(ws_url: str) -> str:
    """The REST base for a WebSocket base: Binance's API hosts, else the same host and port
    (the simulator serves both on one port)."""
    parts = urlsplit(ws_url)
    host = parts.hostname or ""
    if host in _REST_HOSTS:
        return _REST_HOSTS[host]
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "", "", "")).rstrip("/")


@dataclass(frozen=True, slots=True)
class RestRequest:
    path: str
    params: dict[str, str]

    def url(self, base: str) -> str:
        return f"{base.rstrip('/')}{self.path}?{urlencode(self.params)}"


class RowError(ValueError):
    """A REST row that is not a valid trade."""


def row_to_trade(symbol: str, kind: str, row: Any) -> Trade:
    """One ``historicalTrades`` (kind ``trade``) or ``aggTrades`` row as a Trade."""
    if not isinstance(row, dict):
        raise RowError("row is not an object")
    try:
        if kind == "trade":
            tid, price, qty, time_ms, maker = (
                row["id"],
                row["price"],
                row["qty"],
                row["time"],
                row["isBuyerMaker"],
            )
        else:
            tid, price, qty, time_ms, maker = row["a"], row["p"], row["q"], row["T"], row["m"]
        if not isinstance(maker, bool):
            raise ValueError("buyer-is-maker must be a boolean")
        t = check_int(time_ms, "time")
        return Trade(
            symbol,
            check_int(tid, "id"),
            check_positive_decimal(price, "price"),
            check_positive_decimal(qty, "qty"),
            t,
            t,
            maker,
        )
    except KeyError as exc:
        raise RowError(f"row is missing {exc.args[0]!r}") from None
    except ValueError as exc:
        raise RowError(str(exc)) from None


def page_request(symbol: str, kind: str, from_id: int, limit: int) -> RestRequest:
    """One backfill page: up to ``limit`` (at most ``MAX_LIMIT``) ids of ``kind`` from ``from_id``."""
    if kind not in ENDPOINTS:
        raise ValueError(f"unknown stream kind {kind!r}")
    params = {"symbol": symbol, "fromId": str(from_id), "limit": str(min(limit, MAX_LIMIT))}
    return RestRequest(ENDPOINTS[kind], params)


def trading_symbols(exchange_info: Any, quote_asset: str) -> list[str]:
    """Every symbol with status TRADING and the given quote asset, from ``exchangeInfo``."""
    if not isinstance(exchange_info, dict) or not isinstance(exchange_info.get("symbols"), list):
        raise ValueError("exchangeInfo has no 'symbols' list")
    quote = quote_asset.upper()
    out: list[str] = []
    for entry in exchange_info["symbols"]:
        if not isinstance(entry, dict):
            continue
        symbol = entry.get("symbol")
        if (
            entry.get("status") == "TRADING"
            and entry.get("quoteAsset") == quote
            and isinstance(symbol, str)
            and SYMBOL_RE.fullmatch(symbol)
        ):
            out.append(symbol.upper())
    return sorted(set(out))


def newest_request(symbol: str) -> RestRequest:
    """The newest aggregate trade: its ``a`` is the newest aggTrade id, its ``l`` the newest
    trade id, so one cheap request serves both stream kinds."""
    return RestRequest("/api/v3/aggTrades", {"symbol": symbol, "limit": "1"})


def newest_id(kind: str, rows: Any) -> int | None:
    """The newest id of stream ``kind`` in an ``aggTrades?limit=1`` reply (``None``: no trades)."""
    if not isinstance(rows, list):
        raise RowError("reply is not a list")
    if not rows:
        return None
    row = rows[-1]
    if not isinstance(row, dict):
        raise RowError("row is not an object")
    key = "l" if kind == "trade" else "a"
    try:
        return check_int(row[key], key)
    except KeyError:
        raise RowError(f"row is missing {key!r}") from None
    except ValueError as exc:
        raise RowError(str(exc)) from None
