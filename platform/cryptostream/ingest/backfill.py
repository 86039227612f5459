"""Which REST requests fill which gap (sans-I/O); Binance's formats are in
:mod:`cryptostream.binance.rest` (re-exported here for the old names).

:class:`BackfillPlan` walks a gap ``first..last`` in pages of at most 1000 ids. A page whose first
row is above the id asked for means the server no longer has the ids in between (its history is
bounded): those are skipped and stay unrecoverable. An empty page ends the plan.
"""

from __future__ import annotations

from typing import Any

from cryptostream.binance.rest import (
    ENDPOINTS,
    MAX_LIMIT,
    RestRequest,
    RowError,
    page_request,
    rest_base_url,
    row_to_trade,
    trading_symbols,
)
from cryptostream.core.trades import Trade

__all__ = [
    "ENDPOINTS",
    "MAX_LIMIT",
    "BackfillPlan",
    "RestRequest",
    "RowError",
    "rest_base_url",
    "row_to_trade",
    "trading_symbols",
]


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
        return page_request(self.symbol, self.kind, self.next_id, self.last - self.next_id + 1)

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
