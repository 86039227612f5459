"""Turning a fetched batch of records into one Redis apply (sans-I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from cryptostream.core.codec import (
    DEFAULT_MAX_FUTURE_MS,
    SCALE,
    DecodeError,
    RecordFields,
    decode_scaled,
)
from cryptostream.core.decimals import EXACT, canonical, scaled_text
from cryptostream.core.keys import (
    PRICE_CHANNEL,
    apply_keys,
    home_partition,
    price_fields,
    price_update,
)
from cryptostream.core.views import MINUTE_MS, Candle

if TYPE_CHECKING:
    from cryptostream.processor.known import KnownViews

NO_OFFSET = -1


class RawRecord(NamedTuple):
    """One fetched record (a named tuple: built per record, it costs a third of a frozen
    dataclass)."""

    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Poison:
    record: RawRecord
    reason: str


# A candle partial while the batch folds, as a list (index access is the cheapest mutation):
# high, low (prices), base, quote volume, trades, first id, open, last id, close, and the texts
# of high and low. Prices and base volumes are integers at SCALE digits, quote volumes at
# 2 * SCALE; open and close are the trades' price texts (formatting an integer costs more).
_HIGH, _LOW, _BASE, _QUOTE, _COUNT, _FIRST, _OPEN, _LAST, _CLOSE, _HIGH_TEXT, _LOW_TEXT = range(11)


class SymbolBatch:
    """One symbol's contribution to a batch: its newest trade and its 1-minute partials."""

    __slots__ = ("candles", "latest")

    def __init__(self, latest: RecordFields) -> None:
        self.latest = latest  # its symbol may be lower-case: the batch's key is the canonical one
        self.candles: dict[int, list[Any]] = {}

    @property
    def ingest_us(self) -> int:
        return self.latest.ingest_time_us

    def partials(self) -> list[list[object]]:
        """The script's candle partials: :data:`~cryptostream.core.keys.CANDLE_FIELDS` order, ids
        as strings (Lua's numbers are doubles; the script writes them into the member as is)."""
        return [
            [
                minute,
                canonical(c[_OPEN]),
                canonical(c[_HIGH_TEXT]),
                canonical(c[_LOW_TEXT]),
                canonical(c[_CLOSE]),
                scaled_text(c[_BASE], SCALE),
                scaled_text(c[_QUOTE], 2 * SCALE),
                c[_COUNT],
                str(c[_FIRST]),
                str(c[_LAST]),
            ]
            for minute, c in self.candles.items()
        ]

    def totals(self) -> tuple[int, int, int]:
        """(trades, base volume, quote volume) of the batch, the sums of its candles."""
        trades = base = quote = 0
        for c in self.candles.values():
            trades += c[_COUNT]
            base += c[_BASE]
            quote += c[_QUOTE]
        return trades, base, quote

    def views(self) -> dict[int, Candle]:
        """The partials as the reference views' candles (for tests and the checker's math)."""
        out = {}
        for minute, c in self.candles.items():
            out[minute] = Candle(
                minute,
                canonical(c[_OPEN]),
                _dec(c[_HIGH]),
                _dec(c[_LOW]),
                canonical(c[_CLOSE]),
                _dec(c[_BASE]),
                _dec(c[_QUOTE], 2 * SCALE),
                c[_COUNT],
                c[_FIRST],
                c[_LAST],
            )
        return out


def _dec(value: int, scale: int = SCALE) -> Decimal:
    return Decimal(value).scaleb(-scale, EXACT)


