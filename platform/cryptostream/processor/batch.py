"""Turning a fetched batch of records into one Redis apply (sans-I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from cryptostream.core.codec import DEFAULT_MAX_FUTURE_MS, DecodeError, decode_trade
from cryptostream.core.views import SymbolViews, fmt

NO_OFFSET = -1


@dataclass(frozen=True, slots=True)
class RawRecord:
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Poison:
    record: RawRecord
    reason: str


@dataclass
class Batch:
    """A batch's offset span per partition and its view contributions per symbol."""

    parts: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]
    symbols: dict[str, SymbolViews] = field(default_factory=dict)
    ingest_us: dict[str, int] = field(default_factory=dict)  # of each symbol's latest trade
    poison: list[Poison] = field(default_factory=list)
    records: int = 0
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS

    def add(self, record: RawRecord) -> None:
        """Fold one record in; a record that cannot be folded becomes poison, whatever the
        cause, so no input can kill the batch and stop its partition."""
        self.records += 1
        span = self.parts.get(record.partition)
        if span is None:
            self.parts[record.partition] = [record.offset, record.offset]
        else:
            span[1] = record.offset
        try:
            decoded = decode_trade(record.value, self.max_future_ms)
            trade = decoded.trade
            views = self.symbols.get(trade.symbol)
            if views is None:
                self.symbols[trade.symbol] = SymbolViews.of(trade)
                self.ingest_us[trade.symbol] = decoded.ingest_time_us
            elif views.add(trade):
                self.ingest_us[trade.symbol] = decoded.ingest_time_us
        except DecodeError as exc:
            self.poison.append(Poison(record, str(exc)))
        except Exception as exc:  # a value the schema admits but the views cannot take: a bug
            self.poison.append(Poison(record, f"cannot apply: {type(exc).__name__}: {exc}"))

    def script_payload(self, positions: dict[int, int], now_ms: int) -> bytes:
        """The Lua script's batch argument; ``positions`` = last applied offset we believe in."""
        symbols = []
        for symbol, views in self.symbols.items():
            t = views.latest
            update = orjson.dumps(
                {
                    "symbol": symbol, "price": t.price, "quantity": t.quantity,
                    "trade_id": t.trade_id, "trade_time": t.trade_time,
                    "event_time": t.event_time, "update_time": now_ms,
                }
            ).decode()  # fmt: skip
            totals = views.totals
            symbols.append(
                {
                    "s": symbol,
                    "p": [t.price, t.quantity, str(t.trade_id), str(t.trade_time),
                          str(t.event_time), str(self.ingest_us[symbol])],
                    "u": update,
                    "c": [c.as_partial() for c in views.candles.values()],
                    "n": totals.trades, "v": fmt(totals.base_volume),
                    "qv": fmt(totals.quote_volume),
                }
            )  # fmt: skip
        parts = [
            [str(p), str(positions.get(p, NO_OFFSET)), str(last)]
            for p, (_first, last) in self.parts.items()
        ]
        return orjson.dumps({"parts": parts, "symbols": symbols})


def parse_conflicts(reply: list[object]) -> dict[int, int]:
    """``{0, partition, stored, ...}`` -> {partition: stored offset (-1 = none)}."""
    items = [int(x.decode() if isinstance(x, bytes) else str(x)) for x in reply[1:]]
    return dict(zip(items[::2], items[1::2], strict=True))
