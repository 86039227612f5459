"""The Redis layout: the contract between the processor (writer) and the query API (reader).

Every key of a symbol lives under the **hash tag of the symbol's Kafka partition** (``{pP}``
below: ``{p3}``, or ``{p3.9}`` -- see :func:`partition_tag`), together with that partition's
offsets. So each atomic apply (one script call: the views of one partition's symbols and the
partition's fenced offsets) touches a single hash slot, which is what Redis Cluster requires of
a script, and the same layout serves one Redis node. The symbol's partition is the producers'
(:func:`home_partition`: Kafka's murmur2 partitioner over the symbol, ``CSP_PARTITIONS``
partitions), so a reader finds a symbol's keys from its name, without scanning.

=====================================  =====  =======================================================
key                                    type   content
=====================================  =====  =======================================================
``price:{pP}:SYMBOL``                  hash   latest trade: price, quantity, trade_id, trade_time,
                                              event_time, ingest_time_us, update_time (ms)
``candles:1m:{pP}:SYMBOL``             zset   1-minute OHLCV candles, score = open time (ms),
                                              member = JSON {t,o,h,l,c,v,qv,n,ft,lt}
                                              (ft/lt: first/last trade id, exact 64-bit)
``stats:{pP}:SYMBOL``                  hash   running totals: trades, base_volume, quote_volume
``symbols:{pP}``                       set    the symbols of partition P that have a price
``offsets:{pP}:TOPIC``                 hash   field P: the last offset of partition P applied
                                              (exactly-once fence); field Q (another partition):
                                              the last offset of Q whose misrouted records
                                              homed here are applied (see the outbox)
``outbox:{pP}:TOPIC``                  list   misrouted records that arrived on partition P for
                                              symbols homed elsewhere, until applied at home
``book:{pP}:SYMBOL``                   hash   the L2 book's state: last_update_id, status
                                              (synced | unsynced), reason (why unsynced),
                                              best_bid, best_bid_qty, best_ask, best_ask_qty,
                                              event_time, ingest_time_us, update_time (ms)
``book:{pP}:SYMBOL:bids`` / ``:asks``  zset   one member per level, every score 0, member =
                                              ``<level key> <price> <quantity>`` (level_member):
                                              lexicographic order is price order, exactly
``layout``                             string ``{"version": 2, "partitions": N}``: the layout
                                              the views were written with (processor start)
``updates:price`` (pub/sub channel)    --     JSON array of the latest-trade updates of one batch
``updates:book`` (pub/sub channel)     --     JSON array of the top-of-book updates of one batch
                                              (book_update: symbol + the BOOK_FIELDS)
=====================================  =====  =======================================================

``P`` is a symbol's **home partition**, ``kafka_partition(SYMBOL, N)``. A record that arrives on
another partition Q (a producer keyed differently, a topic whose partition count changed) is
misrouted: the trades processor parks it in ``outbox:{pQ}`` atomically with Q's fence, then
applies it under the symbol's home tag, fenced by field Q of ``offsets:{pP}`` (processor/
service.py); the books processor dead-letters it (a book has a single writer).

Everything here is derived from Kafka and can be rebuilt from the topic. This module is the one
place that spells the layout: key names, the price and stats hash fields, the candle member and
the pub/sub update. The Lua apply script receives every key through ``KEYS`` (:func:`apply_keys`)
and the price hash as field/value pairs built here; the member and stats spellings it writes are
tested against :func:`candle_member` / :func:`parse_candle_member` and :data:`STATS_FIELDS`.
"""

from __future__ import annotations

import binascii
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import orjson

from cryptostream.core.decimals import fmt
from cryptostream.core.partitioner import kafka_partition
from cryptostream.core.views import Candle

PRICE_PREFIX = "price:"
CANDLES_1M_PREFIX = "candles:1m:"
STATS_PREFIX = "stats:"
SYMBOLS_PREFIX = "symbols:"
OFFSETS_PREFIX = "offsets:"
OUTBOX_PREFIX = "outbox:"
PRICE_CHANNEL = "updates:price"
BOOK_PREFIX = "book:"
BOOK_CHANNEL = "updates:book"
LAYOUT_KEY = "layout"
LAYOUT_VERSION = 2  # 1: the keys without hash tags (price:SYMBOL, offsets:TOPIC, symbols)
# every key the processor derives, by prefix (csp rebuild deletes them all)
VIEW_PREFIXES = (
    PRICE_PREFIX,
    CANDLES_1M_PREFIX,
    STATS_PREFIX,
    BOOK_PREFIX,
    SYMBOLS_PREFIX,
    OUTBOX_PREFIX,
)
CLUSTER_SLOTS = 16384

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
_CACHE_MAX = 1 << 16  # symbols remembered per partition count (a cache, cleared when full)


# --- hash tags and home partitions ------------------------------------------------------------


