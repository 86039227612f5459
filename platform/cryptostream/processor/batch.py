"""Turning a fetched batch of records into one Redis apply (sans-I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from cryptostream.core.codec import DEFAULT_MAX_FUTURE_MS, DecodeError, decode_trade
from cryptostream.core.decimals import fmt
from cryptostream.core.keys import (
    PRICE_CHANNEL,
    apply_keys,
    candle_member,
    price_fields,
    price_update,
)
from cryptostream.core.views import Candle, SymbolViews

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

    def script_call(
        self,
        topic: str,
        positions: dict[int, int],
        now_ms: int,
        history_ms: int,
        max_future_ms: int,
    ) -> tuple[list[str], list[str | bytes]]:
        """``KEYS`` and ``ARGV`` of the apply script (see apply_batch.lua); ``positions`` = the
        last applied offset of each partition, as this process believes."""
        keys = apply_keys(topic, list(self.symbols))
        args: list[str | bytes] = [str(now_ms), str(history_ms), str(max_future_ms),
                                   PRICE_CHANNEL, self.script_payload(positions, now_ms)]  # fmt: skip
        return keys, args

    def script_payload(self, positions: dict[int, int], now_ms: int) -> bytes:
        """The batch argument: per partition the compare-and-set, per symbol its contributions."""
        symbols = []
        for symbol, views in self.symbols.items():
            t = views.latest
            totals = views.totals
            symbols.append(
                {
                    "s": symbol,
                    "id": str(t.trade_id),
                    "p": price_fields(t, self.ingest_us[symbol], now_ms),
                    "u": price_update(symbol, t, now_ms).decode(),
                    "c": [_partial(c) for c in views.candles.values()],
                    "n": totals.trades, "v": fmt(totals.base_volume),
                    "qv": fmt(totals.quote_volume),
                }
            )  # fmt: skip
        parts = [
            [str(p), str(positions.get(p, NO_OFFSET)), str(last)]
            for p, (_first, last) in self.parts.items()
        ]
        return orjson.dumps({"parts": parts, "symbols": symbols})


def _partial(c: Candle) -> list[object]:
    """A candle as the script takes it: :data:`~cryptostream.core.keys.CANDLE_FIELDS` order, ids
    as strings (Lua's numbers are doubles, exact only below 2^53; the script writes them into the
    member verbatim)."""
    member = candle_member(c)
    member["ft"], member["lt"] = str(c.first_trade_id), str(c.last_trade_id)
    return list(member.values())


def parse_conflicts(reply: list[object]) -> dict[int, int]:
    """``{0, partition, stored, ...}`` -> {partition: stored offset (-1 = none)}."""
    items = [int(x.decode() if isinstance(x, bytes) else str(x)) for x in reply[1:]]
    return dict(zip(items[::2], items[1::2], strict=True))
