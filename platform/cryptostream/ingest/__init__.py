"""Binance WebSocket trades -> Kafka."""
