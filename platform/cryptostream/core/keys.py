"""The Redis layout: the contract between the processor (writer) and the query API (reader).

=====================================  =====  =======================================================
key                                    type   content
=====================================  =====  =======================================================
``price:{SYMBOL}``                     hash   latest trade: price, quantity, trade_id, trade_time,
                                              event_time, ingest_time_us, update_time (ms)
``candles:1m:{SYMBOL}``                zset   1-minute OHLCV candles, score = open time (ms),
                                              member = JSON {t,o,h,l,c,v,qv,n,ft,lt}
                                              (ft/lt: first/last trade id, exact 64-bit)
``stats:{SYMBOL}``                     hash   running totals: trades, base_volume, quote_volume
``symbols``                            set    every symbol that has a price
``offsets:{TOPIC}``                    hash   partition -> last applied offset (exactly-once)
``updates:price`` (pub/sub channel)    --     JSON array of the latest-trade updates of one batch
``book:{SYMBOL}``                      hash   the L2 book's state: last_update_id, status
                                              (synced | unsynced), reason (why unsynced),
                                              best_bid, best_bid_qty, best_ask, best_ask_qty,
                                              event_time, ingest_time_us, update_time (ms)
``book:{SYMBOL}:bids`` / ``:asks``     zset   one member per level, every score 0, member =
                                              ``<level key> <price> <quantity>`` (level_member):
                                              lexicographic order is price order, exactly
``updates:book`` (pub/sub channel)     --     JSON array of the top-of-book updates of one batch
                                              (book_update: symbol + the BOOK_FIELDS)
=====================================  =====  =======================================================

Everything here is derived from Kafka and can be rebuilt from the topic. This module is the one
place that spells the layout: key names, the price and stats hash fields, the candle member and
the pub/sub update. The Lua apply script receives every key through ``KEYS`` (:func:`apply_keys`)
and the price hash as field/value pairs built here; the member and stats spellings it writes are
tested against :func:`candle_member` / :func:`parse_candle_member` and :data:`STATS_FIELDS`.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import orjson

from cryptostream.core.decimals import fmt
from cryptostream.core.views import Candle

PRICE_PREFIX = "price:"
CANDLES_1M_PREFIX = "candles:1m:"
STATS_PREFIX = "stats:"
SYMBOLS_KEY = "symbols"
OFFSETS_PREFIX = "offsets:"
PRICE_CHANNEL = "updates:price"
BOOK_PREFIX = "book:"
BOOK_CHANNEL = "updates:book"
VIEW_PREFIXES = (PRICE_PREFIX, CANDLES_1M_PREFIX, STATS_PREFIX, BOOK_PREFIX)  # per-symbol views

PRICE_FIELDS = (
    "price",
    "quantity",
    "trade_id",
    "trade_time",
    "event_time",
    "ingest_time_us",
    "update_time",
)
STATS_FIELDS = ("trades", "base_volume", "quote_volume")
CANDLE_FIELDS = ("t", "o", "h", "l", "c", "v", "qv", "n", "ft", "lt")
BOOK_FIELDS = (
    "last_update_id",
    "status",
    "reason",
    "best_bid",
    "best_bid_qty",
    "best_ask",
    "best_ask_qty",
    "event_time",
    "ingest_time_us",
    "update_time",
)
BOOK_SIDES = ("bids", "asks")
# The processor's own bookkeeping in ``book:{SYMBOL}`` (not for readers): the last_update_id of
# the snapshot the book was built from, so "no diff applied since the snapshot" (the first-diff
# rule of core/depth.py) survives a restart: it holds while last_update_id == snapshot_id.
BOOK_SNAPSHOT_FIELD = "snapshot_id"
_LEVEL_DIGITS = 20  # integer and fractional digits of a level key: the schema's most


def price_key(symbol: str) -> str:
    return PRICE_PREFIX + symbol


def candles_1m_key(symbol: str) -> str:
    return CANDLES_1M_PREFIX + symbol


def stats_key(symbol: str) -> str:
    return STATS_PREFIX + symbol


def offsets_key(topic: str) -> str:
    return OFFSETS_PREFIX + topic


def book_key(symbol: str) -> str:
    return BOOK_PREFIX + symbol


def book_side_key(symbol: str, side: str) -> str:
    """``book:{SYMBOL}:bids`` or ``book:{SYMBOL}:asks``."""
    return f"{BOOK_PREFIX}{symbol}:{side}"


def level_key(price: str) -> str:
    """A plain decimal (at most 20+20 digits) as a fixed-width string whose lexicographic order
    is numeric order: ``"66398.85"`` -> 20 integer digits, ``.``, 20 fractional digits. Equal
    prices in different spellings (``"1.50"``, ``"1.5"``) get the same key: one level."""
    whole, _dot, frac = price.partition(".")
    return whole.rjust(_LEVEL_DIGITS, "0") + "." + frac.ljust(_LEVEL_DIGITS, "0")


def level_member(price: str, quantity: str) -> str:
    """One book level as a member of its side's sorted set (all scores 0, so the set is in
    level-key order: ascending for asks, read reversed for bids)."""
    return f"{level_key(price)} {price} {quantity}"


def parse_level_member(member: bytes | str) -> tuple[str, str]:
    """(price, quantity) as the exchange wrote them; ValueError if not the processor's shape."""
    text = member.decode() if isinstance(member, bytes) else member
    parts = text.split(" ")
    if len(parts) != 3 or len(parts[0]) != 2 * _LEVEL_DIGITS + 1:
        raise ValueError(f"malformed book level {text!r:.120}")
    return parts[1], parts[2]


