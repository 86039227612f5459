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
=====================================  =====  =======================================================

Everything here is derived from Kafka and can be rebuilt from the topic.
"""

from __future__ import annotations

PRICE_PREFIX = "price:"
CANDLES_1M_PREFIX = "candles:1m:"
STATS_PREFIX = "stats:"
SYMBOLS_KEY = "symbols"
OFFSETS_PREFIX = "offsets:"
PRICE_CHANNEL = "updates:price"


def price_key(symbol: str) -> str:
    return PRICE_PREFIX + symbol


def candles_1m_key(symbol: str) -> str:
    return CANDLES_1M_PREFIX + symbol


def stats_key(symbol: str) -> str:
    return STATS_PREFIX + symbol


def offsets_key(topic: str) -> str:
    return OFFSETS_PREFIX + topic
