"""View math shared by the processor (per batch) and the checker (over a whole topic). Pure.

Prices and volumes are exact decimals: candles and running totals must equal what a recount of
the topic gives, digit for digit, or double-applied and lost records could hide in rounding.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from dataclasses import dataclass

from cryptostream.core.decimals import EXACT as _CTX
from cryptostream.core.decimals import fmt
from cryptostream.core.trades import Trade

__all__ = ["MINUTE_MS", "Candle", "SymbolViews", "Totals", "compute_views", "fmt"]

MINUTE_MS = 60_000
D = decimal.Decimal
ZERO = D(0)


@dataclass(slots=True)
class Candle:
    """OHLCV of one minute; open/close chosen by trade id, so arrival order does not matter."""

    open_time: int
    open: str
    high: D
    low: D
    close: str
    base_volume: D
    quote_volume: D
    trades: int
    first_trade_id: int
    last_trade_id: int

    @classmethod
    def of(cls, trade: Trade, price: D, qty: D, notional: D) -> Candle:
        return cls(
            open_time=trade.trade_time - trade.trade_time % MINUTE_MS,
            open=trade.price,
            high=price,
            low=price,
            close=trade.price,
            base_volume=qty,
            quote_volume=notional,
            trades=1,
            first_trade_id=trade.trade_id,
            last_trade_id=trade.trade_id,
        )

    def add(self, trade: Trade, price: D, qty: D, notional: D) -> None:
        # The sums before any field is stored: a fold happens whole or not at all.
        base, quote = _CTX.add(self.base_volume, qty), _CTX.add(self.quote_volume, notional)
        self.base_volume, self.quote_volume = base, quote
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.trades += 1
        if trade.trade_id < self.first_trade_id:
            self.first_trade_id, self.open = trade.trade_id, trade.price
        if trade.trade_id > self.last_trade_id:
            self.last_trade_id, self.close = trade.trade_id, trade.price

    def merge(self, other: Candle) -> Candle:
        """The candle of both candles' trades: the reference for every merge of candles (the Lua
        script merging a batch's partial into the stored minute, the query API's roll-ups, the
        checker). Open and close follow the trade ids, so the order of merging does not matter;
        the open time is the earlier one (a roll-up sets its bucket's)."""
        first = self if self.first_trade_id <= other.first_trade_id else other
        last = other if other.last_trade_id >= self.last_trade_id else self
        return Candle(
            open_time=min(self.open_time, other.open_time),
            open=first.open,
            high=max(self.high, other.high),
            low=min(self.low, other.low),
            close=last.close,
            base_volume=_CTX.add(self.base_volume, other.base_volume),
            quote_volume=_CTX.add(self.quote_volume, other.quote_volume),
            trades=self.trades + other.trades,
            first_trade_id=first.first_trade_id,
            last_trade_id=last.last_trade_id,
        )


@dataclass(slots=True)
class Totals:
    trades: int = 0
    base_volume: D = ZERO
    quote_volume: D = ZERO

    def add(self, candle: Candle) -> None:
        self.trades += candle.trades
        self.base_volume = _CTX.add(self.base_volume, candle.base_volume)
        self.quote_volume = _CTX.add(self.quote_volume, candle.quote_volume)


@dataclass(slots=True)
class SymbolViews:
    """Everything one symbol contributes: latest trade, candles by minute, totals."""

    latest: Trade
    candles: dict[int, Candle]

    @classmethod
    def of(cls, trade: Trade) -> SymbolViews:
        views = cls(trade, {})
        views.add_to_aggregates(trade)
        return views

    @property
    def totals(self) -> Totals:
        """The sum of the candles: every trade is in exactly one (computed on demand, which is
        once per batch, instead of two more decimal additions per trade)."""
        totals = Totals()
        for candle in self.candles.values():
            totals.add(candle)
        return totals

    def add(self, trade: Trade) -> bool:
        """Add a trade; True if it became the latest."""
        self.add_to_aggregates(trade)
        if trade.trade_id > self.latest.trade_id:
            self.latest = trade
            return True
        return False

    def add_to_aggregates(self, trade: Trade) -> None:
        price, qty = D(trade.price), D(trade.quantity)
        notional = _CTX.multiply(price, qty)
        minute = trade.trade_time - trade.trade_time % MINUTE_MS
        candle = self.candles.get(minute)
        if candle is None:
            self.candles[minute] = Candle.of(trade, price, qty, notional)
        else:
            candle.add(trade, price, qty, notional)


def compute_views(trades: Iterable[Trade]) -> dict[str, SymbolViews]:
    views: dict[str, SymbolViews] = {}
    for trade in trades:
        current = views.get(trade.symbol)
        if current is None:
            views[trade.symbol] = SymbolViews.of(trade)
        else:
            current.add(trade)
    return views