def key_slot(key: str | bytes) -> int:
    """Redis Cluster's hash slot of a key: CRC16 (XMODEM) of its hash tag (the text between the
    first ``{`` and the next ``}``, when not empty) or of the whole key, modulo 16384."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % CLUSTER_SLOTS


_TAGS: dict[tuple[int, int], str] = {}


def partition_tag(partition: int, partitions: int) -> str:
    """The hash tag of a partition's keys, braces included: ``{p3}``, or ``{p3.9}``.

    The spelling is ``p<partition>`` with the first ``.<n>`` suffix (none, then 0, 1, ...) whose
    slot lies near ``(partition + 1/2) * 16384 / partitions`` (within an eighth of a
    partition's share, at least 8 slots either way). So the partitions' slots are evenly spread:
    a cluster whose masters own equal slot ranges (what ``redis-cli --cluster create`` and the
    local stack assign) gets an equal share of the partitions on each master, where plain
    ``{p0}``..``{p7}`` would put four of eight on one of three masters. Stable for a given
    partition count (the layout changes with ``CSP_PARTITIONS`` anyway: the home partitions do).
    """
    cached = _TAGS.get((partition, partitions))
    if cached is not None:
        return cached
    share = CLUSTER_SLOTS / partitions
    target = ((partition % partitions) + 0.5) * share
    window = max(8.0, share / 8)

    def near(name: str) -> bool:
        distance = abs(binascii.crc_hqx(name.encode(), 0) % CLUSTER_SLOTS - target)
        return min(distance, CLUSTER_SLOTS - distance) <= window

    name = f"p{partition}"
    n = 0
    while not near(name):
        name = f"p{partition}.{n}"
        n += 1
    tag = _TAGS[(partition, partitions)] = "{" + name + "}"
    return tag


_HOMES: dict[int, dict[str, int]] = {}


def home_partition(symbol: str, partitions: int) -> int:
    """The partition of a symbol's records: Kafka's partitioner over the symbol as the record
    key (ingest keys every record by its upper-case symbol)."""
    homes = _HOMES.get(partitions)
    if homes is None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        homes = _HOMES[partitions] = {}
    home = homes.get(symbol)
    if home is None:
        if len(homes) >= _CACHE_MAX:
            homes.clear()
        home = homes[symbol] = kafka_partition(symbol.encode(), partitions)
    return home


def symbol_tag(symbol: str, partitions: int) -> str:
    return partition_tag(home_partition(symbol, partitions), partitions)


def price_key(symbol: str, partitions: int) -> str:
    return f"{PRICE_PREFIX}{symbol_tag(symbol, partitions)}:{symbol}"


def candles_1m_key(symbol: str, partitions: int) -> str:
    return f"{CANDLES_1M_PREFIX}{symbol_tag(symbol, partitions)}:{symbol}"


def stats_key(symbol: str, partitions: int) -> str:
    return f"{STATS_PREFIX}{symbol_tag(symbol, partitions)}:{symbol}"


def symbols_key(partition: int, partitions: int) -> str:
    """The set of partition ``partition``'s symbols that have a price."""
    return SYMBOLS_PREFIX + partition_tag(partition, partitions)


def symbols_keys(partitions: int) -> list[str]:
    """Every partition's symbol set (the whole symbol list is their union)."""
    return [symbols_key(p, partitions) for p in range(partitions)]


def offsets_key(topic: str, partition: int, partitions: int) -> str:
    """The fence hash of ``partition``'s tag: field ``partition`` is its last applied offset."""
    return f"{OFFSETS_PREFIX}{partition_tag(partition, partitions)}:{topic}"


def outbox_key(topic: str, partition: int, partitions: int) -> str:
    return f"{OUTBOX_PREFIX}{partition_tag(partition, partitions)}:{topic}"


def book_key(symbol: str, partitions: int) -> str:
    return f"{BOOK_PREFIX}{symbol_tag(symbol, partitions)}:{symbol}"


def book_side_key(symbol: str, side: str, partitions: int) -> str:
    """``book:{pP}:SYMBOL:bids`` or ``book:{pP}:SYMBOL:asks``."""
    return f"{BOOK_PREFIX}{symbol_tag(symbol, partitions)}:{symbol}:{side}"


def layout_doc(partitions: int) -> bytes:
    """The value of :data:`LAYOUT_KEY`."""
    return orjson.dumps({"version": LAYOUT_VERSION, "partitions": partitions})


_VIEW_KEYS: dict[int, dict[str, tuple[str, str, str]]] = {}


def view_keys(symbol: str, partitions: int) -> tuple[str, str, str]:
    """(price, candles, stats) keys of a symbol, cached (the processor builds them per batch)."""
    cache = _VIEW_KEYS.get(partitions)
    if cache is None:
        cache = _VIEW_KEYS[partitions] = {}
    keys = cache.get(symbol)
    if keys is None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        keys = cache[symbol] = (
            price_key(symbol, partitions),
            candles_1m_key(symbol, partitions),
            stats_key(symbol, partitions),
        )
    return keys


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


def apply_keys(topic: str, tags: list[int], symbols: list[str], partitions: int) -> list[str]:
    """``KEYS`` of the apply script: per group (one per tag partition in ``tags``, in order) its
    offsets hash, then the groups' symbol sets, then their outboxes, then per symbol (in the
    batch's order) its price hash, candle set and stats hash."""
    keys = [offsets_key(topic, t, partitions) for t in tags]
    keys += [symbols_key(t, partitions) for t in tags]
    keys += [outbox_key(topic, t, partitions) for t in tags]
    for symbol in symbols:
        keys += view_keys(symbol, partitions)
    return keys


def book_apply_keys(topic: str, partition: int, symbols: list[str], partitions: int) -> list[str]:
    """``KEYS`` of the book apply script: the depth topic's offsets hash of ``partition``'s
    tag, then per symbol (in the batch's order) its book hash, bids set and asks set."""
    keys = [offsets_key(topic, partition, partitions)]
    for symbol in symbols:
        keys += (
            book_key(symbol, partitions),
            book_side_key(symbol, "bids", partitions),
            book_side_key(symbol, "asks", partitions),
        )
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
