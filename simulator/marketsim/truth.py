"""What the simulator has generated: per-symbol truth and a bounded trade history. Pure.

The history backs the REST endpoints (``/api/v3/trades``, ``historicalTrades``, ``aggTrades``),
so a client that detects a gap in streamed trade ids can backfill it, as long as the gap is
younger than ``history_orders`` orders of that symbol.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from marketsim.model import Order
from marketsim.units import fmt8


@dataclass(slots=True)
class SymbolTruth:
    count: int = 0
    first_trade_id: int | None = None
    last_trade_id: int | None = None
    last_price: int = 0
    last_quantity: int = 0
    last_time_us: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first_trade_id": self.first_trade_id,
            "last_trade_id": self.last_trade_id,
            "last_price": fmt8(self.last_price) if self.count else None,
            "last_quantity": fmt8(self.last_quantity) if self.count else None,
            "last_trade_time": self.last_time_us // 1000 if self.count else None,
        }


class Truth:
    """Counts and last trade per symbol, and the bounded per-symbol order history."""

    def __init__(self, history_orders: int = 10_000) -> None:
        self.trades_generated = 0
        self.symbols: dict[str, SymbolTruth] = {}
        self.history: dict[str, deque[Order]] = {}
        self.history_orders = history_orders
        self.done = False
        self.last_time_us = 0

    def add(self, o: Order) -> None:
        st = self.symbols.get(o.symbol)
        if st is None:
            st = self.symbols[o.symbol] = SymbolTruth()
            self.history[o.symbol] = deque(maxlen=self.history_orders)
        n = len(o.qtys)
        if st.first_trade_id is None:
            st.first_trade_id = o.first_id
        st.count += n
        st.last_trade_id = o.first_id + n - 1
        st.last_price = o.price
        st.last_quantity = o.qtys[-1]
        st.last_time_us = o.time_us
        self.trades_generated += n
        self.last_time_us = o.time_us
        self.history[o.symbol].append(o)

    def as_json(self) -> dict[str, Any]:
        return {
            "trades_generated": self.trades_generated,
            "done": self.done,
            "symbols": {s: t.as_json() for s, t in self.symbols.items()},
        }
