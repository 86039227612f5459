"""REST side of ingest, sans-I/O: which request fills which gap, rows -> trades, discovery.

Backfill by id, per stream kind:

* ``trade``: ``GET /api/v3/historicalTrades?symbol=S&fromId=first&limit=n`` (rows keyed ``id``).
  ``/api/v3/trades`` has no ``fromId`` and only serves the newest trades, so it cannot target a gap.
* ``aggTrade``: ``GET /api/v3/aggTrades?symbol=S&fromId=first&limit=n`` (rows keyed ``a``).

:class:`BackfillPlan` walks a gap ``first..last`` in pages of at most 1000 ids. A page whose first
row is above the id asked for means the server no longer has the ids in between (its history is
bounded): those are skipped and stay unrecoverable. An empty page ends the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from cryptostream.core.symbols import SYMBOL_RE
from cryptostream.core.trades import Trade, check_int, check_positive_decimal

MAX_LIMIT = 1000
ENDPOINTS = {"trade": "/api/v3/historicalTrades", "aggTrade": "/api/v3/aggTrades"}

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
                row["id"], row["price"], row["qty"], row["time"], row["isBuyerMaker"]
            )  # fmt: skip
        else:
            tid, price, qty, time_ms, maker = row["a"], row["p"], row["q"], row["T"], row["m"]
        if not isinstance(maker, bool):
            raise ValueError("buyer-is-maker must be a boolean")
        t = check_int(time_ms, "time")
        return Trade(symbol, check_int(tid, "id"), check_positive_decimal(price, "price"),
                     check_positive_decimal(qty, "qty"), t, t, maker)  # fmt: skip
    except KeyError as exc:
        raise RowError(f"row is missing {exc.args[0]!r}") from None
    except ValueError as exc:
        raise RowError(str(exc)) from None


class BackfillPlan:
    """Pages of REST requests covering ``first..last`` of one symbol."""

    def __init__(self, symbol: str, kind: str, first: int, last: int) -> None:
        if kind not in ENDPOINTS:
            raise ValueError(f"unknown stream kind {kind!r}")
        self.symbol = symbol
        self.kind = kind
        self.next_id = first
        self.last = last
        self.done = first > last

    def next_request(self) -> RestRequest | None:
        if self.done:
            return None
        limit = min(MAX_LIMIT, self.last - self.next_id + 1)
        params = {"symbol": self.symbol, "fromId": str(self.next_id), "limit": str(limit)}
        return RestRequest(ENDPOINTS[self.kind], params)

    def feed(self, rows: Any) -> tuple[list[Trade], int]:
        """Digest one page: the trades inside the range, and how many rows were invalid."""
        if not isinstance(rows, list) or not rows:
            self.done = True
            return [], 0
        trades: list[Trade] = []
        bad = 0
        highest = self.next_id - 1
        for row in rows:
            try:
                trade = row_to_trade(self.symbol, self.kind, row)
            except RowError:
                bad += 1
                continue
            highest = max(highest, trade.trade_id)
            if self.next_id <= trade.trade_id <= self.last:
                trades.append(trade)
        if highest < self.next_id:  # nothing usable: the server cannot help further
            self.done = True
        else:
            self.next_id = highest + 1
            self.done = self.next_id > self.last
        return trades, bad


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