@dataclass
class Batch:
    """A batch's offset span per partition and its view contributions per symbol.

    Folding is exact integer arithmetic (prices and quantities at 20 fractional digits, the
    schema's most) grouped by symbol and minute: only the per-batch, per-minute results are
    stored, so no per-trade decimal object is ever built. ``core/views.py`` is the reference
    this must equal (property-tested).
    """

    parts: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]
    symbols: dict[str, SymbolBatch] = field(default_factory=dict)
    poison: list[Poison] = field(default_factory=list)
    records: int = 0
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS
    misrouted: int = 0  # records of other partitions' symbols, parked in the outbox instead

    def add(self, record: RawRecord) -> None:
        """Fold one record in (see :meth:`add_all`)."""
        self.add_all((record,))

    def add_all(self, records: Iterable[RawRecord], positions: dict[int, int] | None = None) -> int:
        """Fold records in, in order; a record that cannot be folded becomes poison, whatever
        the cause, so no input can kill the batch and stop its partition. Records at or below
        ``positions[partition]`` (already applied: a fetch racing a seek) are skipped; returns
        how many. One loop for the whole fetch: the per-record cost is the processor's ceiling."""
        parts = self.parts
        poison = self.poison
        fold = self._fold
        max_future_ms = self.max_future_ms
        floors = positions or {}
        stale = added = 0
        current = -1  # the partition of the previous record: fetches come in runs per partition
        span: list[int] | None = None
        floor = NO_OFFSET
        for record in records:
            partition, offset, value = record
            if partition != current:
                current = partition
                span = parts.get(partition)
                floor = floors.get(partition, NO_OFFSET)
            if offset <= floor:
                stale += 1
                continue
            added += 1
            if span is None:
                span = parts[partition] = [offset, offset]
            else:
                span[1] = offset
            try:
                r, symbol, price, qty = decode_scaled(value, max_future_ms)
                fold(r, symbol, price, qty)
            except DecodeError as exc:
                poison.append(Poison(record, str(exc)))
            except Exception as exc:  # a value the schema admits but the views cannot take: a bug
                poison.append(Poison(record, f"cannot apply: {type(exc).__name__}: {exc}"))
        self.records += added
        return stale

    def _fold(self, r: RecordFields, symbol: str, price: int, qty: int) -> None:
        views = self.symbols.get(symbol)
        if views is None:
            views = self.symbols[symbol] = SymbolBatch(r)
        elif r.trade_id > views.latest.trade_id:
            views.latest = r
        tid, t = r.trade_id, r.trade_time
        minute = t - t % MINUTE_MS
        c = views.candles.get(minute)
        if c is None:
            text = r.price
            views.candles[minute] = [
                price,
                price,
                qty,
                price * qty,
                1,
                tid,
                text,
                tid,
                text,
                text,
                text,
            ]
            return
        if price > c[_HIGH]:
            c[_HIGH], c[_HIGH_TEXT] = price, r.price
        elif price < c[_LOW]:
            c[_LOW], c[_LOW_TEXT] = price, r.price
        c[_BASE] += qty
        c[_QUOTE] += price * qty
        c[_COUNT] += 1
        if tid < c[_FIRST]:
            c[_FIRST], c[_OPEN] = tid, r.price
        elif tid > c[_LAST]:
            c[_LAST], c[_CLOSE] = tid, r.price

    def groups(self, positions: dict[int, int], partitions: int) -> list[Group]:
        """One group per partition of the batch, fenced by ``positions`` (the last applied
        offset of each partition, as this process believes), each symbol in its home
        partition's group. A symbol homed at a partition the batch does not hold is misrouted:
        the processor routes such records (through the outbox) before, so here it is an error."""
        groups = {
            p: Group(p, [[str(p), str(positions.get(p, NO_OFFSET)), str(last)]])
            for p, (_first, last) in self.parts.items()
        }
        for symbol, views in self.symbols.items():
            home = home_partition(symbol, partitions)
            group = groups.get(home)
            if group is None:
                raise ValueError(f"{symbol} (home partition {home}) is not in this batch's parts")
            group.symbols.append((symbol, views))
        return list(groups.values())

    def script_call(
        self,
        topic: str,
        positions: dict[int, int],
        now_ms: int,
        history_ms: int,
        max_future_ms: int,
        partitions: int,
    ) -> tuple[list[str], list[str | bytes]]:
        """``KEYS`` and ``ARGV`` of one apply script call for the whole batch (see
        apply_batch.lua): one group per partition (on a cluster, only valid for a batch of one
        partition: a call touches one slot)."""
        return apply_call(
            self.groups(positions, partitions), topic, partitions, now_ms, history_ms, max_future_ms
        )


