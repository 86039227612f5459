"""Turning a fetched batch of records into one Redis apply (sans-I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from cryptostream.core.codec import DecodeError, TradeRecord, decode_trade


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
    """Per partition the offset range; per symbol only the newest trade (by trade id)."""

    parts: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]
    latest: dict[str, TradeRecord] = field(default_factory=dict)
    poison: list[Poison] = field(default_factory=list)
    records: int = 0

    def add(self, record: RawRecord) -> None:
        self.records += 1
        span = self.parts.get(record.partition)
        if span is None:
            self.parts[record.partition] = [record.offset, record.offset]
        else:
            span[1] = record.offset
        try:
            decoded = decode_trade(record.value)
        except DecodeError as exc:
            self.poison.append(Poison(record, str(exc)))
            return
        current = self.latest.get(decoded.trade.symbol)
        if current is None or current.trade.trade_id < decoded.trade.trade_id:
            self.latest[decoded.trade.symbol] = decoded

    def script_payload(self, now_ms: int) -> bytes:
        prices = []
        for symbol, rec in self.latest.items():
            t = rec.trade
            update = orjson.dumps(
                {
                    "symbol": symbol,
                    "price": t.price,
                    "quantity": t.quantity,
                    "trade_id": t.trade_id,
                    "trade_time": t.trade_time,
                    "event_time": t.event_time,
                    "update_time": now_ms,
                }
            ).decode()
            prices.append(
                [symbol, t.price, t.quantity, str(t.trade_id), str(t.trade_time),
                 str(t.event_time), str(rec.ingest_time_us), update]
            )  # fmt: skip
        parts = [[str(p), str(first), str(last)] for p, (first, last) in self.parts.items()]
        return orjson.dumps({"parts": parts, "prices": prices})


def parse_conflicts(reply: list[object]) -> dict[int, int]:
    """``{0, partition, stored, ...}`` -> {partition: stored offset}."""
    items = [int(x) if not isinstance(x, bytes) else int(x.decode()) for x in reply[1:]]  # type: ignore[call-overload]
    return dict(zip(items[::2], items[1::2], strict=True))