def apply_keys(topic: str, symbols: list[str]) -> list[str]:
    """``KEYS`` of the apply script: the offsets hash, the symbol set, then per symbol (in the
    batch's order) its price hash, candle set and stats hash."""
    keys = [offsets_key(topic), SYMBOLS_KEY]
    for symbol in symbols:
        keys += (price_key(symbol), candles_1m_key(symbol), stats_key(symbol))
    return keys


def book_apply_keys(topic: str, symbols: list[str]) -> list[str]:
    """``KEYS`` of the book apply script: the depth topic's offsets hash, then per symbol (in
    the batch's order) its book hash, bids set and asks set."""
    keys = [offsets_key(topic)]
    for symbol in symbols:
        keys += (book_key(symbol), book_side_key(symbol, "bids"), book_side_key(symbol, "asks"))
    return keys


def book_update(symbol: str, state: dict[str, str]) -> bytes:
    """One element of an ``updates:book`` message: the symbol and its book hash's
    :data:`BOOK_FIELDS` (absent ones null; ids and times as integers)."""
    doc: dict[str, object] = {"symbol": symbol}
    for name in BOOK_FIELDS:
        value = state.get(name)
        if value is not None and name in (
            "last_update_id",
            "event_time",
            "ingest_time_us",
            "update_time",
        ):
            doc[name] = int(value)
        else:
            doc[name] = value
    return orjson.dumps(doc)


class TradeFields(Protocol):
    """What the price views need of a trade: a :class:`Trade`, or the processor's decoded
    record fields (same names), which it writes without building a Trade per symbol."""

    @property
    def price(self) -> str: ...
    @property
    def quantity(self) -> str: ...
    @property
    def trade_id(self) -> int: ...
    @property
    def trade_time(self) -> int: ...
    @property
    def event_time(self) -> int: ...


def price_fields(trade: TradeFields, ingest_time_us: int, update_ms: int) -> list[str]:
    """The ``price:{SYMBOL}`` hash as field/value pairs, in :data:`PRICE_FIELDS` order (spelled
    out: this runs once per symbol and batch; a test holds it to PRICE_FIELDS)."""
    return [
        "price",
        trade.price,
        "quantity",
        trade.quantity,
        "trade_id",
        str(trade.trade_id),
        "trade_time",
        str(trade.trade_time),
        "event_time",
        str(trade.event_time),
        "ingest_time_us",
        str(ingest_time_us),
        "update_time",
        str(update_ms),
    ]


def price_update(symbol: str, trade: TradeFields, update_ms: int) -> bytes:
    """One element of an ``updates:price`` message (a batch publishes a JSON array of them)."""
    return orjson.dumps(
        {
            "symbol": symbol,
            "price": trade.price,
            "quantity": trade.quantity,
            "trade_id": trade.trade_id,
            "trade_time": trade.trade_time,
            "event_time": trade.event_time,
            "update_time": update_ms,
        }
    )


def candle_member(candle: Candle) -> dict[str, object]:
    """The JSON document of one ``candles:1m:{SYMBOL}`` member (decimals canonical, via fmt)."""
    values = (
        candle.open_time,
        fmt(Decimal(candle.open)),
        fmt(candle.high),
        fmt(candle.low),
        fmt(Decimal(candle.close)),
        fmt(candle.base_volume),
        fmt(candle.quote_volume),
        candle.trades,
        candle.first_trade_id,
        candle.last_trade_id,
    )
    return dict(zip(CANDLE_FIELDS, values, strict=True))


def parse_candle_member(member: bytes | str) -> Candle:
    """A stored member back as a :class:`Candle`; ValueError if it is not the processor's shape."""
    try:
        doc: Any = orjson.loads(member)
        return Candle(
            open_time=int(doc["t"]),
            open=fmt(Decimal(doc["o"])),
            high=Decimal(doc["h"]),
            low=Decimal(doc["l"]),
            close=fmt(Decimal(doc["c"])),
            base_volume=Decimal(doc["v"]),
            quote_volume=Decimal(doc["qv"]),
            trades=int(doc["n"]),
            first_trade_id=int(doc["ft"]),
            last_trade_id=int(doc["lt"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise ValueError(f"malformed candle {member!r:.120}: {exc!r}") from None
