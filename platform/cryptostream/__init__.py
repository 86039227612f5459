"""Crypto Streaming Platform: Binance trades -> Kafka -> Redis views -> HTTP."""

__version__ = "0.1.0"