@dataclass
class Group:
    """One hash tag's share of an apply call (on a cluster: of one slot): the fences of its
    offsets hash (``[partition, expected, last]``), the symbols it writes (all homed at
    ``tag``) and the misrouted records it parks in its outbox."""

    tag: int  # the partition whose hash tag its keys carry
    parts: list[list[str]] = field(default_factory=list)
    symbols: list[tuple[str, SymbolBatch]] = field(default_factory=list)
    out: list[str] = field(default_factory=list)


def apply_call(
    groups: Sequence[Group],
    topic: str,
    partitions: int,
    now_ms: int,
    history_ms: int,
    max_future_ms: int,
    known: KnownViews | None = None,
    call: int = 0,
) -> tuple[list[str], list[str | bytes]]:
    """``KEYS`` and ``ARGV`` of one call of apply_batch.lua for ``groups``; with ``known``,
    the expectations of call number ``call`` (processor/known.py)."""
    names: list[str] = []
    rows: list[dict[str, object]] = []
    docs: list[dict[str, object]] = []
    for index, group in enumerate(groups, 1):
        for symbol, views in group.symbols:
            names.append(symbol)
            row = symbol_row(symbol, views, now_ms, index)
            if known is not None:
                expect(row, symbol, views, known, call)
            rows.append(row)
        doc: dict[str, object] = {"parts": group.parts}
        if group.out:
            doc["out"] = group.out
        docs.append(doc)
    keys = apply_keys(topic, [g.tag for g in groups], names, partitions)
    args: list[str | bytes] = [
        str(now_ms),
        str(history_ms),
        str(max_future_ms),
        PRICE_CHANNEL,
        orjson.dumps({"groups": docs, "symbols": rows}),
    ]
    return keys, args


def symbol_row(symbol: str, views: SymbolBatch, now_ms: int, group: int = 1) -> dict[str, object]:
    """One symbol's contributions in the script's batch argument (its group 1-based)."""
    r = views.latest
    row: dict[str, object] = {
        "s": symbol,
        "id": str(r.trade_id),
        "p": price_fields(r, r.ingest_time_us, now_ms),
        "u": price_update(symbol, r, now_ms).decode(),
        "c": views.partials(),
    }
    if len(views.candles) > 1:  # else the script takes the totals from the one candle
        trades, base, quote = views.totals()
        row.update(n=trades, v=scaled_text(base, SCALE), qv=scaled_text(quote, 2 * SCALE))
    if group != 1:
        row["g"] = group
    return row


def expect(
    row: dict[str, Any], symbol: str, views: SymbolBatch, known: KnownViews, call: int
) -> None:
    """Add to a symbol's row what ``known`` expects Redis to hold and the merged results."""
    candle = known.candle
    for partial, c in zip(row["c"], views.candles.values(), strict=True):
        # the partial with the row's canonical texts: open, close, high, low
        state = [*c[:_OPEN], partial[1], c[_LAST], partial[4], partial[2], partial[3]]
        pair = candle(call, symbol, partial[0], state)
        if pair is not None:
            partial.extend(pair)
    if len(views.candles) == 1:
        (c,) = views.candles.values()
        totals = (c[_COUNT], c[_BASE], c[_QUOTE])
    else:
        totals = views.totals()
    pair_totals = known.total(call, symbol, totals)
    if pair_totals is not None:
        row["te"], row["tn"] = pair_totals


def record_symbol(value: bytes | None, max_future_ms: int) -> str | None:
    """The (canonical) symbol of a record the fold would accept, None for poison."""
    try:
        _r, symbol, _price, _qty = decode_scaled(value, max_future_ms)
    except Exception:
        return None
    return symbol


def parse_conflicts(reply: list[object]) -> dict[int, int]:
    """``{0, partition, stored, ...}`` -> {partition: stored offset (-1 = none)}."""
    items = [int(x.decode() if isinstance(x, bytes) else str(x)) for x in reply[1:]]
    return dict(zip(items[::2], items[1::2], strict=True))
